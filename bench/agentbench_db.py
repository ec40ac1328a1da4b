"""AgentBench DB fidelity: gold SQL against `answer_md5`, and our SELECT scorer against AgentBench's.

1. Every INSERT/UPDATE/DELETE task's gold SQL is run by the scripted expert in the `db`
   environment, on each engine (SQLite; MariaDB as AgentBench's evaluation server runs, strict
   `sql_mode`; MariaDB without strict mode), and the table hash is compared with `answer_md5`.
2. With `--agentbench-src` (a checkout of THUDM/AgentBench; its scorer is imported from there,
   never copied), a generated set of answer variants for every SELECT label (case, duplicates,
   order, numeric tolerance, `%`, thousands separators, special values, quoting, printed MySQL
   results, ...) is scored by AgentBench's `DBResultProcessor.compare_results` and by our
   `answers_match`; agreement and every disagreement are printed.

    python bench/agentbench_db.py --tasks ../shared/data/agentbench/dbbench/dev.jsonl \
        [--tasks AgentBench/data/dbbench/standard.jsonl] [--agentbench-src AgentBench] [--markdown]
"""

from __future__ import annotations

import argparse
import importlib.util
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

from agentflan.envs import get_env, run_episode  # noqa: E402
from agentflan.envs.base import ExpertPolicy, Task  # noqa: E402
from agentflan.envs.db import DBEnvironment, answers_match, task_from_agentbench  # noqa: E402
from agentflan.envs.mysql import server_binaries  # noqa: E402


def load_tasks(path: Path) -> list[Task]:
    return [task_from_agentbench(json.loads(line), i) for i, line in enumerate(path.read_text().splitlines())]


def gold_md5(tasks: list[Task], engine: str, sql_mode: str | None) -> tuple[int, int, list[str]]:
    expert = get_env("db").expert
    mods = [t for t in tasks if t.kind != "select"]
    fails = []
    for t in mods:
        ep = run_episode(DBEnvironment(engine, sql_mode), t, ExpertPolicy(expert(t)))
        if not ep.verdict.success:
            fails.append(f"{t.id}: {ep.verdict.reason}")
    return len(mods) - len(fails), len(mods), fails


def agentbench_compare(src: Path) -> Callable[[Any, Any], bool]:
    """AgentBench's own `compare_results`, imported from a checkout (its database module stubbed)."""
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
    import contextlib
    import io

    def compare(answer: Any, label: Any) -> bool:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints its intermediate values
            return bool(mod.DBResultProcessor.compare_results(answer, label, "other"))

    return compare


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
    rows = []
    for path in args.tasks:
        tasks = load_tasks(path)
        for label, engine, mode in engines:
            t0 = time.perf_counter()
            ok, n, fails = gold_md5(tasks, engine, mode)
            rows.append(f"| `{path.name}` | {label} | {ok}/{n} | {time.perf_counter() - t0:.1f} s | "
                        + ("; ".join(fails) or "-") + " |")
    print("| tasks | engine | gold SQL reproduces `answer_md5` | time | failures |\n|---|---|---|---|---|")
    print("\n".join(rows))
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
