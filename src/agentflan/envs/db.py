"""A database environment compatible with AgentBench's DB task (`dbbench/dev.jsonl`).

Each episode gets a fresh in-memory SQLite database holding the task's one table (columns typed as
the task says, TEXT in AgentBench). The agent runs SQL with `operation(sql)` and ends with
`answer(answer)`, exactly AgentInstruct's DB dialect. Scoring follows AgentBench: SELECT-type tasks
compare the answer list with the label; INSERT/UPDATE/DELETE tasks compare the table's state by
AgentBench's own hash, `md5(group_concat(rowhash order by rowhash))` over `rowhash =
substring(md5(concat_ws(',', cols)), 1, 5)`, so `answer_md5` from AgentBench files is checked as is.

Safety (every episode): one throw-away in-memory database; an authorizer that refuses ATTACH,
DETACH, PRAGMA and any function that touches files or extensions; extension loading off; one
statement per call and at most 20,000 characters; a time limit per statement (progress handler);
a memory limit for the database; results cut to 100 rows / 4,000 characters with a note. Hostile
SQL comes back as an error observation, never as an exception.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from typing import Any, ClassVar

from agentflan.envs.base import Environment, Task, Verdict
from agentflan.formats.agentinstruct import DIALECTS
from agentflan.schema import Message, SystemMessage, ToolCall, ToolMessage, ToolSpec, UserMessage

DB_TOOLS: list[ToolSpec] = list(DIALECTS["db"].tools)
SYSTEM = (
    "I will ask you a question, then you should help me operate a SQL database to answer the question. "
    "Explain the problem and your reasoning, run one SQL statement at a time, and answer with the list of "
    "values that answers the question. If the question is about modifying the database, the answer can be "
    "an empty list once the change is done.")
"""The task, stated without a reply format: each protocol states its own (`agentinstruct:db` states
AgentBench's, `formats.protocols.AGENTBENCH_DB_PROMPT`)."""
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "zipfile", "sqlar_compress",
                     "sqlar_uncompress"}


