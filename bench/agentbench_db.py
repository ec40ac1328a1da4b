"""AgentBench DB fidelity: gold SQL against `answer_md5`, and our SELECT scorer against AgentBench's.

1. Every INSERT/UPDATE/DELETE task's gold SQL is run by the scripted expert in the `db`
   environment, on each engine (SQLite, which runs the MySQL translated; MariaDB as AgentBench's
   evaluation server runs, strict `sql_mode`; MariaDB without strict mode), and the table hash is
   compared with `answer_md5`. Every SELECT task: how many the expert can derive a query for on
   that engine (the gold query, repaired, or a search; see `derive_select_sql`), and solves.
2. With `--agentbench-src` (a checkout of THUDM/AgentBench; its code is imported from there,
   never copied):
   * a generated set of answer variants for every SELECT label (case, duplicates, order, numeric
     tolerance, `%`, thousands separators, special values, quoting, printed MySQL results, ...)
     is scored by AgentBench's `DBResultProcessor.compare_results` and by our `answers_match`;
   * on MariaDB, the final table of every modification episode (the gold SQL's, and an agent's
     that drops the table) is judged by AgentBench's own `calculate_tables_hash_async` and
     `compare_results` beside our verdict.
   Agreement and every disagreement are printed.

    python bench/agentbench_db.py --tasks ../shared/data/agentbench/dbbench/dev.jsonl \
        [--tasks AgentBench/data/dbbench/standard.jsonl] [--agentbench-src AgentBench] [--markdown]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import io
import json
import math
import platform
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from agentflan.envs import run_episode  # noqa: E402
from agentflan.envs.base import ExpertPolicy, Task, Verdict  # noqa: E402
from agentflan.envs.db import DBEnvironment, answers_match, derive_select_sql, task_from_agentbench  # noqa: E402
from agentflan.envs.db_tasks import expert_for  # noqa: E402
from agentflan.envs.mysql import MySQLEngine, server_binaries  # noqa: E402
from agentflan.schema import AssistantMessage, Message, ToolCall  # noqa: E402

AgentBenchJudge = Callable[[MySQLEngine, Task], bool]


def load_tasks(path: Path) -> list[Task]:
    return [task_from_agentbench(json.loads(line), i) for i, line in enumerate(path.read_text().splitlines())]


class JudgedDB(DBEnvironment):
    """The db environment that also asks AgentBench's own code for its verdict on the final table
    (modification tasks, MariaDB engine); `theirs` holds it."""

    def __init__(self, engine: str, sql_mode: str | None, judge: AgentBenchJudge | None) -> None:
        super().__init__(engine, sql_mode)
        self.judge, self.theirs = judge, None

    def verify(self, task: Task, final_answer: str | None, transcript: list[Message]) -> Verdict:
        if self.judge is not None and task.kind != "select" and isinstance(self.engine, MySQLEngine):
            self.theirs = self.judge(self.engine, task)
        return super().verify(task, final_answer, transcript)


def _dropper(task: Task) -> Any:
    """An agent that drops the task's table, then answers."""
    yield AssistantMessage(tool_calls=[ToolCall(id="c0", name="operation", arguments={
        "sql": f"DROP TABLE `{task.data['table']['name']}`"})])
    yield AssistantMessage(tool_calls=[ToolCall(id="c1", name="answer", arguments={"answer": []})])


