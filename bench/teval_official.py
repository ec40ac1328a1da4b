"""T-Eval's own scores for a predictions file: its evaluator's `evaluate()`, run unmodified, timed.

Runs in a Python with T-Eval's dependencies (mmengine, sentence-transformers, networkx, ...; see
`bench/teval_agreement.py`), with a T-Eval checkout's `teval` package imported from `--teval-src`:

    /work/venv-teval/bin/python bench/teval_official.py --teval-src T-EVAL --variant plan_json \\
        --predictions P.json --model ALL-MPNET-BASE-V2 --out R.json [--repeat 3]

The evaluator is built (which loads the sentence model, for plan) before timing; the timed part is
`evaluate()` (after one untimed call to the sentence model): the file read, every reply parsed and scored, the means taken. Writes
`{"seconds": the least CPU time of --repeat evaluations, "metrics": evaluate()'s result}`.
`bench/teval_throughput.py` calls it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

EVALUATORS = {"instruct": "InstructEvaluator", "plan_json": "PlanningEvaluator", "plan_str": "PlanningEvaluator",
              "review_str": "ReviewEvaluator", "reason_str": "ReasonRetrieveUnderstandEvaluator",
              "retrieve_str": "ReasonRetrieveUnderstandEvaluator",
              "understand_str": "ReasonRetrieveUnderstandEvaluator", "rru_json": "ReasonRetrieveUnderstandEvaluator"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teval-src", type=Path, required=True)
    ap.add_argument("--variant", required=True, choices=sorted(EVALUATORS))
    ap.add_argument("--predictions", type=Path, required=True)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(args.teval_src))
    import teval.evaluators as official  # type: ignore[import-not-found]  # T-Eval's, unmodified

    var = args.variant
    eval_type = {"reason_str": "reason", "retrieve_str": "retrieve", "understand_str": "understand",
                 "rru_json": "rru"}.get(var, var)
    prompt_type = "json" if var in ("rru_json", "plan_json", "instruct") else "str"
    with contextlib.redirect_stdout(io.StringIO()):  # T-Eval prints as it goes
        ev = getattr(official, EVALUATORS[var])(str(args.predictions), default_prompt_type=prompt_type,
                                                eval_type=eval_type, bert_score_model=str(args.model))
        if hasattr(ev, "sentence_model"):  # its first call's one-time setup, untimed (both sides)
            ev.sentence_model.encode(["warm up", "the model"], convert_to_tensor=True)
    best, metrics = float("inf"), None
    for _ in range(args.repeat):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            start = time.process_time()
            metrics = ev.evaluate()
            best = min(best, time.process_time() - start)
    args.out.write_text(json.dumps({"seconds": best, "metrics": {k: float(v) for k, v in metrics.items()}}),
                        encoding="utf-8")


if __name__ == "__main__":
    main()
