"""A database environment compatible with AgentBench's DB task (`dbbench/dev.jsonl`).

Each episode gets a fresh database holding the task's one table, built as AgentBench builds it:
every column `TEXT`, every value inserted as `str(v)` (so `None` becomes the text `None`). The
agent runs SQL with `operation(sql)` and ends with `answer(answer)`, exactly AgentInstruct's DB
dialect. Scoring follows AgentBench's `DBResultProcessor` (reproduced, not copied):

* INSERT/UPDATE/DELETE tasks compare the table's state by AgentBench's hash,
  `md5(group_concat(rowhash order by rowhash))` over `rowhash = substring(md5(concat_ws(',',
  cols)), 1, 5)`, printed as `str(cursor.fetchall())`, so `answer_md5` is checked as is;
* SELECT tasks clean both sides (`clean_answer`: strings that look like lists or MySQL results are
  parsed, quotes and spaces stripped, `%` and thousands separators removed, `None`/`null`/`nan`/
  `inf`/empty mapped to `"0"`), then compare case-sensitively: one value each, as numbers within
  0.01 when both are numbers; several values, as a multiset of numbers within 0.01 when all are
  numbers, else as sets (order and duplicates ignored).

One deliberate difference: AgentBench `eval`s answer strings that look like lists; we never
evaluate model output and parse Python literals only (`ast.literal_eval`), so an answer written as
an expression (`[1+1]`) is read as text here.

Engines: `sqlite` (the default, embedded, in memory; it runs the agent's MySQL translated by
`sqlglot`, with MySQL's case- and accent-insensitive comparison and its comparison of text with
numbers registered, see `envs/db_dialect.py` and what stays different there) and `mysql` (a
throw-away MariaDB server, see `envs/mysql.py`, for exact fidelity, strict-mode errors included).
A table that cannot be built (the engine refuses a column name, a row of the wrong width)
is not an exception: every call says so and the verdict is a failure with the engine's reason.

Safety (every episode, SQLite): one throw-away in-memory database; an authorizer that refuses
ATTACH, DETACH, PRAGMA and any function that touches files or extensions; extension loading off;
one statement per call and at most 20,000 characters; a time limit per statement (progress
handler); a memory limit for the database; results cut to 100 rows / 4,000 characters with a
note. Hostile SQL comes back as an error observation, never as an exception.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from agentflan.envs.base import Environment, Task, Verdict
from agentflan.envs.db_engine import (
    Engine,
    Result,
    TableBuildError,
    TableStateError,
    check_widths,
    quote_name,
    table_rows,
)
from agentflan.errors import ConfigError
from agentflan.formats.agentinstruct import DIALECTS
from agentflan.formats.neutral import TASK_STATEMENTS
from agentflan.schema import AssistantMessage, Message, SystemMessage, ToolCall, ToolMessage, ToolSpec, UserMessage

DB_TOOLS: list[ToolSpec] = list(DIALECTS["db"].tools)
SYSTEM = TASK_STATEMENTS["db"]
"""The task, stated without a reply format: each protocol states its own (`agentinstruct:db` states
AgentBench's, `formats.agentinstruct.AGENTBENCH_DB_PROMPT`)."""
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer", "zipfile", "sqlar_compress",
                     "sqlar_uncompress"}
GROUP_CONCAT_MAX_LEN = 1024
"""MySQL's default `group_concat_max_len` (bytes): AgentBench's hash concatenates the row hashes of
at most ~170 rows; longer concatenations are cut there before the md5, silently, by MySQL."""


def agentbench_hash(rows: Sequence[Sequence[Any]]) -> str:
    """AgentBench's table hash of `rows` (values as the database returns them), as
    `str(cursor.fetchall())` prints it: `[('<md5>',)]`, or `[(None,)]` for an empty table."""
    if not rows:
        return str([(None,)])  # md5(group_concat(...)) of no rows is NULL
    # CONCAT_WS skips NULLs; TEXT columns hold text, so str() is what MySQL concatenates
    hashes = sorted(hashlib.md5(",".join(str(v) for v in row if v is not None).encode()).hexdigest()[:5]
                    for row in rows)
    joined = ",".join(hashes)[:GROUP_CONCAT_MAX_LEN]
    return str([(hashlib.md5(joined.encode()).hexdigest(),)])