def run_engine(tasks: list[Task], engine: str, sql_mode: str | None,
               judge: AgentBenchJudge | None) -> dict[str, Any]:
    """Gold SQL against `answer_md5`, the expert on SELECT tasks, and AgentBench's verdicts (`judge`)."""
    mods = [t for t in tasks if t.kind != "select"]
    fails, agree, judged, disagreements = [], 0, 0, []
    for t in mods:
        for agent, gold in ((expert_for(t, engine), True), (_dropper(t), False)):
            env = JudgedDB(engine, sql_mode, judge)
            ep = run_episode(env, t, ExpertPolicy(agent))
            assert ep.verdict is not None
            if gold and not ep.verdict.success:
                fails.append(f"{t.id}: {ep.verdict.reason}")
            if env.theirs is not None:
                judged += 1
                agree += env.theirs == ep.verdict.success
                if env.theirs != ep.verdict.success:
                    disagreements.append(f"{t.id} ({'gold' if gold else 'DROP TABLE'}): AgentBench {env.theirs}, "
                                         f"agentflan {ep.verdict.success}")
    selects = [t for t in tasks if t.kind == "select"]
    derivable = [t for t in selects if derive_select_sql(t, engine) is not None]
    solved = 0
    for t in derivable:
        verdict = run_episode(DBEnvironment(engine, sql_mode), t, ExpertPolicy(expert_for(t, engine))).verdict
        solved += bool(verdict is not None and verdict.success)
    return {"ok": len(mods) - len(fails), "n": len(mods), "fails": fails, "selects": len(selects),
            "derivable": len(derivable), "solved": solved, "judged": judged, "agree": agree,
            "disagreements": disagreements}


