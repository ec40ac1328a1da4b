"""Agreement of agentflan's BFCL verdicts with BFCL's own runner, run unmodified, on every single-turn
category agentflan scores (live ones included).

The predictions: for every item of every fetched category, (a) its possible answer changed in one
known way each (`tests/bfcl_perturb.cases`: wrong values, names, counts, types, orders, fences,
truncations, prose) and (b) replies of odd shapes (`tests/bfcl_perturb.exotic_cases`: leading
tabs and Unicode spaces, parenthesized and dotted calls, bytes, complex numbers, lone surrogates,
huge integers, arithmetic, calls and names inside arguments, `**kwargs`, positional arguments,
sets, lambdas, subscripts, nested calls, JSON, tags, prose). Each is scored by agentflan
(`eval.bfcl.prediction_verdict`: `valid`, its own verdict, and `official_valid`, BFCL's verdict
as agentflan derives it) and by BFCL's runner (`bench/bfcl_official.py`, in a Python that has
`bfcl-eval`; see its docstring).

Reported: the agreement of `official_valid` with BFCL's verdict (replies whose BFCL verdict
agentflan leaves undetermined, and replies on which BFCL's runner raises, counted apart); and
agentflan's own verdict against BFCL's, every difference named by its deliberate rule
(`eval.bfcl.DIFFERENCES`) or counted as unexplained.

    python bench/fetch_bfcl.py                      # BFCL's data, into ~/.cache/agentflan/bfcl
    python bench/bfcl_agreement.py --bfcl-python /work/venv-bfcl/bin/python [--report bench/bfcl_agreement.md]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.bfcl_perturb import cases, exotic_cases  # noqa: E402

from agentflan.eval import bfcl  # noqa: E402
from agentflan.eval.suites import BFCL_ALL_FILES, bfcl_data_dir  # noqa: E402


def official_verdicts(python: str, data: Path, replies: list[tuple[str, str]]) -> tuple[list[Any], float]:
    """BFCL's runner's verdicts for (item id, reply) pairs, and its scoring time."""
    with tempfile.TemporaryDirectory() as tmp:
        preds, out = Path(tmp) / "predictions.jsonl", Path(tmp) / "verdicts.json"
        preds.write_text("".join(json.dumps({"id": i, "result": r}) + "\n" for i, r in replies), encoding="utf-8")
        subprocess.run([python, str(ROOT / "bench" / "bfcl_official.py"), "--data", str(data), "--predictions",
                        str(preds), "--out", str(out)], check=True)
        got = json.loads(out.read_text(encoding="utf-8"))
    return got["verdicts"], got["seconds"]


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.2f}" if b else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bfcl-python", required=True, help="a Python that imports bfcl_eval (bench/bfcl_official.py)")
    ap.add_argument("--data", type=Path, default=bfcl_data_dir())
    ap.add_argument("--every", type=int, default=4, help="odd-shape replies: every Nth change of each item")
    ap.add_argument("--report", type=Path, help="also write the report (Markdown) here")
    args = ap.parse_args()

    files = [args.data / f for f in BFCL_ALL_FILES if (args.data / f).is_file()]
    items = [it for f in files for it in bfcl.load_items(f)]
    by_id = {it.id: it for it in items}
    rows = [(c.item_id, "perturbed:" + c.change, c.result) for c in cases(items)]
    rows += [(i, "odd:" + ch, r) for i, ch, r in exotic_cases(items, args.every)]
    start = time.process_time()
    ours = [bfcl.prediction_verdict(by_id[i], r) for i, _, r in rows]
    our_s = time.process_time() - start
    theirs, their_s = official_verdicts(args.bfcl_python, args.data, [(i, r) for i, _, r in rows])

    per_cat: dict[str, Counter[str]] = defaultdict(Counter)
    wrong: list[tuple[str, str, str, Any, Any]] = []
    for (item_id, change, reply), v, off in zip(rows, ours, theirs, strict=True):
        c = per_cat[by_id[item_id].category]
        c["cases"] += 1
        if off == "raises":  # BFCL's run would stop: agentflan should leave the verdict undetermined
            c["bfcl_raises"] += 1
            c["agree_all"] += v["official_valid"] is None
            continue
        if v["official_valid"] is None:
            c["undetermined"] += 1
            continue
        c["compared"] += 1
        c["agree"] += v["official_valid"] == off
        c["agree_all"] += v["official_valid"] == off
        if v["official_valid"] != off:
            wrong.append((item_id, change, reply, v["official_valid"], off))
        if bool(v["valid"]) == off:
            c["same_as_ours"] += 1
        elif v["official_valid"] == off:
            c["deliberate:" + str(v.get("difference", "other"))] += 1
        else:
            c["unexplained"] += 1
    total: Counter[str] = sum(per_cat.values(), Counter())
    diffs = sorted({k for c in per_cat.values() for k in c if k.startswith("deliberate:")})
    head = ["category", "replies", "BFCL's rule: agree, all replies %", "BFCL gives a verdict",
            "BFCL's rule: agree %", "agentflan undetermined", "BFCL raises", "agentflan's verdict = BFCL's %",
            "= BFCL's, deliberate differences apart %", *[f"differ: {d.split(':', 1)[1]}" for d in diffs],
            "unexplained"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cat, c in [*sorted(per_cat.items()), ("**all**", total)]:
        deliberate = sum(c[d] for d in diffs)
        lines.append("| " + " | ".join([
            cat, str(c["cases"]), pct(c["agree_all"], c["cases"]), str(c["compared"] + c["undetermined"]),
            pct(c["agree"], c["compared"] + c["undetermined"]), str(c["undetermined"]), str(c["bfcl_raises"]),
            pct(c["same_as_ours"], c["compared"]), pct(c["same_as_ours"], c["compared"] - deliberate),
            *[str(c[d]) for d in diffs], str(c["unexplained"])]) + " |")
    kinds = Counter(ch.split(":")[0] + ":" + ch.split(":")[1] for _, ch, _ in rows)
    report = (f"BFCL single-turn agreement: {len(rows)} replies over {len(items)} items of {len(files)} categories "
              f"({len(kinds)} kinds of change); BFCL's runner from bfcl-eval (unmodified, `bench/bfcl_official.py`).\n\n"
              + "\n".join(lines) + "\n\n"
              "*Agree, all replies*: agentflan's `official_valid` equals BFCL's verdict, or is undetermined where "
              "BFCL's runner raises (which stops its run). *Agree*: over the replies BFCL gives a verdict for, "
              "agentflan's undetermined ones counted as disagreements. *agentflan's verdict* (`valid`) against "
              "BFCL's: every difference is one of the deliberate rules of `eval.bfcl.DIFFERENCES` "
              "(docs/eval.md) or *unexplained*.\n\n"
              f"Scoring CPU time: agentflan {our_s:.1f} s, BFCL's runner {their_s:.1f} s.\n")
    if wrong:
        report += "\nDisagreements of `official_valid` with BFCL (first 20):\n\n" + "\n".join(
            f"- `{i}` {ch}: ours {o}, BFCL {b}: `{r[:100]!r}`" for i, ch, r, o, b in wrong[:20]) + "\n"
    print(report)
    if args.report:
        args.report.write_text(
            "# BFCL agreement report\n\nWritten by `python bench/bfcl_agreement.py --bfcl-python PY --report "
            f"{args.report.name}` ({time.strftime('%Y-%m-%d')}).\n\n" + report, encoding="utf-8")


if __name__ == "__main__":
    main()