def table_hash(conn: sqlite3.Connection, table: str, columns: list[str]) -> str:
    """AgentBench's table hash of a SQLite table (see `agentbench_hash`)."""
    return agentbench_hash(conn.execute(f"SELECT {', '.join(quote_name(c) for c in columns)} FROM {quote_name(table)}").fetchall())


# ---- SELECT scoring, AgentBench's rules ----------------------------------------------------------

_SPECIAL = {"none", "null", "undefined", "nan", "inf", "infinity", "-inf", "-infinity", ""}


def normalize(value: Any) -> str:
    """One answer value as AgentBench compares it (its `_normalize_special_values`).

    `None` and special words (`none`, `null`, `nan`, `inf`, ..., the empty string) become `"0"`; a
    trailing `%` is removed (and nothing else is then done: `"1,000%"` stays `"1,000"`); commas
    are removed unless the value looks like a list. Case is kept.

    Examples:
        >>> [normalize(v) for v in (None, " NaN ", "45 %", "1,234", "[1,2]", "Abc")]
        ['0', '0', '45', '1234', '[1,2]', 'Abc']
    """
    if value is None:
        return "0"
    text = str(value).strip()
    if text.endswith("%"):
        return text[:-1].strip()
    if "," in text and not text.startswith("[") and not text.endswith("]"):
        text = text.replace(",", "")
    return "0" if text.lower() in _SPECIAL else text


def _item(value: Any) -> str:
    """An element of a list answer: a one-element tuple unwrapped, stripped of spaces and quotes."""
    if isinstance(value, tuple) and len(value) == 1:
        value = value[0]
    return normalize(str(value).strip().strip("'\""))


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _UNPARSED


_UNPARSED = object()


def _mysql_result(text: str) -> list[str] | None:
    """Values of a printed MySQL result (`[('a',), (2,)]`): one-value rows only, as AgentBench reads them."""
    parsed = _literal(text)
    if isinstance(parsed, list) and all(isinstance(row, tuple) for row in parsed):
        return [str(row[0]).strip().strip("'\"") for row in parsed if len(row) == 1]
    inner = text.strip("[]")
    if inner.count("(") == 1 and inner.startswith("(") and inner.endswith(",)"):
        return [inner[1:-2].strip().strip("'\"")]
    return None


def _split_list(inner: str) -> list[str]:
    """AgentBench's fallback for a bracketed answer that does not parse: split on commas outside
    quotes (quote characters themselves dropped), empty items skipped."""
    items, current, quoted = [], "", False
    for ch in inner:
        if ch in "\"'":
            quoted = not quoted
        elif ch == "," and not quoted:
            if current:
                items.append(normalize(current.strip().strip("'\"")))
                current = ""
        else:
            current += ch
    if current:
        items.append(normalize(current.strip().strip("'\"")))
    return items


def clean_answer(answer: Any) -> list[str] | None:
    """An answer (or label) as the list of strings AgentBench compares (its `_clean_answer`);
    None where AgentBench's own cleaning yields nothing comparable (the comparison then fails)."""
    if answer is None:
        return ["0"]
    if isinstance(answer, str) and answer.startswith("[") and answer.endswith("]"):
        values = _mysql_result(answer)
        if values is not None:
            return [normalize(v) for v in values]
    if isinstance(answer, str):
        text = answer.strip()
        if not (text.startswith("[") and text.endswith("]")):
            return [normalize(text.strip("'\""))]
        parsed = _literal(text)
        if parsed is _UNPARSED:
            return _split_list(text[1:-1])
        return [_item(v) for v in parsed] if isinstance(parsed, list) else None
    if isinstance(answer, (list, tuple)):
        return [_item(v) for v in answer]
    return [normalize(str(answer).strip().strip("'\""))]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except (ValueError, OverflowError):
        return None


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-2  # NaN is close to nothing, as in AgentBench


