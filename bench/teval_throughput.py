"""T-Eval scoring throughput: predictions per second, agentflan against T-Eval's own evaluators, same files.

One predictions file per T-Eval data file present (`plan_json_v1`, `plan_str_v1`, `review_str_v1`
are the public ones `bench/fetch_teval.py` copies; any other `<variant>_v*.json` found is used too),
as T-Eval's `test.py` writes it: a third of the items the gold answer as a reply
(`teval.gold_reply`), a third a perturbation of it, a third a reply of an odd shape (fenced,
Python-literal or truncated JSON, prose, garbage; the generators of `bench/teval_agreement.py`).
Replies on which T-Eval's `evaluate()` raises, which stops its run (a `FinishAction`-only plan,
lone surrogates), are left out. Each file is scored

* by agentflan: `agentflan eval teval --predictions`'s scoring path in process (`teval.load_file`,
  `teval.record` per item, `teval.summarize`; the log is not written);
* by T-Eval's evaluator, unmodified (`bench/teval_official.py`: `evaluate()`), in the Python given
  by `--teval-python` (T-Eval's dependencies).

Plan scoring embeds names and arguments with `all-mpnet-base-v2` (`teval.model_dir()`): both sides
load the model before timing and embed every text themselves (no shared table), after one untimed call to it. CPU time (this
machine is shared), the least of `--repeat` scorings. The table goes to docs/benchmarks.md
(`--no-write`: print only).

    python bench/teval_throughput.py --teval-python /work/venv-teval/bin/python \\
        --teval-src /work/teval-src [--items 60] [--repeat 2]
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT), str(ROOT / "bench")]

import _doc  # noqa: E402
from teval_agreement import GARBAGE, plan_predictions, review_predictions  # noqa: E402

from agentflan.eval import teval  # noqa: E402

# what stops T-Eval's whole run (teval.py's docstring): never in a throughput file
ODD = [g for g in GARBAGE if not any("\ud800" <= c <= "\udfff" for c in g)]


def _raises_in_teval(var: str, reply: str) -> bool:
    if any("\ud800" <= c <= "\udfff" for c in reply):
        return True
    if var.startswith("plan_"):
        try:
            steps = teval.format_load(reply, "[", "]")
        except Exception:
            return False
        return isinstance(steps, list) and bool(steps) and all(
            isinstance(s, dict) and s.get("name") == "FinishAction" for s in steps)
    return False


def predictions(var: str, items: list[tuple[str, dict[str, Any]]], seed: int) -> dict[str, dict[str, Any]]:
    """The predictions file's object: gold, perturbed, odd shape, by turns."""
    rng = random.Random(seed)
    out = {}
    for k, (key, datum) in enumerate(items):
        gold = teval.gold_reply(var, datum)
        if var.startswith("plan_"):
            made = plan_predictions(var, datum, rng)[:-3]  # its last three are garbage
        elif var == "review_str":
            made = review_predictions(datum, rng)[:-3]
        else:
            made = [gold[: len(gold) // 2], gold.upper()]
        made = [p for p in made if not _raises_in_teval(var, p)]
        if k % 3 == 0 or not made:
            reply = gold
        elif k % 3 == 1:
            reply = made[(k * 7) % len(made)]
        else:
            odd = [*made[len(made) // 2:], *ODD]
            reply = odd[(k * 7) % len(odd)]
        out[key] = {**datum, "prediction": reply}
    return out


def ours(path: Path) -> dict[str, Any]:
    """`agentflan eval teval --predictions PATH` without writing its log."""
    var, items = teval.load_file(path, predictions=True)
    records = [teval.record(var, key, datum, datum["prediction"], agent="predictions") for key, datum in items]
    return teval.summarize(records)


def best_cpu(fn: Any, repeat: int) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.process_time()
        result = fn()
        best = min(best, time.process_time() - start)
    return best, result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teval-python", required=True, help="a Python with T-Eval's dependencies")
    ap.add_argument("--teval-src", type=Path, required=True, help="a T-Eval checkout (unmodified)")
    ap.add_argument("--data", type=Path, default=teval.data_dir())
    ap.add_argument("--model", type=Path, default=teval.model_dir())
    ap.add_argument("--items", type=int, default=0,
                    help="items per file that needs the sentence model (plan): the first N (0: all)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    embedder = teval.SentenceEmbedder(args.model)  # loaded before timing, as T-Eval's is
    embedder.similarity(["warm up"], ["the model"])  # its first call's one-time setup, untimed (both sides)
    teval.set_embedder(embedder)
    rows = ["| file | predictions | agentflan pred/s | T-Eval's evaluator pred/s | agentflan / T-Eval | "
            "largest aggregate difference |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for data_file in sorted(args.data.glob("*_v*.json")):
            var, items = teval.load_file(data_file)
            if args.items and var.startswith("plan_"):
                items = items[: args.items]
            path = Path(tmp) / f"{var}_predictions.json"
            path.write_text(json.dumps(predictions(var, items, args.seed)), encoding="utf-8")
            ours_s, summary = best_cpu(functools.partial(ours, path), args.repeat)
            out = Path(tmp) / "official.json"
            subprocess.run([args.teval_python, str(ROOT / "bench" / "teval_official.py"), "--teval-src",
                            str(args.teval_src), "--variant", var, "--predictions", str(path), "--model",
                            str(args.model), "--repeat", str(args.repeat), "--out", str(out)], check=True)
            got = json.loads(out.read_text(encoding="utf-8"))
            theirs_s = got["seconds"]
            diffs = [abs(float(v) - got["metrics"][m]) for m, v in summary["metrics"].items()
                     if v is not None and m in got["metrics"]]
            n = len(items)
            rows.append(f"| `{data_file.name}` | {n} | {n / ours_s:,.1f} | {n / theirs_s:,.1f} | "
                        f"{theirs_s / ours_s:.2f} | {max(diffs, default=0.0):.4f} |")
            print(rows[-1], flush=True)
    _doc.publish("T-Eval scoring throughput: agentflan vs T-Eval's evaluators",
                 "`nice -n 10 python bench/teval_throughput.py --teval-python /work/venv-teval/bin/python "
                 f"--teval-src T-EVAL --items {args.items} --repeat {args.repeat}` on "
                 f"{_doc.machine('shared; T-Eval (open-compass/T-Eval, unmodified) in its own venv')}. Predictions "
                 "per CPU second (the least of the repeats), one predictions file per T-Eval data file"
                 + (f" (plan files: their first {args.items} items, to keep the run short on this machine; review: "
                    "every item)" if args.items else " (every item)")
                 + ", a third gold, a third perturbed, a third of odd shape (replies that stop T-Eval's run left "
                 "out). agentflan: `eval teval --predictions`'s scoring path in process (read, judge, log record, "
                 "summary; no file written); T-Eval: its evaluator's `evaluate()` (`bench/teval_official.py`). "
                 "Plan files embed with `all-mpnet-base-v2`, loaded before timing on both sides, each side "
                 "embedding its own texts: on plan the model dominates both figures. The last column is the "
                 "largest difference between the two sides' aggregate metrics (agentflan rounds to 4 decimals).",
                 "\n".join(rows), write=not args.no_write)


if __name__ == "__main__":
    main()
