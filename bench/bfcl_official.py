"""BFCL's own verdicts for a predictions file: the `bfcl-eval` package's runner code, run unmodified.

Runs in a Python where `bfcl-eval` is importable (it is not an agentflan dependency: its full
dependency tree pulls every model SDK). A separate virtual environment is enough:

    python3 -m venv /work/venv-bfcl
    /work/venv-bfcl/bin/pip install --no-deps bfcl-eval==2026.3.23
    /work/venv-bfcl/bin/pip install tree_sitter==0.21.3 tree-sitter-java==0.21.0 \\
        tree-sitter-javascript==0.21.4 filelock==3.20.0 numpy==1.26.4 pandas overrides tqdm tenacity python-dotenv

Each prediction is scored by `eval_runner._evaluate_single_ast_entry` or
`_evaluate_single_relevance_entry`, with the decoder of BFCL's prompting (open-source) handlers
(`default_decode_ast_prompting`, what `OSSHandler.decode_ast` calls). Only
`bfcl_eval.constants.model_config` is replaced: it imports every model SDK, and the checker reads
one field of it (whether the model renames dots in function names: no).

    /work/venv-bfcl/bin/python bench/bfcl_official.py --data DIR --predictions P.jsonl --out V.json

writes `{"verdicts": [true | false | "raises" per prediction line], "seconds": scoring CPU time}`
(`--repeat N`: the least of N scorings, the file read each time)
(`raises`: BFCL's runner raised on that reply, which stops its run). `bench/bfcl_agreement.py`
and `bench/bfcl_throughput.py` call it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
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
    ap.add_argument("--predictions", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()

    stub = types.ModuleType("bfcl_eval.constants.model_config")
    stub.MODEL_CONFIG_MAPPING = type("AnyModel", (dict,), {  # type: ignore[attr-defined]
        "__missing__": lambda self, key: types.SimpleNamespace(underscore_to_dot=False)})()
    sys.modules["bfcl_eval.constants.model_config"] = stub
    from bfcl_eval.model_handler.utils import default_decode_ast_prompting

    class PromptingHandler:  # BFCL's OSSHandler.decode_ast, without the handler's inference machinery
        def decode_ast(self, result: Any, language: Any, has_tool_call_tag: bool) -> Any:
            return default_decode_ast_prompting(result, language, has_tool_call_tag)

    prompts: dict[str, dict[str, Any]] = {}
    answers: dict[str, dict[str, Any]] = {}
    for q in sorted(args.data.glob("BFCL_v4_*.json")):
        prompts.update(_load(q))
        if (args.data / "possible_answer" / q.name).is_file():
            answers.update(_load(args.data / "possible_answer" / q.name))
    handler = PromptingHandler()
    best = float("inf")
    for _ in range(args.repeat):
        start = time.process_time()
        verdicts = score(args.predictions, handler, prompts, answers)
        best = min(best, time.process_time() - start)
    args.out.write_text(json.dumps({"verdicts": verdicts, "seconds": best}), encoding="utf-8")


def score(path: Path, handler: Any, prompts: dict[str, Any], answers: dict[str, Any]) -> list[Any]:
    """BFCL's runner's verdict of every line of a predictions file."""
    from bfcl_eval.constants.enums import Language, ReturnFormat
    from bfcl_eval.eval_checker.eval_runner import _evaluate_single_ast_entry, _evaluate_single_relevance_entry

    preds = [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]
    verdicts: list[Any] = []
    # replies that BFCL's decoder evaluates may print: keep them out of this script's output
    with contextlib.redirect_stdout(io.StringIO()):
        for p in preds:
            category = re.sub(r"_[\d-]+$", "", p["id"])
            try:
                if "relevance" in category:
                    got = _evaluate_single_relevance_entry(handler, p["id"], p["result"], prompts[p["id"]], "stub",
                                                           category)
                else:
                    got = _evaluate_single_ast_entry(handler, p["id"], p["result"], answers[p["id"]]["ground_truth"],
                                                     prompts[p["id"]], "stub", category, Language.PYTHON,
                                                     ReturnFormat.PYTHON, False)
                verdicts.append(bool(got["valid"]))
            except Exception:
                verdicts.append("raises")
    return verdicts


if __name__ == "__main__":
    main()