def answers_match(answer: Any, label: Any) -> bool:
    """Does `answer` match `label` under AgentBench's SELECT rules (see the module docstring)?

    Examples:
        >>> answers_match(["Paris", "paris"], ["Paris"]), answers_match("['Paris']", ["Paris"])
        (False, True)
        >>> answers_match(["3.004"], ["3"]), answers_match(["b", "a", "a"], ["a", "b"]), answers_match("null", "0")
        (True, True, True)
    """
    got, want = clean_answer(answer), clean_answer(label)
    if got is None or want is None:
        return False
    if len(got) == 1 and len(want) == 1:
        a, b = got[0], want[0]
        if a == "0" and b == "0":
            return True
        x, y = _number(a), _number(b)
        if x is not None and y is not None:
            return _close(x, y)
        return a == b
    nums_got, nums_want = [_number(v) for v in got], [_number(v) for v in want]
    if all(x is not None for x in nums_got) and all(y is not None for y in nums_want):
        if len(got) != len(want):
            return False
        free = [y for y in nums_want if y is not None]
        for x in nums_got:  # greedy: each answer takes the first unused label within tolerance
            k = next((i for i, y in enumerate(free) if x is not None and _close(x, y)), None)
            if k is None:
                return False
            free.pop(k)
        return True
    return set(got) == set(want)


def submitted_answer(transcript: list[Message], final_tool: str = "answer") -> tuple[bool, Any]:
    """The value the last call of `final_tool` submitted, as AgentBench takes it (the first argument's
    value, unparsed: a list stays a list); (False, None) if no such call or it has no argument."""
    for m in reversed(transcript):
        if isinstance(m, AssistantMessage):
            for call in m.tool_calls:
                if call.name == final_tool and call.arguments:
                    return True, next(iter(call.arguments.values()))
            return False, None
    return False, None


# ---- engines -------------------------------------------------------------------------------------

def _create_sql(table: dict[str, Any], collate: str = "") -> str:
    return f"CREATE TABLE {quote_name(table['name'])} (" + ", ".join(f"{quote_name(c['name'])} TEXT{collate}"
                                                         for c in table["columns"]) + ")"


class SQLiteEngine(Engine):
    """An in-memory SQLite database, sandboxed (see the module docstring), that runs MySQL
    (`envs/db_dialect.py`: the agent's SQL translated, MySQL's comparisons registered)."""

    name: ClassVar[str] = "sqlite"
    heap_limit_bytes: ClassVar[int] = 64 * 2**20

    def __init__(self) -> None:
        from agentflan.envs import db_dialect

        db_dialect.check()
        self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        self.conn.execute(f"PRAGMA hard_heap_limit={self.heap_limit_bytes}")
        db_dialect.register(self.conn)
        self._to_sqlite = db_dialect.to_sqlite
        self._deadline = 0.0

    def build(self, table: dict[str, Any]) -> None:
        from agentflan.envs.db_dialect import COLLATION

        check_widths(table)
        try:
            self.conn.execute(_create_sql(table, f" COLLATE {COLLATION}"))
            marks = ", ".join("?" for _ in table["columns"])
            self.conn.executemany(f"INSERT INTO {quote_name(table['name'])} VALUES ({marks})", table_rows(table))
            self.conn.commit()
        except sqlite3.Error as e:
            raise TableBuildError(f"sqlite: {e}") from e
        self.conn.set_authorizer(self._authorize)
        self.conn.set_progress_handler(self._progress, 10_000)

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
        if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_PRAGMA):
            return sqlite3.SQLITE_DENY
        if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def _progress(self) -> int:
        return 1 if time.monotonic() > self._deadline else 0

    def execute(self, sql: str, max_rows: int, time_limit_s: float) -> Result:
        self._deadline = time.monotonic() + time_limit_s
        try:
            cur = self.conn.execute(self._to_sqlite(sql))
            rows = cur.fetchmany(max_rows + 1)
            self.conn.commit()
        except sqlite3.OperationalError as e:
            msg = str(e)
            if msg == "interrupted":
                msg = f"statement stopped after the {time_limit_s:g} s time limit"
            elif "not authorized" in msg:
                msg = "not authorized: ATTACH, PRAGMA and file or extension functions are disabled"
            return Result(error=msg)
        except (sqlite3.Error, sqlite3.Warning, OverflowError, MemoryError, ValueError) as e:
            return Result(error=f"{type(e).__name__}: {e}")
        if cur.description is None:
            return Result(rowcount=cur.rowcount)
        return Result(rows=[tuple(r) for r in rows[:max_rows]], more=len(rows) > max_rows)

    def table_hash(self, table: str, columns: list[str]) -> str:
        self._deadline = time.monotonic() + 60.0
        try:
            return table_hash(self.conn, table, columns)
        except (sqlite3.Error, sqlite3.Warning, OverflowError, MemoryError, ValueError) as e:
            raise TableStateError(f"sqlite: {e}") from e

    def close(self) -> None:
        self.conn.close()


