"""Function calling in BFCL's format: question files, possible-answer files, BFCL's AST checker.

Data: BFCL's JSON-lines files (`{"id", "question": [[turns]], "function": [docs]}`) and their
possible-answer files (`{"id", "ground_truth": [{func: {param: [acceptable values]}}]}`, in a
`possible_answer/` folder beside them, as BFCL ships them). `bench/fetch_bfcl.py` fetches them
from the `bfcl-eval` package on PyPI (Apache-2.0); the repository ships none.

Checking reproduces the rules of gorilla's `bfcl_eval/eval_checker/ast_eval/ast_checker.py`,
read, not copied (Python categories; Java and JavaScript are not supported):

* **simple** (one call expected): exactly one call, else *wrong count*. **multiple** (several
  functions offered, one call expected): as many calls as expected (one), checked against the
  expected function. **parallel** and **parallel_multiple**: as many calls as expected, matched
  in any order, greedily: each expected call takes the first unmatched reply call that passes.
* A call passes when its name is the expected one; every required parameter is there; every
  parameter is documented *and* listed in the possible answer; every possible-answer parameter not
  marked optional (`""` among its values) is there; and every value passes:
  - **types** are compared exactly (`type(v) == t`, so `True` is no integer), from the documented
    type (`string`, `integer`, `float`, `boolean`, `array`, `tuple` (a list), `dict`, `any` (a
    string)); an `int` is accepted for a `float` (converted); a tuple for a `tuple`; arrays check
    their items' type one level deep; a value of the type of the possible answers (a *variable*)
    passes the type check and must then equal one of them exactly;
  - **strings** match one acceptable string after standardization: spaces and `,./-_*^` removed,
    lower case, `'` as `"`; **lists** match an acceptable list element-wise in order, string
    elements standardized; **dicts** match an acceptable dict key by key (values standardized when
    strings, every key known, keys missing only when optional); **lists of dicts** likewise per
    position; other values (numbers, booleans) must be `==` one of the acceptable values.
* **irrelevance**: passes only when the reply makes no call *and* reads as a plain answer. BFCL's
  runner also passes a reply that fails to decode (a broken call is taken for an abstention); here
  an unparseable reply fails. **relevance** passes with any call.

Every verdict also carries `official_valid`, BFCL's verdict by its runner's rules: the reply read
by BFCL's own decoding (`pycall.bfcl_decode`, which computes what BFCL's `eval` would, for
literals and pure builtins) and checked by the same rules; None where it is undetermined (BFCL
would evaluate other code, or its checker would raise). It differs from `valid` only by the
deliberate differences of docs/eval.md: an unparseable irrelevance reply, a call or a name inside
an argument expression (`b=abs(120) + 0`, never evaluated here), `**kwargs`, and values a JSON log
cannot hold (bytes, complex numbers, lone surrogates: unparseable here, invalid there too but for
a type error). A reply never stops a run.

A reply from any protocol becomes BFCL's decoded form (`[{name: args}]`); under `bfcl` it is read
with BFCL's own decoder (`formats/pycall.py`). A predictions file (`{"id", "result"}` lines, as
BFCL's generation writes them: a Python-syntax string, or a list of `{name: args}`) is scored
without a model (`score_predictions`).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field

from agentflan.errors import ConfigError
from agentflan.eval.runlog import Exchange, single_record
from agentflan.eval.score import pct, rate
from agentflan.eval.suite import SingleActionSuite, SuiteRequest
from agentflan.formats.protocols import Action, Protocol
from agentflan.schema import Message, Source, SystemMessage, ToolCall, ToolSpec, Trajectory, UserMessage

SUITE = "bfcl"
TYPES: dict[str, type] = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list,
                          "tuple": list, "dict": dict, "any": str}
NESTED = ("array", "tuple")
_OPENAPI = {"dict": "object", "float": "number", "tuple": "array", "any": "string"}
Decoded = list[dict[str, dict[str, Any]]]


def question_message(m: dict[str, Any], where: str) -> Message:
    """A message of a BFCL question (a user or system turn with text) as a schema message; anything
    else is a `ConfigError` naming `where` (e.g. `simple_0: question turn 1`)."""
    role, content = m.get("role"), m.get("content")
    if not isinstance(content, str):
        raise ConfigError(f"{where} has a message without text content")
    if role == "user":
        return UserMessage(content=content)
    if role == "system":
        return SystemMessage(content=content)
    raise ConfigError(f"{where} has a message of role {role!r} (user or system)")


class BFCLItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    category: str
    question: list[dict[str, Any]]
    function: list[dict[str, Any]]
    ground_truth: list[dict[str, Any]] = Field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        """The item as its log record keeps it: `model_dump(mode="json")` without its cost (the
        fields are JSON already, read from BFCL's files; shared, not copied)."""
        return {"id": self.id, "category": self.category, "question": self.question, "function": self.function,
                "ground_truth": self.ground_truth}

    def trajectory(self) -> Trajectory:
        """The question as a prompt-only conversation; BFCL's documents kept in each tool's metadata."""
        msgs = [question_message(turn, f"{self.id}: question turn {k}") for k, turn in enumerate(self.question)]
        tools = [ToolSpec(name=f["name"], description=str(f.get("description", "")),
                          parameters=openapi(f.get("parameters", {})), metadata={"bfcl": f}) for f in self.function]
        return Trajectory(id=self.id, messages=msgs, tools=tools, tags={"final_tool": "Finish", "suite": SUITE},
                          source=Source(format="bfcl", original_id=self.id))


def openapi(schema: Any) -> Any:
    """BFCL's parameter types as JSON schema (`dict` -> `object`, `float` -> `number`, ...), for
    protocols that show JSON schema."""
    if isinstance(schema, dict):
        out = {k: openapi(v) for k, v in schema.items()}
        if isinstance(out.get("type"), str):
            out["type"] = _OPENAPI.get(out["type"], out["type"])
        return out
    if isinstance(schema, list):
        return [openapi(v) for v in schema]
    return schema


def category_of(item_id: str) -> str:
    """`simple_python_3` -> `simple_python`, `live_parallel_multiple_0-1-2` -> `live_parallel_multiple`."""
    return re.sub(r"_[\d-]+$", "", item_id)


def checker_kind(category: str) -> str:
    if "java" in category.split("_") or "javascript" in category.split("_"):
        raise ConfigError(f"BFCL category {category!r}: only the Python categories are supported")
    if "irrelevance" in category:
        return "irrelevance"
    if "relevance" in category:
        return "relevance"
    if "multi_turn" in category or "memory" in category or "web_search" in category or "format" in category:
        raise ConfigError(f"BFCL category {category!r}: only the single-turn AST and relevance categories are supported")
    if "parallel" in category:
        return "parallel"
    return "multiple" if "multiple" in category else "simple"


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a BFCL JSON-lines file (questions, answers, predictions), each an object with a
    string `id`; anything else is a `ConfigError` naming the file and line."""
    from agentflan.eval.runlog import json_lines

    out = []
    try:
        for k, rec in json_lines(path):
            if not isinstance(rec, dict) or not isinstance(rec.get("id"), str):
                raise ConfigError(f"{path}:{k}: a BFCL record is an object with a string 'id'")
            out.append(rec)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} of a line after record {len(out)})") from None
    return out


def answers_path(questions: Path) -> Path:
    return questions.parent / "possible_answer" / questions.name


def load_items(question_file: str | Path, n: int | None = None, answer_file: str | Path | None = None) -> list[BFCLItem]:
    """The first `n` items of a BFCL question file, with their possible answers (from
    `answer_file`, or `possible_answer/<same name>` beside it; irrelevance files have none)."""
    qpath = Path(question_file)
    if not qpath.is_file():
        raise ConfigError(f"BFCL question file {qpath} does not exist (bench/fetch_bfcl.py fetches BFCL's data)")
    recs = read_records(qpath)[:n]
    if not recs:
        raise ConfigError(f"{qpath}: no items")
    kinds = {checker_kind(category_of(r["id"])) for r in recs}
    truth: dict[str, Any] = {}
    if kinds - {"irrelevance", "relevance"}:
        apath = Path(answer_file) if answer_file else answers_path(qpath)
        if not apath.is_file():
            raise ConfigError(f"{qpath}: its possible-answer file {apath} does not exist")
        truth = {r["id"]: r.get("ground_truth") for r in read_records(apath)}
    items = []
    for k, r in enumerate(recs, 1):
        where = f"{qpath}:{k}"
        cat = category_of(r["id"])
        question, function = r.get("question"), r.get("function")
        if not (isinstance(question, list) and question and isinstance(question[0], list)):
            raise ConfigError(f"{where}: 'question' must be a list of turns lists")
        if not isinstance(function, list) or not all(isinstance(f, dict) and "name" in f for f in function):
            raise ConfigError(f"{where}: 'function' must be a list of function documents with a 'name'")
        gt = truth.get(r["id"]) if checker_kind(cat) not in ("irrelevance", "relevance") else []
        if not isinstance(gt, list) or (not gt and checker_kind(cat) not in ("irrelevance", "relevance")):
            raise ConfigError(f"{where}: no possible answer for {r['id']} in the possible-answer file")
        items.append(BFCLItem(id=r["id"], category=cat, question=question[0], function=function, ground_truth=gt))
    return items


# ---- BFCL's AST checker, reproduced -----------------------------------------------------------------------

def _ok() -> dict[str, Any]:
    return {"valid": True, "error_type": None, "error": None}


def _bad(error_type: str, error: str) -> dict[str, Any]:
    return {"valid": False, "error_type": error_type, "error": error}


_STANDARDIZE = re.compile(r"[ ,./\-_*^]")


def standardize(s: str) -> str:
    """BFCL's string standardization: drop spaces and `,./-_*^`, lower-case, `'` -> `"`."""
    return _STANDARDIZE.sub("", s).lower().replace("'", '"')


def _answer_type(possible: Any) -> type | None:
    for a in possible:
        if a != "":
            return type(a)
    return None


def type_check(param: str, value: Any, possible: Any, expected: type, nested: type | None) -> dict[str, Any]:
    """BFCL's `type_checker`: `{"valid", "is_variable", ...}`."""
    answer_type = _answer_type(possible)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if nested is None:
            return {**_ok(), "is_variable": is_variable}
        values = cast(list[Any], value)
        for item in possible:
            passes = True
            if type(item) is list:
                for v in values:
                    if not type_check(param, v, item, nested, None)["valid"]:
                        passes = False
                        break
            if passes:
                return {**_ok(), "is_variable": is_variable}
        # the value's repr in the message, as in BFCL's (which raises there on an integer past
        # Python's string-conversion limit: its run stops, and official_verdict says undetermined)
        return _bad("type_error:nested", f"nested type check failed for {param!r}: {value!r}")
    if answer_type is not None and type(value) is answer_type:
        return {**_ok(), "is_variable": True}
    return _bad("type_error:simple", f"{param!r}: expected {expected.__name__}, got {type(value).__name__}: {value!r}")


def _std(v: Any) -> Any:
    return standardize(v) if type(v) is str else v


def _string_check(param: str, value: str, possible: list[Any]) -> dict[str, Any]:
    if standardize(value) not in [standardize(a) for a in possible if type(a) is str]:
        return _bad("value_error:string", f"{param!r}: {value!r} is not one of {possible}")
    return _ok()


def _list_check(param: str, value: list[Any], possible: list[Any]) -> dict[str, Any]:
    got = [_std(v) for v in value]
    accepted = [[_std(a[j]) for j in range(len(a))] if isinstance(a, (str, list, tuple)) else None for a in possible]
    if got not in accepted:
        return _bad("value_error:list/tuple", f"{param!r}: {value!r} is not one of {possible}")
    return _ok()


def _dict_check(param: str, value: dict[str, Any], possible: list[Any]) -> dict[str, Any]:
    result = _bad("dict_checker:unclear", f"{param!r}: no acceptable dict")
    for answer in possible:
        if answer == "" or not isinstance(answer, dict):
            continue
        result = _ok()
        for k, v in value.items():
            if k not in answer:
                result = _bad("value_error:dict_key", f"{param!r}: unexpected key {k!r}")
                break
            if _std(v) not in [_std(a) for a in answer[k]]:
                result = _bad("value_error:dict_value", f"{param!r}: {k!r}={v!r} is not one of {answer[k]}")
                break
        for k, vals in answer.items():
            if k not in value and "" not in vals:
                result = _bad("value_error:dict_key", f"{param!r}: missing key {k!r}")
                break
        if result["valid"]:
            return result
    return result


def _list_dict_check(param: str, value: list[Any], possible: list[Any]) -> dict[str, Any]:
    result = _bad("list_dict_checker:unclear", f"{param!r}: no acceptable list of dicts")
    for answer in possible:
        if not isinstance(answer, (list, str)) or len(value) != len(answer):
            result = _bad("value_error:list_dict_count", f"{param!r}: wrong number of dicts")
            continue
        for i, v in enumerate(value):
            result = _dict_check(param, v, [answer[i]]) if isinstance(v, dict) else _bad(
                "value_error:dict_value", f"{param!r}: item {i} is not a dict")
            if not result["valid"]:
                break
        else:
            return _ok()
    return result


def check_call(doc: dict[str, Any], call: dict[str, dict[str, Any]], expected: dict[str, dict[str, list[Any]]],
               *, dots_as_underscores: bool = False, official: bool = False) -> dict[str, Any]:
    """BFCL's `simple_function_checker`: one decoded call against one expected call (`official`:
    raise where BFCL's raises)."""
    answers = next(iter(expected.values()))
    name = doc["name"]
    if dots_as_underscores:
        name = name.replace(".", "_")
    if name not in call:
        return _bad("simple_function_checker:wrong_func_name", f"function {name!r} not in the reply")
    params = call[name]
    details = doc["parameters"]["properties"]
    for p in doc["parameters"].get("required", []):
        if p not in params:
            return _bad("simple_function_checker:missing_required", f"missing required parameter {p!r}")
    for p, value in params.items():
        if p not in details or p not in answers:
            return _bad("simple_function_checker:unexpected_param", f"unexpected parameter {p!r}")
        declared = details[p]["type"]
        if declared not in TYPES:
            return _bad("type_error:unknown", f"{p!r}: unsupported declared type {declared!r}")
        expected_type = TYPES[declared]
        nested = TYPES.get(details[p].get("items", {}).get("type", "")) if declared in NESTED else None
        if declared in NESTED and nested is None:
            return _bad("type_error:unknown", f"{p!r}: unsupported item type")
        if declared == "tuple" and type(value) is tuple:
            value = list(value)
        if declared == "float" and type(value) is int:
            try:
                value = float(value)
            except OverflowError:
                if official:
                    raise  # BFCL's checker stops here
                return _bad("type_error:simple", f"{p!r}: an integer too large for a float")
        checked = type_check(p, value, answers[p], expected_type, nested)
        if not checked["valid"]:
            return checked
        if not checked["is_variable"]:
            if expected_type is dict:
                result = _dict_check(p, value, answers[p])
            elif expected_type is list and nested is dict:
                result = _list_dict_check(p, value, answers[p])
            elif expected_type is str:
                result = _string_check(p, value, answers[p])
            elif expected_type is list:
                result = _list_check(p, value, answers[p])
            else:
                result = None
            if result is not None:
                if not result["valid"]:
                    return result
                continue
        if value not in answers[p]:
            return _bad("value_error:others", f"{p!r}: {value!r} is not one of {answers[p]}")
    for p in answers:
        if p not in params and "" not in answers[p]:
            return _bad("simple_function_checker:missing_optional", f"parameter {p!r} missing and not optional")
    return _ok()


def _doc(functions: list[dict[str, Any]], name: str) -> dict[str, Any]:
    doc = next((f for f in functions if f["name"] == name), None)
    if doc is None:
        raise ConfigError(f"the possible answer names {name!r}, which is not among the functions")
    return doc


def check_ast(functions: list[dict[str, Any]], decoded: Decoded, truth: list[dict[str, Any]], kind: str, *,
              dots_as_underscores: bool = False, official: bool = False) -> dict[str, Any]:
    """BFCL's `ast_checker` for the simple, multiple and parallel kinds."""
    if len(decoded) != len(truth):
        return _bad(f"{kind}:wrong_count", f"{len(decoded)} call(s), expected {len(truth)}")
    if kind != "parallel":
        expected = truth[0]  # BFCL's simple checker takes the first document, the multiple one looks it up
        doc = functions[0] if kind == "simple" and functions else _doc(functions, next(iter(expected)))
        return check_call(doc, decoded[0], expected, dots_as_underscores=dots_as_underscores, official=official)
    matched: set[int] = set()
    for i, expected in enumerate(truth):
        doc = _doc(functions, next(iter(expected)))
        found = False
        for j, call in enumerate(decoded):
            if j in matched:
                continue
            if check_call(doc, call, expected, dots_as_underscores=dots_as_underscores, official=official)["valid"]:
                matched.add(j)
                found = True
                break
        if not found:
            return _bad("parallel:cannot_find_match", f"no reply call matches expected call {i}")
    return _ok()


# ---- replies -> decoded form, verdicts --------------------------------------------------------------------

def decoded_of(action: Action) -> Decoded | None:
    """BFCL's decoded form of an action (None: the reply could not be decoded)."""
    if action.kind == "unparseable":
        return None
    return [{c.name: dict(c.arguments)} for c in action.calls] if action.kind == "call" else []


DIFFERENCES = {
    "irrelevance_unparseable": "an irrelevance reply that attempts a call and does not decode fails here; BFCL "
                               "takes it for an abstention",
    "evaluated_expression": "a call or a name inside an argument expression (`b=abs(120) + 0`) is unparseable "
                            "here; BFCL evaluates it",
    "kwargs": "`**kwargs` in a call is unparseable here; BFCL reads a parameter named None",
    "unserializable_value": "a value JSON cannot hold (bytes, complex, a lone surrogate, a huge integer) is "
                            "unparseable here; BFCL keeps it (and fails its type check)",
}
"""The deliberate differences from BFCL's verdicts, by the `difference` key a verdict carries."""


def judge(item: BFCLItem, action: Action | None, context_limit: bool = False, *,
          dots_as_underscores: bool = False, text: str | None = None) -> dict[str, Any]:
    """The verdict of one reply: `valid`, `error_type`, `error`, `outcome`, `decoded`, and
    `official_valid`, BFCL's verdict by its runner's rules (`official_verdict`; `text`: the reply
    in BFCL's format, read by BFCL's decoder); where they differ, `difference` names the
    deliberate difference (`DIFFERENCES`, or `other`)."""
    v = _judge(item, action, context_limit, dots_as_underscores=dots_as_underscores, text=text)
    if action is not None and v["official_valid"] is not None and bool(v["valid"]) != v["official_valid"]:
        v["difference"] = _difference(v, action)
    return v


def _difference(v: dict[str, Any], action: Action) -> str:
    error = action.error or ""
    if v["kind"] == "irrelevance" and v["outcome"] == "unparseable":
        return "irrelevance_unparseable"
    if "inside an expression" in error:
        return "evaluated_expression"
    if "**kwargs" in error:
        return "kwargs"
    if "JSON cannot hold" in error or "lone surrogate" in error or "too long to write" in error:
        return "unserializable_value"
    return "other"


def _judge(item: BFCLItem, action: Action | None, context_limit: bool = False, *,
           dots_as_underscores: bool = False, text: str | None = None) -> dict[str, Any]:
    kind = checker_kind(item.category)
    if action is None or context_limit:
        return {**_bad("context_limit", "the prompt does not fit the model"), "kind": kind, "outcome": "context_limit",
                "official_valid": False}
    decoded = decoded_of(action)
    if kind in ("irrelevance", "relevance") or decoded is None:
        official = official_verdict(item, action, text, dots_as_underscores=dots_as_underscores)
    if kind in ("irrelevance", "relevance"):
        called = bool(decoded)
        if kind == "irrelevance":
            v = (_ok() if decoded == [] else
                 _bad("irrelevance_error:unparseable", f"the reply tried to call and cannot be read: {action.error}")
                 if decoded is None else _bad("irrelevance_error:decoder_success", "a call where none is due"))
        else:
            v = _ok() if called else _bad("relevance_error:no_call", "no call where one is due")
        outcome = ("unparseable" if decoded is None else "call" if called else
                   "refusal" if re.search(r"(?i)\b(?:can(?:'|no)?t|cannot|unable|none of|not able|sorry)", action.answer or "")
                   else "no_call")
        return {**v, "kind": kind, "outcome": outcome, "decoded": decoded, "official_valid": official}
    if decoded is None:
        v = _bad("ast_decoder:decoder_failed", f"the reply cannot be decoded: {action.error}")
        return {**v, "kind": kind, "outcome": "unparseable", "decoded": None, "official_valid": official}
    # the calls read are BFCL's too (official_verdict): one check gives both verdicts, unless BFCL's raises
    try:
        v = check_ast(item.function, decoded, item.ground_truth, kind, dots_as_underscores=dots_as_underscores,
                      official=True)
        official = bool(v["valid"])
    except _CHECKER_RAISES:
        v = check_ast(item.function, decoded, item.ground_truth, kind, dots_as_underscores=dots_as_underscores)
        official = None
    return {**v, "kind": kind, "outcome": _outcome(v, decoded, item, action), "decoded": decoded,
            "official_valid": official}


_CHECKER_RAISES = (TypeError, ValueError, KeyError, AttributeError, OverflowError)


def official_verdict(item: BFCLItem, action: Action, text: str | None, *,
                     dots_as_underscores: bool = False) -> bool | None:
    """BFCL's verdict, by its runner's rules (`eval_runner._evaluate_single_ast_entry`,
    `_evaluate_single_relevance_entry`): a reply in BFCL's format (`text`) is read by BFCL's decoder
    (`pycall.bfcl_decode`: what it evaluates is computed, values stay as Python makes them) and
    checked; an irrelevance item passes when that decoding fails or finds no call. Without `text`
    (another protocol's reply) the action stands for the decoding, an unparseable one failing it.
    None: undetermined (BFCL would evaluate code agentflan does not, or its checker would raise)."""
    from agentflan.errors import ParseError
    from agentflan.formats.pycall import Undetermined, bfcl_decode

    kind = checker_kind(item.category)
    decoded: Any
    # a reply agentflan reads is read alike by BFCL's decoder (agentflan's reading is BFCL's made
    # stricter; a plain answer decodes to nothing or fails there): only an unparseable one is read again
    if text is None or action.kind != "unparseable":
        decoded = decoded_of(action)
    else:
        try:
            decoded = bfcl_decode(text)
        except ParseError:
            decoded = None
        except Undetermined:
            return None
    if kind == "irrelevance":
        return not decoded
    if kind == "relevance":
        return bool(decoded)
    if decoded is None:
        return False
    try:
        return bool(check_ast(item.function, decoded, item.ground_truth, kind, dots_as_underscores=dots_as_underscores,
                              official=True)["valid"])
    except _CHECKER_RAISES:
        return None  # BFCL's checker raises on this value (a float parameter given 10 ** 400, ...)


def _outcome(v: dict[str, Any], decoded: Decoded, item: BFCLItem, action: Action) -> str:
    if v["valid"]:
        return "correct_call"
    if not decoded:
        return "refusal" if re.search(r"(?i)\b(?:can(?:'|no)?t|cannot|unable|none of|not able|sorry)",
                                      action.answer or "") else "no_call"
    if len(decoded) > len(item.ground_truth):
        return "extra_call"
    if len(decoded) < len(item.ground_truth):
        return "missing_call"
    et = str(v["error_type"])
    if "wrong_func_name" in et or ("parallel" in et and not {n for d in decoded for n in d} <= _expected_names(item)):
        return "wrong_tool"
    return "wrong_argument"


def _expected_names(item: BFCLItem) -> set[str]:
    return {n for d in item.ground_truth for n in d}


def record(item: BFCLItem, protocol: str, agent: str, ex: Exchange) -> dict[str, Any]:
    verdict = None if ex.error is not None else judge(item, ex.action, ex.context_limit,
                                                      text=_bfcl_text(protocol, ex.completions))
    return single_record(SUITE, protocol, agent, item.id, ex, category=item.category,
                         item=item.model_dump(mode="json"), verdict=verdict)


def rescore(rec: dict[str, Any], proto: Protocol | None) -> dict[str, Any] | None:
    """A logged reply's verdict, re-derived: the completions replayed through the protocol (or a
    predictions file's `result` decoded again), then checked."""
    from agentflan.eval.runlog import replay
    from agentflan.formats.protocols import conversation_key

    if rec.get("error") is not None:
        return None
    item = BFCLItem.model_validate(rec["item"])
    if rec.get("context_limit"):
        return judge(item, None, True)
    if "result" in rec:
        return prediction_verdict(item, rec["result"], missing=bool(rec.get("missing")),
                                  dots_as_underscores=bool(rec.get("dots_as_underscores")))
    assert proto is not None
    traj = item.trajectory()
    return judge(item, replay(proto, traj, conversation_key(traj), rec["completions"]),
                 text=_bfcl_text(proto.name, rec["completions"]))


def _bfcl_text(protocol: str, completions: list[dict[str, Any]]) -> str | None:
    """The reply BFCL's decoder would read: the last completion's text under the `bfcl` protocol."""
    if protocol != "bfcl" or not completions:
        return None
    text = completions[-1].get("text")
    return text if isinstance(text, str) else None


_NO_TRAJECTORY = Trajectory(id="x", messages=[], source=Source(format="bfcl"))  # BFCL's parse reads none of it


def action_of_result(result: Any) -> Action:
    """The action a BFCL predictions `result` states: a string read as BFCL's Python syntax (an
    attempt that does not decode is unparseable, other text a plain answer), or a list of
    `{name: args}` (args an object or a JSON string), as function-calling handlers decode."""
    from agentflan.formats.protocols import BFCLProtocol

    if isinstance(result, str):
        return BFCLProtocol().parse(result, _NO_TRAJECTORY)
    if isinstance(result, list):
        calls = []
        for i, entry in enumerate(result):
            if not isinstance(entry, dict) or len(entry) != 1:
                return Action("unparseable", error=f"result[{i}] is not one {{name: arguments}} object")
            (name, args), = entry.items()
            if isinstance(args, str):
                try:
                    args = json.loads(args)
                except json.JSONDecodeError as e:
                    return Action("unparseable", error=f"result[{i}]: arguments are not JSON ({e.msg})")
            if not isinstance(args, dict):
                return Action("unparseable", error=f"result[{i}]: arguments are not an object")
            calls.append(ToolCall(id=f"call_{i}", name=str(name), arguments=args))
        return Action("call", calls=calls) if calls else Action("answer", answer="")
    return Action("unparseable", error=f"a result must be a string or a list, not {type(result).__name__}")


def score_predictions(predictions: str | Path, items: list[BFCLItem], *, agent: str = "predictions",
                      dots_as_underscores: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """Records for a predictions file (`{"id", "result"}` lines) against `items`; and the ids of
    items that have no prediction (each is scored as a failure: a missing prediction is no pass)."""
    path = Path(predictions)
    if not path.is_file():
        raise ConfigError(f"predictions file {path} does not exist")
    preds: dict[str, Any] = {}
    for rec in read_records(path):
        if "result" not in rec:
            raise ConfigError(f"{path}: record {rec['id']!r} has no 'result'")
        preds[rec["id"]] = rec["result"]
    out, missing = [], []
    for item in items:
        if item.id not in preds:
            missing.append(item.id)
        result = preds.get(item.id, "")
        v = prediction_verdict(item, result, missing=item.id in missing, dots_as_underscores=dots_as_underscores)
        out.append({"suite": SUITE, "protocol": "predictions", "agent": agent, "task_id": item.id,
                    "category": item.category, "item": item.as_json(), "result": result,
                    **({"missing": True} if item.id in missing else {}),
                    **({"dots_as_underscores": True} if dots_as_underscores else {}),
                    "action": None, "error": None, "verdict": v})
    return out, missing


def prediction_verdict(item: BFCLItem, result: Any, *, missing: bool = False,
                       dots_as_underscores: bool = False) -> dict[str, Any]:
    """The verdict of a predictions file's `result` (a missing prediction fails)."""
    v = judge(item, action_of_result(result), dots_as_underscores=dots_as_underscores,
              text=result if isinstance(result, str) else None)
    if missing:
        v = {**v, **_bad("missing_prediction", "no prediction for this item"), "outcome": "missing",
             "official_valid": False}
    return v


# ---- summaries -----------------------------------------------------------------------------------------

def outcomes(rec: dict[str, Any]) -> dict[tuple[str, str], float]:
    """A scored reply's outcomes for paired comparisons: valid, overall and in its category, and
    BFCL's own verdict where it is determined."""
    ok = float(bool(rec["verdict"]["valid"]))
    out = {("accuracy", "all"): ok, ("accuracy", str(rec.get("category", "?"))): ok}
    official = _official(rec["verdict"])
    if official is not None:
        out[("accuracy_official", "all")] = float(official)
    return out


def _official(v: dict[str, Any]) -> bool | None:
    """A verdict's `official_valid` (logs written before it was kept for every kind: `valid`)."""
    return v.get("official_valid", v["valid"])  # type: ignore[no-any-return]


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy per category (BFCL's categories), the unparseable rate, outcomes; and BFCL's verdicts
    beside them: accuracy by BFCL's rules over the replies whose BFCL verdict is determined, how many
    are not, and how many verdicts differ from BFCL's (the deliberate differences, docs/eval.md)."""
    vs = [r["verdict"] for r in records if r.get("error") is None and r.get("verdict") is not None]
    known = [v for v in vs if _official(v) is not None]
    by_cat: dict[str, list[bool]] = {}
    for r in records:
        if r.get("verdict") is not None and r.get("error") is None:
            by_cat.setdefault(r["category"], []).append(bool(r["verdict"]["valid"]))
    irr = [v for v in vs if v["kind"] == "irrelevance"]
    first = records[0] if records else {}
    return {"suite": SUITE, "protocol": first.get("protocol"), "agent": first.get("agent"), "items": len(records),
            "scored": len(vs), "errors": len(records) - len(vs),
            "accuracy": rate(sum(v["valid"] for v in vs), len(vs)),
            "by_category": {k: rate(sum(x), len(x)) for k, x in sorted(by_cat.items())},
            "unparseable": rate(sum(v["outcome"] == "unparseable" for v in vs), len(vs)),
            "irrelevance_official": rate(sum(bool(v.get("official_valid")) for v in irr), len(irr)),
            "accuracy_official": rate(sum(bool(_official(v)) for v in known), len(known)),
            "official_undetermined": len(vs) - len(known),
            "differs_from_official": sum(bool(v["valid"]) != _official(v) for v in known),
            "differences": dict(sorted(Counter(str(v.get("difference", "other")) for v in known
                                               if bool(v["valid"]) != _official(v)).items())),
            "outcomes": dict(sorted(Counter(v["outcome"] for v in vs).items())),
            "error_types": dict(sorted(Counter(str(v["error_type"]) for v in vs if not v["valid"]).items())),
            "missing": sum(bool(r.get("missing")) for r in records),
            "error_examples": sorted({str(r["error"])[:200] for r in records if r.get("error") is not None})[:3]}


def table(summaries: list[dict[str, Any]]) -> str:
    """Markdown: accuracy per run and category (BFCL's irrelevance rule beside ours)."""
    cats = sorted({c for s in summaries for c in s["by_category"]})
    head = ["run", "protocol", "items", "accuracy %", *[f"{c} %" for c in cats], "irrelevance (BFCL's rule) %",
            "accuracy (BFCL's rule) %", "verdicts unlike BFCL's", "unparseable %", "errors"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        rows.append("| " + " | ".join([
            str(s.get("run", "")), f"`{s.get('protocol')}`", str(s["scored"]), pct(s["accuracy"]),
            *[pct(s["by_category"][c]) if c in s["by_category"] else "" for c in cats],
            pct(s["irrelevance_official"]), pct(s["accuracy_official"]) if "accuracy_official" in s else "",
            str(s.get("differs_from_official", "")), pct(s["unparseable"]), str(s["errors"])]) + " |")
    return "\n".join(rows) + "\n"


# ---- the suite ---------------------------------------------------------------------------------------------

BFCL_FILES = ("BFCL_v4_simple_python.json", "BFCL_v4_multiple.json", "BFCL_v4_parallel.json",
              "BFCL_v4_irrelevance.json")
BFCL_ALL_FILES = (*BFCL_FILES, "BFCL_v4_parallel_multiple.json", "BFCL_v4_live_simple.json",
                  "BFCL_v4_live_multiple.json", "BFCL_v4_live_parallel.json", "BFCL_v4_live_parallel_multiple.json",
                  "BFCL_v4_live_irrelevance.json", "BFCL_v4_live_relevance.json")
"""Every single-turn Python category agentflan scores (what `bench/fetch_bfcl.py` fetches): a
predictions file is scored against those of them that are there."""


def bfcl_data_dir() -> Path:
    """Where `bench/fetch_bfcl.py` puts BFCL's data (`AGENTFLAN_BFCL_DATA`, default ~/.cache/agentflan/bfcl)."""
    return Path(os.environ.get("AGENTFLAN_BFCL_DATA", Path.home() / ".cache" / "agentflan" / "bfcl"))


def gold_args(answers: dict[str, list[Any]], item: BFCLItem, name: str) -> dict[str, Any]:
    """A BFCL call from the first acceptable value of each parameter (optional ones left out, unless
    the function requires them)."""
    doc: dict[str, Any] = next((f for f in item.function if f["name"] == name), {})
    required = set(doc.get("parameters", {}).get("required", []))

    def first(vals: list[Any]) -> Any:
        return next(v for v in vals if v != "")

    def build(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: build(first(x)) for k, x in v.items() if "" not in x}
        if isinstance(v, list) and v and all(isinstance(d, dict) for d in v):
            return [build(d) for d in v]
        return v

    return {p: build(first(vals)) for p, vals in answers.items()
            if ("" not in vals or p in required) and any(v != "" for v in vals)}


class BFCLSuite(SingleActionSuite):
    """BFCL as a `Suite`: its question files played in a protocol, or a predictions file scored."""

    name = SUITE

    def default_protocols(self, engine: Any) -> list[str]:
        """`bfcl`, then the protocols the model was trained with."""
        info = getattr(engine, "info", None)
        trained = info.episode_protocols() if info is not None and info.trained else []
        return ["bfcl", *[p for p in trained if p != "bfcl"]]

    def items(self, req: SuiteRequest, proto: Protocol) -> tuple[list[Any], dict[str, Any]]:
        tasks_file, n = req.tasks_file, req.n
        files = [tasks_file] if tasks_file else [bfcl_data_dir() / f for f in BFCL_FILES]
        if not tasks_file and not all(f.is_file() for f in files):
            raise ConfigError(f"BFCL data not found in {bfcl_data_dir()}: run `python bench/fetch_bfcl.py` (it fetches "
                              "BFCL's files from the bfcl-eval package on PyPI) or give --tasks QUESTION_FILE")
        per = n if tasks_file else math.ceil(n / len(files))
        return [it for f in files for it in load_items(f, per)][:n], {}

    def gold(self, item: BFCLItem) -> Trajectory:
        from agentflan.formats.finish import give_answer
        from agentflan.schema import AssistantMessage

        traj = item.trajectory()
        calls = [ToolCall(id=f"call_{i}", name=name, arguments=gold_args(args, item, name))
                 for i, d in enumerate(item.ground_truth) for name, args in d.items()]
        reply = (AssistantMessage(content="", tool_calls=calls) if calls else AssistantMessage(
            content="", tool_calls=[give_answer("None of the functions can answer this.")]))
        return traj.model_copy(update={"messages": [*traj.messages, reply]})

    def record(self, item: BFCLItem, protocol: str, agent: str, ex: Exchange) -> dict[str, Any]:
        return record(item, protocol, agent, ex)

    def run(self, req: SuiteRequest) -> list[Any]:
        if req.predictions is not None and req.policy != "random":
            return [self.score_file(req)]
        return super().run(req)

    def score_file(self, req: SuiteRequest) -> Any:
        """Every line of a predictions file scored against the question files (`-n` limits model runs
        only): the categories it has predictions for, every item of them (a missing one fails)."""
        from agentflan.eval.runlog import Run, write_config, write_records, write_summary

        predictions = cast(Path, req.predictions)
        files = [req.tasks_file] if req.tasks_file else [bfcl_data_dir() / f for f in BFCL_ALL_FILES]
        items = [it for f in files if f.is_file() for it in load_items(f)]
        if not items:
            raise ConfigError("--predictions needs the BFCL question files: --tasks QUESTION_FILE, or fetch them "
                              "(bench/fetch_bfcl.py)")
        if not predictions.is_file():
            raise ConfigError(f"predictions file {predictions} does not exist")
        ids = {str(r["id"]) for r in read_records(predictions)}
        categories = {category_of(i) for i in ids}
        items = [it for it in items if it.category in categories]  # a category without predictions is not scored
        if not items:
            raise ConfigError(f"{predictions}: no prediction id matches an item of the question files")
        unmatched = sorted(ids - {it.id for it in items})
        records, _ = score_predictions(predictions, items, agent=req.agent_name)
        out = req.out_root / "bfcl-predictions"
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, {**req.base_config, "suite": SUITE, "protocol": "predictions",
                           "predictions": str(predictions), "items": len(items),
                           "unmatched_predictions": len(unmatched), "unmatched_examples": unmatched[:5]})
        records = write_records(out / "episodes.jsonl", records)
        tick = req.progress("bfcl / predictions", len(records))
        tick(len(records))
        return write_summary(Run(SUITE, "predictions", out, records, 0, summarize(records)))

    def rescore(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        from agentflan.formats.protocols import get_protocol

        return rescore(rec, get_protocol(rec["protocol"]) if rec.get("protocol") != "predictions" else None)

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize(records)

    def table(self, summaries: list[dict[str, Any]]) -> str:
        return table(summaries)

    def outcomes(self, rec: dict[str, Any]) -> dict[tuple[str, str], float]:
        return outcomes(rec)

    def panels(self, summaries: list[dict[str, Any]]) -> list[Callable[[Any], None]]:
        from agentflan.eval.score import bars, label

        cats = sorted({c for s in summaries for c in s["by_category"]})
        return [lambda ax: bars(ax, cats, [
            (label(s), [100 * s["by_category"].get(c, {"rate": 0})["rate"] for c in cats],
             [100 * s["by_category"].get(c, {"se": 0})["se"] for c in cats]) for s in summaries],
            "BFCL: accuracy per category")]


BFCL = BFCLSuite()