def _q(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def table_hash(conn: sqlite3.Connection, table: str, columns: list[str]) -> str:
    """AgentBench's table hash, as `str(cursor.fetchall())` prints it: `[('<md5>',)]`."""
    rows = conn.execute(f"SELECT {', '.join(_q(c) for c in columns)} FROM {_q(table)}").fetchall()
    hashes = sorted(hashlib.md5(",".join(str(v) for v in row if v is not None).encode()).hexdigest()[:5]
                    for row in rows)
    return str([(hashlib.md5(",".join(hashes).encode()).hexdigest(),)])


def normalize(value: Any) -> str:
    """A comparable form of an answer value: numbers rounded, text trimmed and lower-cased."""
    text = str(value).strip().strip("'\"").strip()
    try:
        number = float(text.replace(",", ""))
    except ValueError:
        return text.lower()
    return str(int(number)) if number.is_integer() else f"{number:.2f}".rstrip("0").rstrip(".")


def answers_match(answer: Any, label: list[Any]) -> bool:
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except json.JSONDecodeError:
            answer = [answer]
    if not isinstance(answer, list):
        answer = [answer]
    return sorted(normalize(a) for a in answer) == sorted(normalize(v) for v in label)


class DBEnvironment(Environment):
    name: ClassVar[str] = "db"
    final_tool: ClassVar[str] = "answer"
    max_rows: ClassVar[int] = 100
    max_chars: ClassVar[int] = 4000
    max_sql_chars: ClassVar[int] = 20_000
    time_limit_s: ClassVar[float] = 2.0
    heap_limit_bytes: ClassVar[int] = 64 * 2**20

    def __init__(self) -> None:
        self.conn: sqlite3.Connection | None = None
        self._deadline = 0.0

    def tools(self, task: Task) -> list[ToolSpec]:
        return list(DB_TOOLS)

    def tags(self, task: Task) -> dict[str, str]:
        return {**super().tags(task), "task": "db"}

    def final_call(self, answer: str, call_id: str) -> ToolCall:
        try:
            value: Any = json.loads(answer)
        except json.JSONDecodeError:
            value = answer
        return ToolCall(id=call_id, name="answer", arguments={"answer": value if isinstance(value, list) else [value]})

    def reset(self, task: Task) -> list[Message]:
        self.close()
        conn = sqlite3.connect(":memory:", check_same_thread=False)
        conn.execute(f"PRAGMA hard_heap_limit={self.heap_limit_bytes}")
        table = task.data["table"]
        cols = table["columns"]
        conn.execute(f"CREATE TABLE {_q(table['name'])} (" + ", ".join(
            f"{_q(c['name'])} {c.get('type', 'TEXT')}" for c in cols) + ")")
        marks = ", ".join("?" for _ in cols)
        conn.executemany(f"INSERT INTO {_q(table['name'])} VALUES ({marks})", table["rows"])
        conn.commit()
        conn.set_authorizer(self._authorize)
        conn.set_progress_handler(self._progress, 10_000)
        self.conn = conn
        headers = ",".join(c["name"] for c in cols)
        prompt = (f"{task.query}\nThe name of this table is {table['name']}, and the headers of this table "
                  f"are {headers}.")
        return [SystemMessage(content=SYSTEM), UserMessage(content=prompt)]

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_PRAGMA):
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def _progress(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def step(self, call: ToolCall) -> ToolMessage:
        if call.name != "operation":
            return self.observation(call, {"error": f"unknown tool {call.name!r}; use operation or answer"},
                                    self.max_chars)
        sql = call.arguments.get("sql")
        if not isinstance(sql, str) or not sql.strip():
            return self.observation(call, {"error": "argument 'sql' must be a non-empty string"}, self.max_chars)
        if len(sql) > self.max_sql_chars:
            return self.observation(call, {"error": f"SQL longer than {self.max_sql_chars} characters refused"},
                                    self.max_chars)
        assert self.conn is not None, "reset() first"
        self._deadline = time.monotonic() + self.time_limit_s
        try:
            cur = self.conn.execute(sql)
            rows = cur.fetchmany(self.max_rows + 1)
            self.conn.commit()
        except sqlite3.OperationalError as e:
            msg = str(e)
            if msg == "interrupted":
                msg = f"statement stopped after the {self.time_limit_s:g} s time limit"
            elif "not authorized" in msg:
                msg = "not authorized: ATTACH, PRAGMA and file or extension functions are disabled"
            return self.observation(call, {"error": msg}, self.max_chars)
        except (sqlite3.Error, sqlite3.Warning, OverflowError, MemoryError, ValueError) as e:
            return self.observation(call, {"error": f"{type(e).__name__}: {e}"}, self.max_chars)
        if cur.description is None:
            return ToolMessage(content=f"[] ({cur.rowcount} row(s) affected)", name=call.name, tool_call_id=call.id)
        note = f" [only the first {self.max_rows} rows are shown]" if len(rows) > self.max_rows else ""
        text = str([tuple(r) for r in rows[: self.max_rows]])
        if len(text) > self.max_chars:
            text = text[: self.max_chars] + f"... [truncated {len(text) - self.max_chars} characters]"
        return ToolMessage(content=text + note, name=call.name, tool_call_id=call.id)

    def verify(self, task: Task, final_answer: str | None, transcript: list[Message]) -> Verdict:
        assert self.conn is not None
        kind = task.kind
        if kind in ("insert", "update", "delete"):
            cols = [c["name"] for c in task.data["table"]["columns"]]
            got = table_hash(self.conn, task.data["table"]["name"], cols)
            ok = got == task.expected["answer_md5"]
            return Verdict(ok, "table state matches" if ok else "table state differs", {"hash": got})
        if final_answer is None:
            return Verdict(False, "no answer given")
        ok = answers_match(final_answer, task.expected["label"])
        return Verdict(ok, "answer matches" if ok else f"answer {final_answer!r} != {task.expected['label']!r}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ---- AgentBench dbbench tasks --------------------------------------------------------------------

def task_from_agentbench(record: dict[str, Any], index: int) -> Task:
    table = record["table"]
    columns = table["table_info"]["columns"]
    kind = str(record["type"][0]).lower()
    kind = kind if kind in ("insert", "update", "delete") else "select"
    expected: dict[str, Any] = {}
    if kind == "select":
        label = record["label"]
        expected["label"] = label if isinstance(label, list) else [label]
        sql = record.get("sql")
        if isinstance(sql, dict) and sql.get("query"):
            expected["gold_sql"] = sql["query"]
        expected["select_type"] = str(record["type"][0])
    else:
        expected["answer_md5"] = record["answer_md5"]
        expected["gold_sql"] = record["label"]
    rows = [[None if v is None else str(v) if isinstance(v, (int, float)) else v for v in row]
            for row in table["table_info"]["rows"]]
    return Task(id=f"dbbench-dev-{index}", env="db", split="dev", kind=kind, query=record["description"],
                tools=list(DB_TOOLS), expected=expected,
                data={"table": {"name": table["table_name"], "columns": columns, "rows": rows}},
                template="agentbench")


def repair_wikisql(query: str, columns: list[str], table: str) -> str:
    """Make WikiSQL-style queries valid SQL: quote column and table names that contain spaces.

    Examples:
        >>> repair_wikisql('SELECT Total Points FROM "T" WHERE Year = 2001', ["Total Points", "Year"], "T")
        'SELECT `Total Points` FROM `T` WHERE `Year` = 2001'
    """
    out = re.sub(r'"([^"]+)"', lambda m: _q(m.group(1)), query)
    for col in sorted(columns, key=len, reverse=True):
        out = re.sub(rf"(?<![`\w]){re.escape(col)}(?![`\w])", _q(col).replace("\\", "\\\\"), out)
    return out.rstrip().rstrip(";")


def expert_sql(task: Task) -> str | None:
    """The SQL the expert runs for an AgentBench SELECT task: the gold query, repaired; None if none."""
    gold = task.expected.get("gold_sql")
    if not gold:
        return None
    cols = [c["name"] for c in task.data["table"]["columns"]]
    return repair_wikisql(gold, cols, task.data["table"]["name"])


def run_select(conn: sqlite3.Connection, sql: str) -> list[Any] | None:
    """Values of a SELECT (flattened), or None if it fails."""
    try:
        rows = conn.execute(sql).fetchmany(1000)
    except sqlite3.Error:
        return None
    return [v for row in rows for v in row]


def derive_select_sql(task: Task) -> str | None:
    """A query the expert can run for an AgentBench SELECT task, checked against the label.

    First the task's gold query (WikiSQL-style, repaired by `repair_wikisql`); when that does not
    reproduce the label, a search over queries grounded in the question: conditions are the table
    cells whose values the question mentions (one or two, joined by AND), the target is any column,
    `COUNT(*)`, or `SUM/MIN/MAX/AVG` of a column. The first query whose result equals the label
    wins; None when nothing does (the label is then not derivable from the table by such a query).
    The target follows the task's type (`counting` -> COUNT, `aggregation-SUM` -> SUM, ...), so a
    number that merely happens to equal the label is not taken for the answer.
    """
    table = task.data["table"]
    cols = [c["name"] for c in table["columns"]]
    label = task.expected["label"]
    conn = sqlite3.connect(":memory:")
    try:
        conn.execute(f"CREATE TABLE {_q(table['name'])} (" + ", ".join(
            f"{_q(c['name'])} {c.get('type', 'TEXT')}" for c in table["columns"]) + ")")
        conn.executemany(f"INSERT INTO {_q(table['name'])} VALUES ({', '.join('?' for _ in cols)})", table["rows"])

        def matches(sql: str) -> bool:
            values = run_select(conn, sql)
            if values is None:
                return False
            if not values or all(v is None for v in values):
                return [normalize(x) for x in label] == ["none"]
            return answers_match(values, label)

        gold = expert_sql(task)
        if gold and matches(gold):
            return gold
        text = task.query.lower()
        mentioned = sorted({(c, str(v)) for row in table["rows"] for c, v in zip(cols, row, strict=False)
                            if v is not None and len(str(v)) >= 2 and str(v).lower() in text},
                           key=lambda cv: (-len(cv[1]), cv))
        conds: list[list[tuple[str, str]]] = [[m] for m in mentioned]
        conds += [[a, b] for i, a in enumerate(mentioned) for b in mentioned[i + 1:] if a[0] != b[0]]
        kind = str(task.expected.get("select_type", "other"))
        # when the question names columns, only those are targets: a coincidental match elsewhere must not win
        cols_ranked = [c for c in cols if c.lower() in text] or cols
        if kind == "counting":
            targets = ["COUNT(*)"]
        elif kind.startswith("aggregation-"):
            func = kind.split("-", 1)[1]
            targets = [f"{func}(CAST({_q(c)} AS REAL))" for c in cols_ranked]
        else:  # other, comparison, ranking: a column of the matching rows
            targets = [_q(c) for c in cols_ranked]
        t = _q(table["name"])
        for cond in conds:
            where = " AND ".join(f"{_q(c)} = '{v.replace(chr(39), chr(39) * 2)}'" for c, v in cond)
            for target in targets:
                sql = f"SELECT {target} FROM {t} WHERE {where}"
                if matches(sql):
                    return sql
        return None
    finally:
        conn.close()