ENGINES = ("sqlite", "mysql")


def make_engine(name: str, sql_mode: str | None = None, key: str = "") -> Engine:
    """An engine by name; `sql_mode` and `key` (the task's id, which names its database and user so
    that what the agent sees does not change from run to run) apply to `mysql` (see `MySQLEngine`)."""
    if name == "sqlite":
        return SQLiteEngine()
    if name == "mysql":
        from agentflan.envs.mysql import MySQLEngine

        return MySQLEngine(sql_mode=sql_mode, key=key)
    raise ConfigError(f"unknown DB engine {name!r} (known: {', '.join(ENGINES)})")


class DBEnvironment(Environment):
    name: ClassVar[str] = "db"
    final_tool: ClassVar[str] = "answer"
    max_rows: ClassVar[int] = 100
    max_chars: ClassVar[int] = 4000
    max_sql_chars: ClassVar[int] = 20_000
    time_limit_s: ClassVar[float] = 2.0

    def __init__(self, engine: str = "sqlite", sql_mode: str | None = None) -> None:
        if engine not in ENGINES:
            raise ConfigError(f"unknown DB engine {engine!r} (known: {', '.join(ENGINES)})")
        self.engine_name = engine
        self.sql_mode = sql_mode
        self.engine: Engine | None = None
        self.build_error: str | None = None

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
        table = task.data["table"]
        self.engine = make_engine(self.engine_name, self.sql_mode, key=task.id)
        try:
            self.engine.build(table)
        except TableBuildError as e:
            self.build_error = str(e)
        headers = ",".join(c["name"] for c in table["columns"])
        prompt = (f"{task.query}\nThe name of this table is {table['name']}, and the headers of this table "
                  f"are {headers}.")
        return [SystemMessage(content=SYSTEM), UserMessage(content=prompt)]

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
        assert self.engine is not None, "reset() first"
        if self.build_error is not None:
            return self.observation(call, {"error": f"the task's table could not be built: {self.build_error}"},
                                    self.max_chars)
        res = self.engine.execute(sql, self.max_rows, self.time_limit_s)
        if res.error is not None:
            return self.observation(call, {"error": res.error}, self.max_chars)
        if res.rows is None:
            return ToolMessage(content=f"[] ({res.rowcount} row(s) affected)", name=call.name, tool_call_id=call.id)
        note = f" [only the first {self.max_rows} rows are shown]" if res.more else ""
        text = str(res.rows)
        if len(text) > self.max_chars:
            text = text[: self.max_chars] + f"... [truncated {len(text) - self.max_chars} characters]"
        return ToolMessage(content=text + note, name=call.name, tool_call_id=call.id)

    def verify(self, task: Task, final_answer: str | None, transcript: list[Message]) -> Verdict:
        assert self.engine is not None
        if self.build_error is not None:
            return Verdict(False, f"the task's table could not be built: {self.build_error}")
        if task.kind in ("insert", "update", "delete"):
            cols = [c["name"] for c in task.data["table"]["columns"]]
            try:
                got = self.engine.table_hash(task.data["table"]["name"], cols)
            except TableStateError as e:  # dropped or renamed by the agent: a failure, never a crash
                return Verdict(False, f"the task's table cannot be hashed: {e}")
            ok = got == task.expected["answer_md5"]
            return Verdict(ok, "table state matches" if ok else "table state differs", {"hash": got})
        given, answer = submitted_answer(transcript, self.final_tool)
        if not given:  # AgentBench scores only what its answer tool submits, never free text
            return Verdict(False, "no answer given" if final_answer is None else
                           f"no `{self.final_tool}` call with an answer (a text reply is not scored)")
        ok = answers_match(answer, task.expected["label"])
        return Verdict(ok, "answer matches" if ok else f"answer {answer!r} != {task.expected['label']!r}")

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        self.build_error = None


