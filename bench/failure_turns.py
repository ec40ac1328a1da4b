"""Where the failed episodes of an evaluation fail: the first thing that went wrong in each, by the
capability of the turn (Agent-FLAN's decomposition), per run, environment and protocol.

For every episode without success, the actions are walked in order and the first fault names it:

* `retrieval: no tool named` - a T-FLAN "which tool?" turn that names none (and does not say none
  is needed); `retrieval: unknown tool` - a call to a tool that is not offered;
* `understanding: arguments unreadable` - an argument turn without a readable JSON block (T-FLAN),
  or an action input that is not JSON; `understanding: call rejected` - a call to an offered tool
  that the environment answered with an error (bad or missing arguments, failing SQL);
* `format: reply unreadable` - any other reply the protocol could not read (ReAct lines, the
  AgentBench dialect);
* `reasoning: wrong final answer` - every step readable and accepted, the answer wrong;
* `no final answer` - the step limit or the context ran out first.

    python bench/failure_turns.py out/study-cpu/seed-0/eval [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

CATEGORIES = ("retrieval: no tool named", "retrieval: unknown tool", "understanding: arguments unreadable",
              "understanding: call rejected", "format: reply unreadable", "reasoning: wrong final answer",
              "no final answer")


def first_fault(rec: dict[str, Any]) -> str:
    """The category of the first fault of a failed episode (see the module docstring)."""
    traj = rec["transcript"]
    offered = {t["name"] for t in traj.get("tools", [])}
    final = (traj.get("tags") or {}).get("final_tool")
    results = {m.get("tool_call_id"): m for m in traj["messages"] if m["role"] == "tool"}
    calls = [c for m in traj["messages"] if m["role"] == "assistant" for c in m.get("tool_calls", [])]
    call_iter = iter(calls)
    for action in rec.get("actions", []):
        kind = action.get("kind")
        if kind == "unparseable":
            error = str(action.get("error") or "")
            if "names no tool" in error:
                return "retrieval: no tool named"
            if "argument" in error or "JSON" in error or "json" in error:
                return "understanding: arguments unreadable"
            return "format: reply unreadable"
        if kind == "context_limit":
            return "no final answer"
        if kind == "call":
            call = next(call_iter, None)
            if call is None or call["name"] == final:
                continue
            if call["name"] not in offered:
                return "retrieval: unknown tool"
            result = results.get(call.get("id"))
            if result is not None and (result.get("metadata") or {}).get("error"):
                return "understanding: call rejected"
    reason = str((rec.get("verdict") or {}).get("reason") or "")
    return "no final answer" if "no final answer" in reason or not reason else "reasoning: wrong final answer"


def analyse(logs: list[Path]) -> dict[str, dict[str, Any]]:
    """Per (run, env, protocol): episodes, failures, and failures per first-fault category."""
    from agentflan.eval.runlog import read_log

    out: dict[str, dict[str, Any]] = {}
    for log in logs:
        recs = [r for r in read_log(log) if r.get("suite", "env") == "env" and r.get("verdict") is not None]
        if not recs:
            continue
        key = f"{log.parent.parent.name} / {recs[0]['env']} / {recs[0]['protocol']}"
        faults: Counter[str] = Counter()
        by_kind: dict[str, Counter[str]] = defaultdict(Counter)
        for r in recs:
            if r["verdict"]["success"]:
                continue
            f = first_fault(r)
            faults[f] += 1
            by_kind[str(r.get("kind"))][f] += 1
        out[key] = {"episodes": len(recs), "failed": sum(faults.values()), "faults": dict(faults),
                    "by_kind": {k: dict(v) for k, v in sorted(by_kind.items())}}
    return out


def table(result: dict[str, dict[str, Any]]) -> str:
    head = ["run / env / protocol", "episodes", "failed", *CATEGORIES]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, r in result.items():
        rows.append(f"| {key} | {r['episodes']} | {r['failed']} | "
                    + " | ".join(str(r["faults"].get(c, 0)) for c in CATEGORIES) + " |")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from agentflan.cli.evaluate import find_logs

    result = analyse(find_logs(tuple(args.paths)))
    if not result:
        sys.exit("no environment episodes in those logs")
    print(json.dumps(result, indent=1) if args.json else table(result))


if __name__ == "__main__":
    main()
