"""Agreement with BFCL's checker on its public data: thousands of perturbed predictions of the simple,
multiple, parallel and irrelevance files, against verdicts derived by reading BFCL's checker
(`tests/bfcl_perturb.py`), and, when its source was fetched, against BFCL's own code run unmodified.

BFCL's data is not in the repository: `python bench/fetch_bfcl.py` fetches it from the bfcl-eval
package on PyPI (Apache-2.0) into $AGENTFLAN_BFCL_DATA (default ~/.cache/agentflan/bfcl). Without
it these tests skip, saying so.
"""

from __future__ import annotations

import ast
import re
import sys
import types
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agentflan.eval import bfcl
from agentflan.eval.suites import BFCL_FILES, bfcl_data_dir
from tests.bfcl_perturb import cases

MIN_CASES = 1000


@pytest.fixture(scope="module")
def data() -> Path:
    d = bfcl_data_dir()
    if not all((d / f).is_file() for f in BFCL_FILES):
        pytest.skip(f"BFCL data not fetched into {d}: run `python bench/fetch_bfcl.py` (PyPI: bfcl-eval)")
    return d


@pytest.fixture(scope="module")
def items(data):
    return {it.id: it for f in BFCL_FILES for it in bfcl.load_items(data / f)}


@pytest.fixture(scope="module")
def all_cases(items):
    return cases(list(items.values()))


def test_agreement_with_derived_verdicts(items, all_cases):
    assert len(all_cases) >= MIN_CASES
    by_file = Counter(items[c.item_id].category for c in all_cases)
    assert set(by_file) == {"simple_python", "multiple", "parallel", "irrelevance"}, by_file
    assert len({c.item_id for c in all_cases}) >= 0.9 * len(items)  # nearly every item is perturbed
    wrong = []
    for c in all_cases:
        v = bfcl.prediction_verdict(items[c.item_id], c.result)
        official = v.get("official_valid", v["valid"])
        if v["valid"] != c.valid or official != c.official:
            wrong.append((c.item_id, c.change, c.result[:120], v["valid"], v["error_type"]))
    assert not wrong, f"{len(wrong)} of {len(all_cases)} disagree, e.g. {wrong[:5]}"
    changes = Counter(c.change for c in all_cases)
    assert min(changes.values()) >= 5 and changes["gold"] >= 700, changes


def official_checker(data: Path) -> Any:
    """BFCL's own decoder and checker from its fetched source, run unmodified: `ast_checker.py` with
    its model table stubbed (no model renames dots), and the prompting decoder and emptiness checks
    taken from `utils.py` (their modules import model SDKs this test does not need)."""
    root = data / "official"
    checker_src = root / "bfcl_eval" / "eval_checker" / "ast_eval" / "ast_checker.py"
    if not checker_src.is_file():
        pytest.skip(f"BFCL's checker source not fetched into {root} (python bench/fetch_bfcl.py)")
    saved = dict(sys.modules)
    sys.path.insert(0, str(root))
    try:
        stub = types.ModuleType("bfcl_eval.constants.model_config")
        stub.MODEL_CONFIG_MAPPING = type("AnyModel", (dict,), {  # type: ignore[attr-defined]
            "__missing__": lambda self, key: types.SimpleNamespace(underscore_to_dot=False)})()
        sys.modules["bfcl_eval.constants.model_config"] = stub
        from bfcl_eval.constants.enums import Language, ReturnFormat
        from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

        ns: dict[str, Any] = {"ast": ast, "re": re, "ReturnFormat": ReturnFormat}
        for rel, names in (("model_handler/utils.py", {"default_decode_ast_prompting", "ast_parse", "resolve_ast_call",
                                                       "resolve_ast_by_type"}),
                           ("utils.py", {"is_function_calling_format_output", "is_empty_output"})):
            tree = ast.parse((root / "bfcl_eval" / rel).read_text())
            tree.body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
            exec(compile(tree, str(root / "bfcl_eval" / rel), "exec"), ns)  # BFCL's code, run to compare
    finally:
        sys.path.remove(str(root))
        for key in set(sys.modules) - set(saved):
            if key.startswith("bfcl_eval"):
                del sys.modules[key]

    def verdict(item: bfcl.BFCLItem, result: str) -> bool:
        if "irrelevance" in item.category:  # eval_runner._evaluate_single_relevance_entry
            try:
                decoded = ns["default_decode_ast_prompting"](result, ReturnFormat.PYTHON, False)
            except Exception:
                return True
            return bool(ns["is_empty_output"](decoded))
        try:  # eval_runner._evaluate_single_ast_entry
            decoded = ns["default_decode_ast_prompting"](result, ReturnFormat.PYTHON, False)
        except Exception:
            return False
        if not ns["is_function_calling_format_output"](decoded):
            return False
        return bool(ast_checker(item.function, decoded, item.ground_truth, Language.PYTHON, item.category,
                                "stub")["valid"])

    return verdict


def test_agreement_with_bfcls_own_code(data, items, all_cases):
    official = official_checker(data)
    wrong = []
    for c in all_cases:
        got = official(items[c.item_id], c.result)
        if got != c.official:
            wrong.append((c.item_id, c.change, c.result[:120], got))
    assert not wrong, f"BFCL's own checker disagrees with {len(wrong)} derived verdicts, e.g. {wrong[:5]}"
