"""Agreement of agentflan's BFCL multi-turn verdicts with BFCL's own multi-turn checker, run unmodified.

For every entry of the four multi-turn categories (long context included), model-style results
(per turn, per step, a reply in BFCL's Python syntax) built from its ground truth (`variants`):

* `gold` (each turn's calls in one reply), `gold_split` (one call per reply), `gold_positional`
  (the ground-truth text as written, positional arguments and all: BFCL's decoder drops them);
* `drop` (one call left out), `reorder` (a turn's calls reversed), `extra` (a call repeated),
  `wrong_arg` (one argument value changed), `unknown_call` (a call of a function no backend has),
  `empty_turn` (a turn answered in prose), `early` (a turn's calls made in the turn before),
  `late` (made in the turn after), `none_due` (the next turn's calls made in a turn whose ground
  truth is empty), `prose_steps` (prose and a broken call before the calls), `truncated` (the last
  turn missing: force-terminated).

Each is scored by agentflan (`eval.bfcl_multi.result_calls` + `check`) and by BFCL's runner
(`bench/bfcl_multi_official.py`, in a Python that has `bfcl-eval`); reported: agreement on the
verdict and on the failing rule, per variant and per category, every disagreement listed.

    python bench/fetch_bfcl.py
    python bench/bfcl_multi_agreement.py --bfcl-python /work/venv-bfcl/bin/python [--bfcl-pythonpath DIR] \\
        [--report bench/bfcl_multi_agreement.md]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "bench")]

from agentflan.eval import bfcl_multi as bm  # noqa: E402
from agentflan.formats.pycall import render_calls  # noqa: E402
from agentflan.schema import ToolCall  # noqa: E402


def keyword_calls(entry: bm.MultiEntry, backends: bm.Backends) -> list[list[ToolCall]]:
    """The ground truth per turn as calls with named arguments (as the gold player states them)."""
    from agentflan.schema import AssistantMessage

    gold, ends = bm.gold_transcript(entry, backends, one_call_per_step=False)
    starts = [0, *ends[:-1]]
    return [[c for m in gold.messages[a:b] if isinstance(m, AssistantMessage) for c in m.tool_calls
             if c.name != bm.FINAL_TOOL] for a, b in zip(starts, ends, strict=True)]


def reply(calls: list[ToolCall]) -> str:
    return render_calls(calls)


def _changed(v: Any) -> Any:
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + 1
    if isinstance(v, float):
        return v + 1.5
    if isinstance(v, str):
        return v + "_x"
    if isinstance(v, list):
        return [*v, v[0]] if v else ["x"]
    return "x"


def variants(entry: bm.MultiEntry, turns: list[list[ToolCall]]) -> dict[str, list[list[str]]]:
    """Model-style results for one entry (see the module docstring)."""
    rng = random.Random(zlib.crc32(entry.id.encode()))
    n = len(turns)
    full = [k for k in range(n) if turns[k]]
    empty = [k for k in range(n) if not entry.ground_truth[k]]

    def base() -> list[list[list[ToolCall]]]:
        return [[list(t)] if t else [] for t in turns]

    def text(res: list[list[list[ToolCall]]]) -> list[list[str]]:
        return [[reply(s) for s in turn] + ["Done."] for turn in res]

    out: dict[str, list[list[str]]] = {}
    out["gold"] = text(base())
    out["gold_split"] = [[reply([c]) for c in t] + ["Done."] for t in turns]
    out["gold_positional"] = [(["[" + ", ".join(g) + "]"] if g else []) + ["Done."] for g in entry.ground_truth]
    if full:
        k = rng.choice(full)
        res = base()
        calls = list(turns[k])
        calls.pop(rng.randrange(len(calls)))
        res[k] = [calls] if calls else []
        out["drop"] = text(res)
        res = base()
        res[k] = [[*turns[k], turns[k][rng.randrange(len(turns[k]))]]]
        out["extra"] = text(res)
        res = base()
        res[k] = [[*turns[k], ToolCall(id="u", name="not_a_backend_function", arguments={"x": 1})]]
        out["unknown_call"] = text(res)
        res = base()
        res[k] = []
        out["empty_turn"] = [(["I cannot help with that."] if j == k else []) + t for j, t in enumerate(text(res))]
        with_args = [(i, c) for i, c in enumerate(turns[k]) if c.arguments]
        if with_args:
            i, c = rng.choice(with_args)
            name = rng.choice(sorted(c.arguments))
            res = base()
            calls = list(turns[k])
            calls[i] = c.model_copy(update={"arguments": {**c.arguments, name: _changed(c.arguments[name])}})
            res[k] = [calls]
            out["wrong_arg"] = text(res)
        steps = ["Let me think about it.", reply(turns[k][:1]), "[broken(", *([reply(turns[k][1:])] if turns[k][1:] else []),
                 "Done."]
        out["prose_steps"] = [steps if j == k else t for j, t in enumerate(out["gold"])]
        if k > 0:
            res = base()
            res[k - 1] = res[k - 1] + [list(turns[k])]
            res[k] = []
            out["early"] = text(res)
        if k + 1 < n:
            res = base()
            res[k + 1] = [list(turns[k])] + res[k + 1]
            res[k] = []
            out["late"] = text(res)
    multi = [k for k in full if len(turns[k]) > 1]
    if multi:
        k = rng.choice(multi)
        res = base()
        res[k] = [list(reversed(turns[k]))]
        out["reorder"] = text(res)
    if empty:
        k = empty[0]
        nxt = next((j for j in range(k + 1, n) if turns[j]), None)
        if nxt is not None:
            res = base()
            res[k] = [list(turns[nxt])]
            out["none_due"] = text(res)
    out["truncated"] = out["gold"][:-1]
    return out


def official_verdicts(python: str, data: Path, cases: list[dict[str, Any]],
                      pythonpath: str | None = None) -> tuple[list[Any], float]:
    import os

    env = {**os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {})}
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "cases.jsonl", Path(tmp) / "verdicts.json"
        path.write_text("".join(json.dumps(c) + "\n" for c in cases), encoding="utf-8")
        subprocess.run([python, str(ROOT / "bench" / "bfcl_multi_official.py"), "--data", str(data), "--cases",
                        str(path), "--out", str(out)], check=True, env=env)
        got = json.loads(out.read_text(encoding="utf-8"))
    return got["verdicts"], got["seconds"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bfcl-python", required=True, help="a Python that imports bfcl_eval")
    ap.add_argument("--bfcl-pythonpath", help="PYTHONPATH for that Python: bfcl-eval's `mpmath==1.3.0` (the MathAPI "
                    "backend) where its venv lacks it, e.g. from `pip install --target DIR mpmath==1.3.0`")
    ap.add_argument("--data", type=Path, default=None, help="BFCL's data (default: where bench/fetch_bfcl.py puts it)")
    ap.add_argument("-n", type=int, default=None, help="entries per category (default: all)")
    ap.add_argument("--report", type=Path, help="write the report (markdown) here")
    ap.add_argument("--publish", action="store_true", help="append the throughput table to docs/benchmarks.md")
    args = ap.parse_args()

    source = bm.locate(args.data / "BFCL_v4_multi_turn_base.json" if args.data else None)
    backends = bm.Backends(source.root)
    entries = []
    for c in bm.CATEGORIES:
        entries += bm.load_entries(source, [source.question_file(c)], args.n)
    cases: list[dict[str, Any]] = []
    for e in entries:
        for name, result in variants(e, keyword_calls(e, backends)).items():
            cases.append({"case": name, "id": e.id, "result": result})
    by_id = {e.id: e for e in entries}
    start = time.process_time()
    ours = []
    for c in cases:
        v = bm.check(by_id[c["id"]], bm.result_calls(c["result"]), backends)
        ours.append({"valid": v["valid"], "error_type": v["error_type"]})
    our_s = time.process_time() - start
    theirs, their_s = official_verdicts(args.bfcl_python, source.data, cases, args.bfcl_pythonpath)

    per_variant: dict[str, Counter[str]] = defaultdict(Counter)
    per_cat: dict[str, Counter[str]] = defaultdict(Counter)
    diffs = []
    for c, o, t in zip(cases, ours, theirs, strict=True):
        cat = bm.category_of(c["id"])
        if isinstance(t, str):
            per_variant[c["case"]]["raises"] += 1
            per_cat[cat]["raises"] += 1
            diffs.append((c["case"], c["id"], o, t))
            continue
        same_valid = o["valid"] == t["valid"]
        same_rule = same_valid and o["error_type"] == t["error_type"]
        for counter in (per_variant[c["case"]], per_cat[cat]):
            counter["n"] += 1
            counter["valid_agree"] += same_valid
            counter["rule_agree"] += same_rule
            counter["official_valid"] += t["valid"]
        if not same_rule:
            diffs.append((c["case"], c["id"], o, t))

    def rows(groups: dict[str, Counter[str]]) -> list[str]:
        out = ["| | cases | BFCL passes | verdict agrees | failing rule agrees | BFCL raises |", "|---|---|---|---|---|---|"]
        for name, k in groups.items():
            out.append(f"| {name} | {k['n']} | {k['official_valid']} | {k['valid_agree']} | {k['rule_agree']} | "
                       f"{k['raises']} |")
        tot = Counter[str]()
        for k in groups.values():
            tot.update(k)
        out.append(f"| **all** | {tot['n']} | {tot['official_valid']} | {tot['valid_agree']} "
                   f"({100 * tot['valid_agree'] / max(tot['n'], 1):.2f}%) | {tot['rule_agree']} "
                   f"({100 * tot['rule_agree'] / max(tot['n'], 1):.2f}%) | {tot['raises']} |")
        return out

    lines = [f"BFCL multi-turn agreement: {len(entries)} entries, {len(cases)} results "
             f"(`python bench/bfcl_multi_agreement.py --bfcl-python ...{' -n ' + str(args.n) if args.n else ''}`; "
             f"bfcl-eval from {source.root}).", "",
             f"Scoring CPU time: agentflan {our_s:.1f} s, BFCL's runner {their_s:.1f} s "
             f"({len(cases) / max(our_s, 1e-9):.0f} and {len(cases) / max(their_s, 1e-9):.0f} results/s).", "",
             "Per variant:", "", *rows(dict(sorted(per_variant.items()))), "", "Per category:", "",
             *rows(dict(sorted(per_cat.items()))), "", f"Disagreements: {len(diffs)}", ""]
    for name, i, o, t in diffs[:50]:
        lines.append(f"- `{name}` `{i}`: agentflan {o}, BFCL {t}")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.report:
        args.report.write_text(text, encoding="utf-8")
    if args.publish:
        import _doc

        _doc.publish(
            "BFCL multi-turn scoring throughput: agentflan vs BFCL's runner",
            f"`python bench/bfcl_multi_agreement.py --bfcl-python PY --publish` on {_doc.machine('bfcl-eval 2026.3.23 in its own venv')}. "
            "Model-style results per CPU second over all 800 multi-turn entries (14 kinds of result per entry, "
            "bench/bfcl_multi_agreement.md): each side decodes every step reply, executes the calls on fresh backend "
            "instances beside the ground truth's and checks every turn. The machine is shared.",
            "| results | agentflan results/s | BFCL's runner results/s | agentflan / BFCL | verdict and failing rule equal |\n"
            "|---|---|---|---|---|\n"
            f"| {len(cases)} | {len(cases) / max(our_s, 1e-9):,.0f} | {len(cases) / max(their_s, 1e-9):,.0f} | "
            f"{their_s / max(our_s, 1e-9):.2f} | {sum(k['rule_agree'] for k in per_cat.values())}/{len(cases)} |\n")


if __name__ == "__main__":
    main()
