"""BFCL scoring throughput: predictions per second, agentflan against BFCL's own runner, same files.

One predictions file per single-turn category (every item once, as a model's run writes it: a
third the possible answer as is, a third changed in one known way, a third a reply of an odd shape;
`tests/bfcl_perturb.py`), scored

* by agentflan: `eval.bfcl.score_predictions` (the file read, every reply decoded and judged by
  agentflan's rules and by BFCL's, a log record built per item, as `agentflan eval bfcl
  --predictions` does before writing), and the verdicts alone (`prediction_verdict` per line);
* by BFCL's runner (`bench/bfcl_official.py`: the file read, `_evaluate_single_ast_entry` /
  `_evaluate_single_relevance_entry` per line with the prompting handlers' decoder), in a Python
  that has `bfcl-eval` (see that script's docstring).

CPU time (this machine is shared), the least of `--repeat` scorings; question files loaded before
timing on both sides. The table goes to docs/benchmarks.md (`--no-write`: print only).

    python bench/bfcl_throughput.py --bfcl-python /work/venv-bfcl/bin/python [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "bench")]

import _doc  # noqa: E402
from tests.bfcl_perturb import cases, exotic_cases  # noqa: E402

from agentflan.eval import bfcl  # noqa: E402
from agentflan.eval.suites import BFCL_ALL_FILES, bfcl_data_dir  # noqa: E402


def predictions(items: list[bfcl.BFCLItem]) -> list[dict[str, str]]:
    """One reply per item: the first perturbed case (the gold when there is one), another perturbed
    case, or an odd-shape reply, by turns."""
    out = []
    for k, it in enumerate(items):
        perturbed = [c.result for c in cases([it])]  # none where no call is certain to pass
        if k % 3 == 2 or not perturbed:
            odd = [r for _, _, r in exotic_cases([it], every=1)]
            out.append({"id": it.id, "result": odd[(k * 7) % len(odd)]})
            continue
        out.append({"id": it.id, "result": perturbed[0 if k % 3 == 0 else (k * 7) % len(perturbed)]})
    return out


def verdicts(preds: list[dict[str, str]], by_id: dict[str, bfcl.BFCLItem]) -> list[dict[str, object]]:
    return [bfcl.prediction_verdict(by_id[p["id"]], p["result"]) for p in preds]


def best_cpu(fn: object, repeat: int) -> float:
    from agentflan.formats import pycall

    best = float("inf")
    for _ in range(repeat):
        pycall._read.cache_clear()  # each scoring reads every reply afresh, as a first run does
        start = time.process_time()
        fn()  # type: ignore[operator]
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bfcl-python", required=True, help="a Python that imports bfcl_eval (bench/bfcl_official.py)")
    ap.add_argument("--data", type=Path, default=bfcl_data_dir())
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    rows = ["| category | predictions | agentflan `score_predictions` pred/s | agentflan verdicts only pred/s | "
            "BFCL's runner pred/s | agentflan / BFCL | verdicts equal (BFCL's rule) |", "|---|---|---|---|---|---|---|"]
    totals = [0, 0.0, 0.0, 0.0]
    with tempfile.TemporaryDirectory() as tmp:
        for name in BFCL_ALL_FILES:
            if not (args.data / name).is_file():
                continue
            items = bfcl.load_items(args.data / name)
            preds = predictions(items)
            path = Path(tmp) / f"{name}.predictions.jsonl"
            path.write_text("".join(json.dumps(p) + "\n" for p in preds), encoding="utf-8")
            by_id = {it.id: it for it in items}
            ours_s = best_cpu(functools.partial(bfcl.score_predictions, path, items), args.repeat)
            verdict_s = best_cpu(functools.partial(verdicts, preds, by_id), args.repeat)
            out = Path(tmp) / "verdicts.json"
            subprocess.run([args.bfcl_python, str(ROOT / "bench" / "bfcl_official.py"), "--data", str(args.data),
                            "--predictions", str(path), "--out", str(out), "--repeat", str(args.repeat)], check=True)
            got = json.loads(out.read_text(encoding="utf-8"))
            theirs_s = got["seconds"]
            ours = [bfcl.prediction_verdict(by_id[p["id"]], p["result"])["official_valid"] for p in preds]
            equal = sum(o == t or (o is None and t == "raises") for o, t in zip(ours, got["verdicts"], strict=True))
            n = len(preds)
            totals = [totals[0] + n, totals[1] + ours_s, totals[2] + verdict_s, totals[3] + theirs_s]
            rows.append(f"| {bfcl.category_of(items[0].id)} | {n} | {n / ours_s:,.0f} | {n / verdict_s:,.0f} | "
                        f"{n / theirs_s:,.0f} | {theirs_s / ours_s:.2f} | {equal}/{n} |")
    n, ours_s, verdict_s, theirs_s = totals
    rows.append(f"| **all** | {n} | {n / ours_s:,.0f} | {n / verdict_s:,.0f} | {n / theirs_s:,.0f} | "
                f"{theirs_s / ours_s:.2f} | |")
    _doc.publish("BFCL scoring throughput: agentflan vs BFCL's runner",
                 "`python bench/bfcl_throughput.py --bfcl-python PY --repeat "
                 f"{args.repeat}` on {_doc.machine('bfcl-eval 2026.3.23 in its own venv')}. Predictions per CPU "
                 "second (the least of the repeats; the machine is shared), one predictions file per category, "
                 "every item once (a third gold, a third perturbed, a third of odd shape). agentflan "
                 "`score_predictions` also builds each item's log record; *verdicts only* is "
                 "`prediction_verdict` per line. Both sides decode every reply; agentflan also gives BFCL's verdict "
                 "(`official_valid`), which the last column compares with BFCL's runner.",
                 "\n".join(rows), write=not args.no_write)


if __name__ == "__main__":
    main()