# ---- AgentBench dbbench tasks --------------------------------------------------------------------

def task_from_agentbench(record: dict[str, Any], index: int) -> Task:
    """A task from one record of AgentBench's dbbench files (`dev.jsonl`, `standard.jsonl`)."""
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
    # kept as the file has them; the engines insert str(v), as AgentBench does
    rows = table["table_info"]["rows"]
    return Task(id=f"dbbench-dev-{index}", env="db", split="dev", kind=kind, query=record["description"],
                tools=list(DB_TOOLS), expected=expected,
                data={"table": {"name": table["table_name"], "columns": columns, "rows": rows}},
                template="agentbench")


def repair_wikisql(query: str, columns: list[str], table: str) -> str:
    """Make WikiSQL-style queries valid MySQL: quote column and table names that contain spaces,
    and a table name written as a string (`FROM 'T'`, which MySQL refuses).

    Examples:
        >>> repair_wikisql('SELECT Total Points FROM "T" WHERE Year = 2001', ["Total Points", "Year"], "T")
        'SELECT `Total Points` FROM `T` WHERE `Year` = 2001'
        >>> repair_wikisql("SELECT A FROM 'My T' WHERE A = 'x'", ["A"], "My T")
        "SELECT `A` FROM `My T` WHERE `A` = 'x'"
    """
    out = re.sub(r'"([^"]+)"', lambda m: quote_name(m.group(1)), query)
    out = re.sub(r"(?i)\b(FROM|JOIN)\s+'([^']+)'", lambda m: f"{m.group(1)} {quote_name(m.group(2))}", out)
    for col in sorted(columns, key=len, reverse=True):
        out = re.sub(rf"(?<![`\w]){re.escape(col)}(?![`\w])", quote_name(col).replace("\\", "\\\\"), out)
    return out.rstrip().rstrip(";")


def expert_sql(task: Task) -> str | None:
    """The SQL the expert runs for an AgentBench SELECT task: the gold query, repaired; None if none."""
    gold = task.expected.get("gold_sql")
    if not gold:
        return None
    cols = [c["name"] for c in task.data["table"]["columns"]]
    return repair_wikisql(gold, cols, task.data["table"]["name"])


def mysql_string(value: str) -> str:
    r"""`value` as a MySQL string literal (quote doubled, backslash escaped: MySQL reads `\n` as a newline).

    Examples:
        >>> print(mysql_string("O'Brien\\n"))
        'O''Brien\\n'
    """
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def run_select(engine: Engine, sql: str) -> list[Any] | None:
    """Values of a SELECT (flattened), or None if it fails."""
    res = engine.execute(sql, 1000, 2.0)
    if res.error is not None or res.rows is None:
        return None
    return [v for row in res.rows for v in row]


def derive_select_sql(task: Task, engine_name: str = "sqlite", sql_mode: str | None = None) -> str | None:
    """A query the expert can run for an AgentBench SELECT task, checked against the label on the
    engine the episode runs on (`engine_name`), in MySQL (what AgentBench's agent writes, and what
    both engines read).

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
    engine = make_engine(engine_name, sql_mode, key=task.id)
    try:
        try:
            engine.build(table)
        except TableBuildError:
            return None

        def matches(sql: str) -> bool:
            values = run_select(engine, sql)
            # what the expert answers: the values, or "none" when there are none
            return values is not None and answers_match(values or ["none"], label)

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
            # DOUBLE: a CAST type of MySQL 8 and MariaDB (REAL is not MariaDB's), SQLite's REAL once translated
            targets = [f"{func}(CAST({quote_name(c)} AS DOUBLE))" for c in cols_ranked]
        else:  # other, comparison, ranking: a column of the matching rows
            targets = [quote_name(c) for c in cols_ranked]
        t = quote_name(table["name"])
        for cond in conds:
            where = " AND ".join(f"{quote_name(c)} = {mysql_string(v)}" for c, v in cond)
            for target in targets:
                sql = f"SELECT {target} FROM {t} WHERE {where}"
                if matches(sql):
                    return sql
        return None
    finally:
        engine.close()