def _agentbench_module(src: Path) -> Any:
    """AgentBench's `result_processor` module, imported from a checkout (its database module stubbed)."""
    pkg = "agentbench_dbbench"
    stub = types.ModuleType(f"{pkg}.interaction")
    stub.Database = object  # type: ignore[attr-defined]
    sys.modules[pkg] = types.ModuleType(pkg)
    sys.modules[pkg].__path__ = []  # type: ignore[attr-defined]
    sys.modules[f"{pkg}.interaction"] = stub
    spec = importlib.util.spec_from_file_location(f"{pkg}.result_processor",
                                                  src / "src/server/tasks/dbbench/result_processor.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def agentbench_compare(src: Path) -> Callable[[Any, Any], bool]:
    """AgentBench's own `compare_results` for SELECT answers."""
    mod = _agentbench_module(src)

    def compare(answer: Any, label: Any) -> bool:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its intermediate values
            return bool(mod.DBResultProcessor.compare_results(answer, label, "other"))

    return compare


def agentbench_judge(src: Path) -> AgentBenchJudge:
    """AgentBench's verdict on a modification task's table as it stands in a MariaDB episode: its
    own `calculate_tables_hash_async` (its hash query, run through a stand-in for its
    `MySQLDatabase.execute`: `str(rows)`, or the error's text) and `compare_results`."""
    mod = _agentbench_module(src)

    class Database:  # what AgentBench's MySQLDatabase.execute returns, on our episode's database
        def __init__(self, engine: MySQLEngine) -> None:
            self.engine = engine

        async def execute(self, sql: str) -> str:
            try:
                with self.engine.admin.cursor() as cur:
                    cur.execute(sql)
                    return str(list(cur.fetchall()))
            except Exception as e:
                return str(e)

    def judge(engine: MySQLEngine, task: Task) -> bool:
        table = task.data["table"]
        entry = {"table": {"table_name": table["name"], "table_info": {"columns": table["columns"]}}}
        got = asyncio.run(mod.DBResultProcessor.calculate_tables_hash_async(Database(engine), entry))
        with contextlib.redirect_stdout(io.StringIO()):
            return bool(mod.DBResultProcessor.compare_results(got, task.expected["answer_md5"], task.kind.upper()))

    return judge


def variants(label: list[Any]) -> list[Any]:
    """Answers a model might give for `label`: right, wrong, and right in another form."""
    text = [str(v) for v in label]
    out: list[Any] = [list(label), text, str(text), json.dumps(text), str([(v,) for v in text]),
                      [v.upper() for v in text], [v.lower() for v in text], [v.title() for v in text],
                      list(reversed(text)), text + text[:1], text[:1] * 3, text[:-1] or [""], [*text, "extra"],
                      [f" {v} " for v in text], [f"'{v}'" for v in text], ", ".join(text), text[0], [None],
                      [], "", None, "None", ["null"], ["NaN"], ["inf"], ["0"], [0], "[]", "[None]", "[(None,)]",
                      [tuple(text)], "['unterminated", str(tuple(text)), "[1+1]"]
    for v in text:
        try:
            x = float(v.replace(",", "").rstrip("%"))
        except ValueError:
            continue
        if not math.isfinite(x):
            continue
        out += [[str(x)], [str(int(x)) if x.is_integer() else str(round(x))], [f"{x + 0.005}"], [f"{x + 0.01}"],
                [f"{x + 0.0101}"], [f"{x - 0.02}"], [f"{x:,}"], [f"{x}%"], [f"{x:,.2f}%"], [x], [int(x)],
                [str(x), str(x)], [f"{x:.3e}"]]
    return out


def agreement(tasks: list[Task], theirs: Callable[[Any, Any], bool]) -> tuple[int, int, list[str]]:
    labels = [t.expected["label"] for t in tasks if t.kind == "select"]
    labels += [["1,234"], ["45%"], ["none"], ["0"], ["3.5", "3.5"], ["a", "B"], ["1", "2", "2"], ["", "x"], ["nan"]]
    total, diffs = 0, []
    for label in labels:
        for answer in variants(label):
            total += 1
            a, b = theirs(answer, label), answers_match(answer, label)
            if a != b:
                diffs.append(f"answer {answer!r} label {label!r}: AgentBench {a}, agentflan {b}")
    return total - len(diffs), total, diffs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=Path, action="append", required=True)
    ap.add_argument("--agentbench-src", type=Path)
    ap.add_argument("--markdown", action="store_true", help="Print a section for docs/benchmarks.md.")
    args = ap.parse_args()
    engines: list[tuple[str, str, str | None]] = [("SQLite", "sqlite", None)]
    if server_binaries():
        engines += [("MariaDB, MySQL 8 sql_mode (strict)", "mysql", None),
                    ("MariaDB, sql_mode NO_ENGINE_SUBSTITUTION", "mysql", "NO_ENGINE_SUBSTITUTION")]
    else:
        print("no MariaDB server (apt-get install mariadb-server): SQLite only", file=sys.stderr)
    judge = agentbench_judge(args.agentbench_src) if args.agentbench_src else None
    rows, judged = [], []
    for path in args.tasks:
        tasks = load_tasks(path)
        for label, engine, mode in engines:
            t0 = time.perf_counter()
            r = run_engine(tasks, engine, mode, judge)
            rows.append(f"| `{path.name}` | {label} | {r['ok']}/{r['n']} | {r['derivable']}/{r['selects']} | "
                        f"{r['solved']}/{r['derivable']} | {time.perf_counter() - t0:.1f} s | "
                        + ("; ".join(r["fails"]) or "-") + " |")
            if r["judged"]:
                judged.append(f"| `{path.name}` | {label} | {r['agree']}/{r['judged']} | "
                              + ("; ".join(r["disagreements"]) or "-") + " |")
    print("| tasks | engine | gold SQL reproduces `answer_md5` | SELECT derivable | expert solves | time | failures |\n"
          "|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if judged:
        print("\nModification episodes (gold SQL, and DROP TABLE), judged by AgentBench's own hash code and "
              "compare_results beside agentflan:\n\n| tasks | engine | same verdict | differences |\n|---|---|---|---|")
        print("\n".join(judged))
    if args.agentbench_src:
        theirs = agentbench_compare(args.agentbench_src)
        tasks = [t for p in args.tasks for t in load_tasks(p)]
        ok, n, diffs = agreement(tasks, theirs)
        print(f"\nSELECT scoring: agentflan agrees with AgentBench's compare_results on {ok}/{n} answer variants")
        for d in diffs:
            print(f"  {d}")
    if args.markdown:
        print(f"\nMachine: {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
              f"{platform.platform()}")


if __name__ == "__main__":
    main()
