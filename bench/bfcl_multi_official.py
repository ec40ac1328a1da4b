"""BFCL's own multi-turn verdicts for model-style results: the `bfcl-eval` package's runner code, run
unmodified, in a Python where `bfcl-eval` is importable (see bench/bfcl_official.py for that venv).

Input: JSON lines `{"case": str, "id": entry id, "result": [[step reply, ...] per turn]}` (each step
reply a string in BFCL's Python syntax, as its prompting handlers record them). Each is scored by
`eval_runner._evaluate_single_multi_turn_entry` (decoding with BFCL's prompting decoder
`default_decode_execute_prompting`, then `multi_turn_checker`), the entry as BFCL's
`populate_test_cases_with_predefined_functions` leaves it. Every case is scored under a model name
of its own: BFCL keeps backend instances in its module's globals by model name and entry id.

    /work/venv-bfcl/bin/python bench/bfcl_multi_official.py --data DIR --cases C.jsonl --out V.json

writes `{"verdicts": [{"valid", "error_type"} | "raises" per case line], "seconds": scoring CPU time}`.
Only `bfcl_eval.constants.model_config` is replaced (it imports every model SDK; nothing here reads it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
import types
from pathlib import Path
from typing import Any


def _load(path: Path) -> dict[str, dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return {r["id"]: r for r in map(json.loads, filter(str.strip, f))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="BFCL's question files (possible_answer/ beside them)")
    ap.add_argument("--cases", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    stub = types.ModuleType("bfcl_eval.constants.model_config")
    stub.MODEL_CONFIG_MAPPING = {}  # type: ignore[attr-defined]
    sys.modules["bfcl_eval.constants.model_config"] = stub
    from bfcl_eval.eval_checker.eval_runner import _evaluate_single_multi_turn_entry
    from bfcl_eval.model_handler.utils import default_decode_execute_prompting
    from bfcl_eval.utils import populate_test_cases_with_predefined_functions

    class PromptingHandler:  # BFCL's OSSHandler.decode_execute, without the inference machinery
        def decode_execute(self, result: Any, has_tool_call_tag: bool) -> Any:
            return default_decode_execute_prompting(result, has_tool_call_tag)

    prompts: dict[str, dict[str, Any]] = {}
    answers: dict[str, dict[str, Any]] = {}
    for q in sorted(args.data.glob("BFCL_v4_multi_turn_*.json")):
        prompts.update(_load(q))
        answers.update(_load(args.data / "possible_answer" / q.name))
    populate_test_cases_with_predefined_functions(list(prompts.values()))
    cases = [json.loads(line) for line in args.cases.open(encoding="utf-8") if line.strip()]
    verdicts: list[Any] = []
    start = time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):  # backends print
        for k, c in enumerate(cases):
            entry = json.loads(json.dumps(prompts[c["id"]]))  # the runner deletes its "function"
            category = c["id"].rsplit("_", 1)[0]
            try:
                got = _evaluate_single_multi_turn_entry(PromptingHandler(), c["id"], c["result"],
                                                        answers[c["id"]]["ground_truth"], entry, f"case{k}", category)
                verdicts.append({"valid": bool(got["valid"]),
                                 "error_type": None if got["valid"] else got["error"]["error_type"]})
            except Exception as e:  # counted apart: BFCL's runner stops there
                verdicts.append(f"raises: {type(e).__name__}: {e}"[:300])
    args.out.write_text(json.dumps({"verdicts": verdicts, "seconds": time.process_time() - start}), encoding="utf-8")


if __name__ == "__main__":
    main()
