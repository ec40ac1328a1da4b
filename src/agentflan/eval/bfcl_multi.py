"""BFCL multi-turn (`agentflan eval bfcl-multi`): BFCL's executable multi-turn categories, played
through agentflan's protocols and scored by BFCL's rules.

Data and backends are BFCL's own, from a `bfcl-eval` package (Apache-2.0) on disk, never
reimplemented: the question files `BFCL_v4_multi_turn_{base,miss_func,miss_param,long_context}.json`,
their `possible_answer/` files, the function documents `multi_turn_func_doc/*.json`, and the backend
classes (`GorillaFileSystem`, `MessageAPI`, `TwitterAPI`, `TicketAPI`, `TradingBot`, `TravelAPI`,
`VehicleControlAPI`, `MathAPI`) of `bfcl_eval/eval_checker/multi_turn_eval/func_source_code/`, with
the class-to-module table of `bfcl_eval/constants/executable_backend_config.py`. `bfcl-eval` cannot
be installed beside agentflan without changing its dependencies (numpy, httpx, ...), so only those
files are read, from a folder that holds a `bfcl_eval/` package (see `locate`): the backend modules
are imported from there under the package name `bfcl_eval`, nothing else of that installation.

Playing (`play`), as BFCL's multi-turn inference does it (`base_handler.inference_multi_turn_*`,
read, not copied): the entry's backend instances are made once (`initial_config`, `long_context`
scenarios for that category); per user turn the model acts through the protocol (the functions as
the protocol renders them, its replies read by the protocol), every decoded call is executed on the
instances and its result fed back as a tool result, until a reply makes no call (an answer, or a
reply that cannot be read, ends the turn, as a failed decoding does in BFCL). More than
`STEP_LIMIT` steps with calls in one turn force-quit the entry (BFCL's `MAXIMUM_STEP_LIMIT`): the
turns left are not played and the entry fails. In `miss_func`, the held-out functions join the
tools at the turn BFCL adds them, with BFCL's user message for it. A failed model request ends the
entry with `error` (no verdict); a prompt past the model's context ends it as a failure.

Checking (`check`), BFCL's `multi_turn_checker` rules re-implemented: the model's steps (those with
calls) are executed again on fresh instances, turn by turn, beside the ground truth's calls on
other fresh instances; then per turn whose ground truth is not empty: the model must have made a
call (`empty_turn_model_response`), every public attribute of every instance must equal the ground
truth's (`instance_state_mismatch`), and every ground-truth result of the turn must be among the
model's results of this and earlier turns, as a multiset (`execution_response_mismatch`). A turn
whose ground truth is empty is not checked (BFCL's runner does not call its irrelevance checker;
the calls made there still change the state later turns are checked on); `calls_where_none_due`
counts them apart. The entry passes when every turn does; fewer turns played than the ground truth
has is `force_terminated`. Every turn's rule is reported, the first failing one is the verdict's.

Execution results are BFCL's strings: a string as it is, a dict as `json.dumps` (else `str`),
anything else `str`; an exception `Error during execution: <message>`; a name no backend defines
`name '<name>' is not defined` (BFCL evaluates the call text, so Python's own builtins would run
there; here nothing but backend methods runs); BFCL's refused names (`kill`, `exit`, ...) its
refusal. Deliberate differences (docs/eval.md): calls are executed as calls, not as evaluated text,
so BFCL's rewriting of a backend name followed by `(` *inside a string argument* does not happen.
"""

from __future__ import annotations

import ast
import copy
import importlib
import inspect
import json
import logging
import math
import os
import sys
import types
from collections import Counter
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from agentflan.errors import ConfigError, MissingDependencyError
from agentflan.eval.runlog import Exchange, action_dict, exchange
from agentflan.eval.score import pct, rate
from agentflan.eval.suite import ModuleSuite
from agentflan.formats.finish import FINISH, give_answer
from agentflan.formats.protocols import Action, Completion, Prompt, Protocol, conversation_key
from agentflan.schema import AssistantMessage, Message, Source, ToolCall, ToolMessage, ToolSpec, Trajectory, UserMessage

log = logging.getLogger(__name__)
SUITE = "bfcl-multi"
CATEGORIES = ("multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
STEP_LIMIT = 20
"""BFCL's `MAXIMUM_STEP_LIMIT`: a turn whose model makes more steps with calls force-quits the entry."""
ADDED_FUNCTIONS = "I have updated some more functions you can choose from. What about now?"
"""BFCL's user message of a `miss_func` turn that adds the held-out functions."""
REFUSED = ("kill", "exit", "quit", "remove", "unlink", "popen", "Popen", "run")
"""Names BFCL's executor refuses to run."""
FINAL_TOOL = FINISH
RL_TRAIN_CATEGORY = "multi_turn_base"
RL_TRAIN_FROM = 100
"""BFCL has no training split: RL (`agentflan train` with `envs: [bfcl-multi]`, `rl.sources`) trains on
the `multi_turn_base` entries from this index on; `run` draws each category's first entries and warns
when it plays one of those (`is_rl_train`)."""
BACKEND_PACKAGE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
FIX = ("python bench/fetch_bfcl.py (downloads the bfcl-eval wheel from PyPI, no dependencies, and extracts "
       "BFCL's data and backends into $AGENTFLAN_BFCL_DATA, default ~/.cache/agentflan/bfcl), or "
       "`pip download bfcl-eval==2026.3.23 --no-deps -d D && unzip D/bfcl_eval-*.whl -d D` and set "
       "AGENTFLAN_BFCL_EVAL=D (a folder holding bfcl_eval/, such as a site-packages with bfcl-eval installed)")


# ---- where BFCL is -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BFCLSource:
    """A located bfcl-eval: its data folder (question files, `possible_answer/`, `multi_turn_func_doc/`)
    and the folder that holds its `bfcl_eval/` package (backends)."""

    data: Path
    root: Path

    def question_file(self, category: str) -> Path:
        return self.data / f"BFCL_v4_{category}.json"


def _has_backends(root: Path) -> bool:
    return (root / "bfcl_eval" / "constants" / "executable_backend_config.py").is_file()


def locate(tasks_file: Path | None = None) -> BFCLSource:
    """Where BFCL's multi-turn data and backends are: the data beside `tasks_file` (or in
    `$AGENTFLAN_BFCL_DATA`, where `bench/fetch_bfcl.py` puts it); the backends in
    `$AGENTFLAN_BFCL_EVAL`, else the fetched `official/` beside the data, else the `bfcl_eval`
    package the data belongs to (`.../bfcl_eval/data/`). Raises `MissingDependencyError` (exit 4)
    with the command that fixes it."""
    from agentflan.eval.bfcl import bfcl_data_dir

    data = tasks_file.parent if tasks_file is not None else bfcl_data_dir()
    candidates = [Path(p) for p in [os.environ.get("AGENTFLAN_BFCL_EVAL")] if p]
    candidates += [data / "official"]
    if data.name == "data" and data.parent.name == "bfcl_eval":
        candidates.append(data.parent.parent)
    root = next((c for c in candidates if _has_backends(c)), None)
    if root is None:
        raise MissingDependencyError(f"BFCL's multi-turn backends not found (looked in {', '.join(map(str, candidates))}): "
                                     f"run {FIX}")
    if not (data / "multi_turn_func_doc").is_dir():
        raise MissingDependencyError(f"BFCL's multi-turn function documents not found in {data}/multi_turn_func_doc: "
                                     f"run {FIX}")
    return BFCLSource(data, root)


def _import_bfcl(root: Path, module: str) -> Any:
    """Import `module` of the `bfcl_eval` package in `root`, and nothing else of that installation
    (its dependencies are not agentflan's). A `bfcl_eval` imported from elsewhere is forgotten first."""
    pkg_dir = (root / "bfcl_eval").resolve()
    pkg = sys.modules.get("bfcl_eval")
    if pkg is None or [str(Path(p).resolve()) for p in getattr(pkg, "__path__", [])] != [str(pkg_dir)]:
        for name in [m for m in sys.modules if m == "bfcl_eval" or m.startswith("bfcl_eval.")]:
            del sys.modules[name]
        pkg = types.ModuleType("bfcl_eval")  # its __init__ (empty in BFCL) is not needed: the package is a path
        pkg.__path__ = [str(pkg_dir)]
        sys.modules["bfcl_eval"] = pkg
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingDependencyError(f"{root}: cannot import {module} ({e}); run {FIX}") from e


class Backends:
    """BFCL's backend classes, found through its `executable_backend_config`."""

    def __init__(self, root: Path) -> None:
        cfg = _import_bfcl(root, "bfcl_eval.constants.executable_backend_config")
        self.root = root
        self.modules: dict[str, str] = dict(cfg.CLASS_FILE_PATH_MAPPING)
        self.stateless: set[str] = set(getattr(cfg, "STATELESS_CLASSES", ()))
        self.func_docs: dict[str, str] = dict(cfg.MULTI_TURN_FUNC_DOC_FILE_MAPPING)

    def instances(self, entry: MultiEntry) -> dict[str, Any]:
        """Fresh instances of the entry's classes, loaded with its initial configuration (the long-
        context scenarios in `multi_turn_long_context`), as BFCL's executor makes them."""
        out = {}
        for name in entry.involved_classes:
            if name not in self.modules:
                raise ConfigError(f"{entry.id}: involved class {name!r} is not one of BFCL's backends")
            cls = getattr(_import_bfcl(self.root, self.modules[name]), name)
            inst = cls()
            if name not in self.stateless:
                inst._load_scenario(copy.deepcopy(entry.initial_config.get(name, {})),
                                    long_context="long_context" in entry.category)
            out[name] = inst
        return out


def methods_of(instances: dict[str, Any]) -> dict[str, Callable[..., Any]]:
    """Public method name -> bound method, later classes winning a shared name (as in BFCL's table)."""
    out: dict[str, Callable[..., Any]] = {}
    for inst in instances.values():
        for name, method in inspect.getmembers(inst, predicate=inspect.ismethod):
            if not name.startswith("_"):
                out[name] = method
    return out


def result_text(value: Any) -> str:
    """An execution result as BFCL records it."""
    if type(value) is str:
        return value
    if type(value) is dict:
        try:
            return json.dumps(value)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def execute(methods: dict[str, Callable[..., Any]], name: str, kwargs: dict[str, Any],
            args: tuple[Any, ...] = ()) -> str:
    """One call on the instances, its result as BFCL's executor writes it (see the module docstring)."""
    short = name.split(".")[1] if "." in name else name
    if short in REFUSED:
        return f"Error during execution: Function call {short} is not allowed."
    fn = methods.get(name)
    if fn is None:
        return f"Error during execution: name {name.split('.')[0]!r} is not defined"
    try:
        # fresh values, as BFCL's evaluation of the call text makes them: backends keep (and later
        # mutate) the lists they are given, which must not reach the logged call or the next run
        return result_text(fn(*copy.deepcopy(args), **copy.deepcopy(kwargs)))
    except Exception as e:  # BFCL records any exception of a backend as the call's result
        return f"Error during execution: {e}"


# ---- entries -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroundCall:
    """One ground-truth call, read from BFCL's Python text (positional arguments kept)."""

    name: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


def parse_ground_truth(text: str) -> GroundCall:
    """`cd(folder='document')` or `sort('final_report.pdf')`: a call of literal arguments."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
            raise ValueError("not a call of a name")
        return GroundCall(node.func.id, tuple(ast.literal_eval(a) for a in node.args),
                          {str(k.arg): ast.literal_eval(k.value) for k in node.keywords})
    except (SyntaxError, ValueError, TypeError):
        raise ConfigError(f"ground-truth call {text!r} is not a call of a name with literal arguments") from None


class MultiEntry(BaseModel):
    """One BFCL multi-turn entry with its function documents and ground truth."""

    model_config = ConfigDict(extra="forbid")

    id: str
    category: str
    question: list[list[dict[str, Any]]]
    initial_config: dict[str, Any] = Field(default_factory=dict)
    involved_classes: list[str]
    function: list[dict[str, Any]]
    """The documents offered from the first turn."""
    missed_function: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    """Turn index -> the documents held out until that turn (`miss_func`)."""
    ground_truth: list[list[str]]

    def as_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def category_of(entry_id: str) -> str:
    """`multi_turn_miss_func_12` -> `multi_turn_miss_func` (BFCL's `rsplit("_", 1)`)."""
    return entry_id.rsplit("_", 1)[0]


def is_rl_train(entry_id: str) -> bool:
    """Whether RL may train on the entry (`multi_turn_base_<i>`, i >= `RL_TRAIN_FROM`)."""
    tail = entry_id.rsplit("_", 1)[-1]
    return category_of(entry_id) == RL_TRAIN_CATEGORY and tail.isdigit() and int(tail) >= RL_TRAIN_FROM


def load_entries(source: BFCLSource, files: list[Path], n: int | None = None) -> list[MultiEntry]:
    """The first `n` entries of each question file, with their function documents (BFCL's
    `populate_test_cases_with_predefined_functions`: every involved class's documents, the missed
    functions moved to their turn) and ground truth (`possible_answer/<same name>`)."""
    from agentflan.eval.bfcl import read_records

    backends_docs = Backends(source.root).func_docs
    docs_cache: dict[str, list[dict[str, Any]]] = {}
    out: list[MultiEntry] = []
    for qpath in files:
        if not qpath.is_file():
            raise ConfigError(f"BFCL question file {qpath} does not exist (run {FIX})")
        apath = qpath.parent / "possible_answer" / qpath.name
        if not apath.is_file():
            raise ConfigError(f"{qpath}: its possible-answer file {apath} does not exist")
        truth = {r["id"]: r.get("ground_truth") for r in read_records(apath)}
        recs = read_records(qpath)[:n]
        for k, r in enumerate(recs, 1):
            where = f"{qpath}:{k}"
            cat = category_of(r["id"])
            if cat not in CATEGORIES:
                raise ConfigError(f"{where}: {r['id']!r} is not a multi-turn entry ({', '.join(CATEGORIES)})")
            classes, question = r.get("involved_classes"), r.get("question")
            if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
                raise ConfigError(f"{where}: 'involved_classes' must be a list of class names")
            if not isinstance(question, list) or not all(isinstance(t, list) for t in question):
                raise ConfigError(f"{where}: 'question' must be a list of turns (lists of messages)")
            gt = truth.get(r["id"])
            if not isinstance(gt, list) or len(gt) != len(question) or not all(isinstance(t, list) for t in gt):
                raise ConfigError(f"{where}: the possible answer of {r['id']} is not one list of calls per turn")
            functions: list[dict[str, Any]] = []
            for c in classes:
                if c not in backends_docs:
                    raise ConfigError(f"{where}: involved class {c!r} has no function documents in BFCL")
                if c not in docs_cache:
                    dpath = source.data / "multi_turn_func_doc" / backends_docs[c]
                    docs_cache[c] = [d for _, d in _json_lines(dpath)]
                functions += docs_cache[c]
            missed: dict[str, list[dict[str, Any]]] = {}
            for turn, names in (r.get("missed_function") or {}).items():
                missed[str(turn)] = []
                for name in names:
                    i = next((j for j, d in enumerate(functions) if d["name"] == name), None)
                    if i is not None:
                        missed[str(turn)].append(functions.pop(i))
            entry = MultiEntry(id=r["id"], category=cat, question=question, initial_config=r.get("initial_config") or {},
                               involved_classes=classes, function=list(functions), missed_function=missed,
                               ground_truth=gt)
            for t in range(len(question)):
                try:
                    turn_messages(entry, t)
                except ConfigError as e:
                    raise ConfigError(f"{where}: {e}") from None
            for t, calls in enumerate(gt):
                for c in calls:
                    if not isinstance(c, str):
                        raise ConfigError(f"{apath}: {r['id']} turn {t}: a ground-truth call is a string")
                    try:
                        parse_ground_truth(c)
                    except ConfigError as e:
                        raise ConfigError(f"{apath}: {r['id']} turn {t}: {e}") from None
            out.append(entry)
    if not out:
        raise ConfigError(f"no BFCL multi-turn entries in {', '.join(map(str, files))}")
    return out


def _json_lines(path: Path) -> list[tuple[int, Any]]:
    from agentflan.eval.runlog import json_lines

    if not path.is_file():
        raise MissingDependencyError(f"{path} does not exist: run {FIX}")
    return list(json_lines(path))


def tool_specs(docs: list[dict[str, Any]]) -> list[ToolSpec]:
    from agentflan.eval.bfcl import openapi

    return [ToolSpec(name=d["name"], description=str(d.get("description", "")), parameters=openapi(d.get("parameters", {})),
                     metadata={"bfcl": d}) for d in docs]


TAGS = {"final_tool": FINAL_TOOL, "suite": SUITE}


def tools_at(entry: MultiEntry, turn: int) -> list[ToolSpec]:
    """The tools offered at `turn` (the held-out ones from the turn they are added)."""
    docs = list(entry.function)
    for t in range(turn + 1):
        docs += entry.missed_function.get(str(t), [])
    return tool_specs(docs)


def turn_messages(entry: MultiEntry, turn: int) -> list[Message]:
    """The messages that open `turn`: its user (or system) messages, or BFCL's message for the
    functions a `miss_func` turn adds."""

    if str(turn) in entry.missed_function:
        return [UserMessage(content=ADDED_FUNCTIONS)]
    from agentflan.eval.bfcl import question_message

    return [question_message(m, f"{entry.id}: turn {turn}") for m in entry.question[turn]]


# ---- playing -------------------------------------------------------------------------------------------

@dataclass
class Played:
    """An entry played: per turn, per step, what the model said and what ran."""

    turns: list[list[dict[str, Any]]] = field(default_factory=list)
    transcript: Trajectory | None = None
    key: str = ""
    error: str | None = None
    context_limit: bool = False
    force_quit: bool = False


def _answer_message(action: Action, call_id: str) -> AssistantMessage:
    """A reply that makes no call, in the transcript: its text, and the answer as the terminal call
    (so that every protocol renders it back as it was said)."""
    raw = {"raw": action.texts} if action.texts else {}
    if action.kind == "unparseable":
        return AssistantMessage(content="\n".join(action.texts), metadata={**raw, "unparseable": action.error or "?"})
    answer = action.answer or ""
    return AssistantMessage(content=action.thought or answer, metadata=raw, tool_calls=[give_answer(answer, call_id)])


def play(entry: MultiEntry, proto: Protocol, backends: Backends) -> Generator[Prompt, Completion, Played]:
    """Play every turn of `entry` (see the module docstring); yields the prompts of the model."""
    instances = backends.instances(entry)
    methods = methods_of(instances)
    messages: list[Message] = []
    out = Played()
    n_calls = 0
    for t in range(len(entry.question)):
        messages += turn_messages(entry, t)
        tools = tools_at(entry, t)
        steps: list[dict[str, Any]] = []
        out.turns.append(steps)
        count = 0
        while True:
            traj = Trajectory(id=entry.id, messages=list(messages), tools=tools, tags=TAGS, source=Source(format="bfcl"))
            if not out.key:
                out.key = conversation_key(traj)
            ex: Exchange = yield from exchange(proto, traj, out.key)
            step: dict[str, Any] = {"completions": ex.completions, "action": action_dict(ex.action), "calls": [],
                                    "results": []}
            steps.append(step)
            if ex.error is not None:
                out.error = ex.error
            if ex.context_limit:
                out.context_limit = True
            if ex.action is None:
                break
            action = ex.action
            if action.kind != "call":
                messages.append(_answer_message(action, f"call_{n_calls}"))
                n_calls += 1
                break
            calls = [c.model_copy(update={"id": f"call_{n_calls + k}"}) for k, c in enumerate(action.calls)]
            n_calls += len(calls)
            messages.append(AssistantMessage(content=action.thought, tool_calls=calls,
                                             metadata={"raw": action.texts} if action.texts else {}))
            for c in calls:
                result = execute(methods, c.name, dict(c.arguments))
                step["calls"].append({"name": c.name, "arguments": c.arguments})
                step["results"].append(result)
                messages.append(ToolMessage(content=result, tool_call_id=c.id, name=c.name))
            count += 1
            if count > STEP_LIMIT:
                out.force_quit = True
                break
        if out.error is not None or out.context_limit or out.force_quit:
            break
    out.transcript = Trajectory(id=entry.id, messages=messages, tools=tools_at(entry, len(entry.question) - 1),
                                tags=TAGS, source=Source(format="bfcl", original_id=entry.id))
    return out


# ---- BFCL's multi-turn checker, reproduced --------------------------------------------------------------

Calls = list[dict[str, Any]]
"""One step's calls: `{"name", "arguments"}` each."""


def _differences(model: Any, truth: Any) -> dict[str, Any]:
    out = {}
    for attr in vars(truth):
        if attr.startswith("_"):
            continue
        got, want = getattr(model, attr), getattr(truth, attr)
        if got != want:
            out[attr] = {"model": _short(got), "ground_truth": _short(want)}
    return out


def _short(v: Any, limit: int = 300) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + "..."


def _missing(truth: list[str], model: list[str]) -> list[str]:
    """The ground-truth results not among the model's, each model result used once."""
    pool = Counter(model)
    missing = []
    for r in truth:
        if pool[r] > 0:
            pool[r] -= 1
        else:
            missing.append(r)
    return missing


def check(entry: MultiEntry, model_turns: list[list[Calls]], backends: Backends) -> dict[str, Any]:
    """BFCL's verdict on an entry's model calls (per turn, per step; steps without calls ignored):
    `{"valid", "error_type", "error", "turn", "turns": [per-turn rule], "calls_where_none_due"}`."""
    if len(model_turns) != len(entry.ground_truth):
        return {"valid": False, "error_type": "multi_turn:force_terminated", "turn": len(model_turns),
                "error": f"{len(model_turns)} turn(s) played of {len(entry.ground_truth)}",
                "turns": [], "calls_where_none_due": 0}
    model_inst, truth_inst = backends.instances(entry), backends.instances(entry)
    model_methods, truth_methods = methods_of(model_inst), methods_of(truth_inst)
    results: list[str] = []
    turns: list[dict[str, Any]] = []
    none_due = 0
    for t, truth_calls in enumerate(entry.ground_truth):
        steps = [s for s in model_turns[t] if s]
        for s in steps:
            results += [execute(model_methods, c["name"], dict(c["arguments"])) for c in s]
        truth_results = []
        for text in truth_calls:
            g = parse_ground_truth(text)
            truth_results.append(execute(truth_methods, g.name, g.kwargs, g.args))
        if not truth_calls:
            none_due += bool(steps)
            turns.append({"rule": "not_checked", "calls": sum(map(len, steps))})
            continue
        if not steps:
            turns.append({"rule": "multi_turn:empty_turn_model_response"})
            continue
        diffs = {name: d for name in truth_inst if (d := _differences(model_inst[name], truth_inst[name]))}
        if diffs:
            turns.append({"rule": "multi_turn:instance_state_mismatch", "differences": diffs})
            continue
        missing = _missing(truth_results, results)
        if missing:
            turns.append({"rule": "multi_turn:execution_response_mismatch", "missing": [m[:300] for m in missing]})
            continue
        turns.append({"rule": "pass"})
    failed = next((k for k, x in enumerate(turns) if x["rule"] not in ("pass", "not_checked")), None)
    return {"valid": failed is None, "error_type": None if failed is None else turns[failed]["rule"], "turn": failed,
            "error": None if failed is None else _message(turns[failed]["rule"], failed),
            "turns": turns, "calls_where_none_due": none_due}


def _message(rule: str, turn: int) -> str:
    return {"multi_turn:empty_turn_model_response": f"no call in turn {turn}, where the ground truth calls",
            "multi_turn:instance_state_mismatch": f"a backend's state after turn {turn} differs from the ground truth's",
            "multi_turn:execution_response_mismatch":
                f"a ground-truth result of turn {turn} is not among the model's results"}.get(rule, rule)


def model_calls(played_turns: list[list[dict[str, Any]]]) -> list[list[Calls]]:
    return [[step["calls"] for step in turn] for turn in played_turns]


def judge(entry: MultiEntry, played_turns: list[list[dict[str, Any]]], backends: Backends, *,
          force_quit: bool = False, context_limit: bool = False) -> dict[str, Any]:
    """The verdict of a played entry: BFCL's check, with why turns are missing when they are."""
    v = check(entry, model_calls(played_turns), backends)
    if context_limit:
        v["outcome"] = "context_limit"
    elif force_quit:
        v["outcome"] = "step_limit"
    else:
        v["outcome"] = "pass" if v["valid"] else str(v["error_type"]).removeprefix("multi_turn:")
    return v


# ---- the gold player ------------------------------------------------------------------------------------

DONE = "Done."
THOUGHT = "I call what this step needs."


def gold_transcript(entry: MultiEntry, backends: Backends, one_call_per_step: bool) -> tuple[Trajectory, list[int]]:
    """The ground truth as a conversation: per turn its calls (in one reply, or one per reply),
    their results, then a reply without calls; and where each turn ends. Positional arguments are
    named from the backend method's signature, as a model states them."""
    instances = backends.instances(entry)
    methods = methods_of(instances)
    messages: list[Message] = []
    ends = []
    n = 0
    for t, truth in enumerate(entry.ground_truth):
        messages += turn_messages(entry, t)
        calls = []
        for text in truth:
            g = parse_ground_truth(text)
            args = dict(g.kwargs)
            if g.args:
                params = list(inspect.signature(methods[g.name]).parameters) if g.name in methods else []
                args = {**dict(zip(params, g.args, strict=False)), **args}
            calls.append(ToolCall(id=f"call_{n}", name=g.name, arguments=args))
            n += 1
        groups = [[c] for c in calls] if one_call_per_step else ([calls] if calls else [])
        for group in groups:
            # a thought, as protocols that elicit one before the call (`tflan`) read it back
            messages.append(AssistantMessage(content=THOUGHT, tool_calls=group))
            for c in group:
                messages.append(ToolMessage(content=execute(methods, c.name, dict(c.arguments)), tool_call_id=c.id,
                                            name=c.name))
        messages.append(AssistantMessage(content=DONE, tool_calls=[give_answer(DONE, f"call_{n}")]))
        n += 1
        ends.append(len(messages))
    return Trajectory(id=entry.id, messages=messages, tools=tools_at(entry, len(entry.question) - 1), tags=TAGS,
                      source=Source(format="bfcl", original_id=entry.id)), ends


def gold_responder(entry: MultiEntry, proto: Protocol, backends: Backends) -> Callable[[Prompt], Completion]:
    """What the gold conversation says next, rendered by `proto` as the model sees it at that turn
    (with that turn's tools), for a prompt of `entry`; an empty reply to a prompt it does not know.
    Per entry: entries of several categories share their first prompts (the same question)."""
    several = proto.name == "bfcl"  # BFCL's own format states several calls per reply
    gold, ends = gold_transcript(entry, backends, one_call_per_step=not several)
    first = Trajectory(id=entry.id, messages=turn_messages(entry, 0), tools=tools_at(entry, 0), tags=TAGS,
                       source=Source(format="bfcl"))
    key = conversation_key(first)  # the key `play` derives
    from agentflan.eval.runlog import gold_responder as responder

    return responder([proto.render(gold.model_copy(update={"messages": gold.messages[:end], "tools": tools_at(entry, t)}),
                                   key) for t, end in enumerate(ends)])


def expert_play(entry: MultiEntry, proto: Protocol, backends: Backends) -> Generator[Prompt, Completion, Played]:
    """`play` with the gold replies (the `expert` policy, which must score 100%): every prompt is
    answered here, through the protocol's rendering and reading, so no model is asked."""
    yield from ()  # a generator (what `run_logged` plays) that never prompts a model
    respond = gold_responder(entry, proto, backends)
    gen = play(entry, proto, backends)
    try:
        prompt = next(gen)
        while True:
            prompt = gen.send(respond(prompt))
    except StopIteration as stop:
        played: Played = stop.value
        return played


# ---- records, rescoring, summaries ---------------------------------------------------------------------

def record(entry: MultiEntry, protocol: str, agent: str, played: Played, backends: Backends) -> dict[str, Any]:
    verdict = None if played.error is not None else judge(entry, played.turns, backends, force_quit=played.force_quit,
                                                          context_limit=played.context_limit)
    return {"suite": SUITE, "protocol": protocol, "agent": agent, "task_id": entry.id, "category": entry.category,
            "entry": entry.as_json(), "bfcl_eval": str(backends.root), "key": played.key, "turns": played.turns,
            "force_quit": played.force_quit, **({"context_limit": True} if played.context_limit else {}),
            "transcript": played.transcript.to_json_dict() if played.transcript is not None else None,
            "error": played.error, "verdict": verdict}


def rescore(rec: dict[str, Any], proto: Protocol | None) -> dict[str, Any] | None:
    """A logged entry's verdict re-derived without a model: every step's completions replayed
    through the protocol (the calls it reads), executed again and checked."""
    from agentflan.eval.runlog import replay

    if rec.get("error") is not None:
        return None
    entry = MultiEntry.model_validate(rec["entry"])
    logged = Path(str(rec.get("bfcl_eval", "")))
    backends = _backends(logged if rec.get("bfcl_eval") and _has_backends(logged) else locate().root)
    turns = []
    for t, steps in enumerate(rec["turns"]):
        tools = tools_at(entry, t)
        out_steps = []
        for step in steps:
            calls: Calls = []
            if proto is not None and step.get("completions"):
                traj = Trajectory(id=entry.id, messages=turn_messages(entry, 0), tools=tools, tags=TAGS,
                                  source=Source(format="bfcl"))
                action = replay(proto, traj, rec.get("key", ""), step["completions"])
                if action.kind == "call":
                    calls = [{"name": c.name, "arguments": c.arguments} for c in action.calls]
            elif proto is None:
                calls = step["calls"]
            out_steps.append({"calls": calls})
        turns.append(out_steps)
    return judge(entry, turns, backends, force_quit=bool(rec.get("force_quit")),
                 context_limit=bool(rec.get("context_limit")))


_LOADED: dict[Path, Backends] = {}


def _backends(root: Path) -> Backends:
    if root not in _LOADED:
        _LOADED.clear()  # one bfcl_eval is imported at a time
        _LOADED[root] = Backends(root)
    return _LOADED[root]


def outcomes(rec: dict[str, Any]) -> dict[tuple[str, str], float]:
    """A scored entry's outcomes for paired comparisons: valid, overall and in its category."""
    ok = float(bool(rec["verdict"]["valid"]))
    return {("accuracy", "all"): ok, ("accuracy", str(rec.get("category", "?"))): ok}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy overall and per category, why entries fail (the first failing rule), turns passed,
    calls made where the ground truth makes none, step-limit and context-limit endings."""
    scored = [r for r in records if r.get("error") is None and r.get("verdict") is not None]
    vs = [r["verdict"] for r in scored]
    by_cat: dict[str, list[bool]] = {}
    for r in scored:
        by_cat.setdefault(r["category"], []).append(bool(r["verdict"]["valid"]))
    turn_rules = [x["rule"] for v in vs for x in v.get("turns", []) if x["rule"] != "not_checked"]
    first = records[0] if records else {}
    return {"suite": SUITE, "protocol": first.get("protocol"), "agent": first.get("agent"), "items": len(records),
            "scored": len(vs), "errors": len(records) - len(vs),
            "accuracy": rate(sum(bool(v["valid"]) for v in vs), len(vs)),
            "by_category": {k: rate(sum(x), len(x)) for k, x in sorted(by_cat.items())},
            "turns_passed": rate(sum(r == "pass" for r in turn_rules), len(turn_rules)),
            "failures": dict(sorted(Counter(str(v["error_type"]) for v in vs if not v["valid"]).items())),
            "outcomes": dict(sorted(Counter(str(v.get("outcome")) for v in vs).items())),
            "calls_where_none_due": sum(int(v.get("calls_where_none_due", 0)) for v in vs),
            "steps": sum(len(turn) for r in scored for turn in r.get("turns", [])),
            "error_examples": sorted({str(r["error"])[:200] for r in records if r.get("error") is not None})[:3]}


def table(summaries: list[dict[str, Any]]) -> str:
    """Markdown: accuracy per run and category, turns passed, the failing rules."""
    cats = [c for c in CATEGORIES if any(c in s["by_category"] for s in summaries)]
    head = ["run", "protocol", "entries", "accuracy %", *[f"{c.removeprefix('multi_turn_')} %" for c in cats],
            "turns passed %", "failures (first rule)", "step limit", "context limit", "errors"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        fails = ", ".join(f"{k.removeprefix('multi_turn:')} {v}" for k, v in s["failures"].items())
        rows.append("| " + " | ".join([
            str(s.get("run", "")), f"`{s.get('protocol')}`", str(s["scored"]), pct(s["accuracy"]),
            *[pct(s["by_category"][c]) if c in s["by_category"] else "" for c in cats],
            pct(s["turns_passed"]), fails, str(s["outcomes"].get("step_limit", 0)),
            str(s["outcomes"].get("context_limit", 0)), str(s["errors"])]) + " |")
    return "\n".join(rows) + "\n"


# ---- the run ----------------------------------------------------------------------------------------------

def run(*, engine: Any, policy: str, protocols: list[str], tasks_file: Path | None, n: int, out_root: Path,
        agent_name: str, base_config: dict[str, Any], resume: bool,
        progress: Callable[[str, int], Callable[[int], None]]) -> list[Any]:
    """`agentflan eval bfcl-multi`: the four categories (`n` entries spread over them), or one
    question file (`--tasks`), under each protocol; one logged run folder per protocol."""
    from agentflan.eval.bfcl import BFCL
    from agentflan.eval.runlog import Run, run_logged, write_summary
    from agentflan.eval.suite import safe_name
    from agentflan.formats.protocols import get_protocol

    if policy not in ("model", "expert"):
        raise ConfigError(f"--policy {policy}: bfcl-multi plays a model, or `expert` (the ground truth replayed)")
    source = locate(tasks_file)
    backends = Backends(source.root)
    files = [tasks_file] if tasks_file else [source.question_file(c) for c in CATEGORIES]
    per = n if tasks_file else math.ceil(n / len(files))
    entries = load_entries(source, files, per)[:n]
    trained = [e.id for e in entries if is_rl_train(e.id)]
    if trained:  # not held out: a model trained by RL on bfcl-multi has seen them
        log.warning("bfcl-multi: %d of %d entries (%s, ...) are the ones RL trains on (%s from %d): a model "
                    "trained with envs: [bfcl-multi] is not held out on them", len(trained), len(entries),
                    trained[0], RL_TRAIN_CATEGORY, RL_TRAIN_FROM)
    runs = []
    for name in protocols or BFCL.default_protocols(engine):
        proto = get_protocol(name, getattr(engine, "template", None))
        config = {**base_config, "suite": SUITE, "protocol": proto.name, "agent": agent_name, "n": len(entries),
                  "tasks_file": str(tasks_file) if tasks_file else None, "items": [e.id for e in entries],
                  "step_limit": STEP_LIMIT}
        out = out_root / f"{SUITE}-{safe_name(proto.name)}"
        player = expert_play if policy == "expert" else play

        def start(i: int, p: Protocol = proto, f: Any = player) -> Generator[Prompt, Completion, Played]:
            return f(entries[i], p, backends)  # type: ignore[no-any-return]

        def rec(i: int, played: Played, p: Protocol = proto) -> dict[str, Any]:
            return record(entries[i], p.name, agent_name, played, backends)

        records, resumed = run_logged(
            out, config, [e.id for e in entries], start, rec, None if policy == "expert" else engine, resume=resume,
            progress=progress(f"{SUITE} / {proto.name}", len(entries)))
        runs.append(write_summary(Run(SUITE, proto.name, out, records, resumed, summarize(records))))
    return runs


def result_calls(result: Any) -> list[list[Calls]]:
    """The calls of a BFCL-style multi-turn result (per turn, per step, a reply in BFCL's Python
    syntax, as BFCL's prompting handlers record them), each reply read by the `bfcl` protocol; a
    reply that does not decode to calls makes none (BFCL skips it)."""
    from agentflan.formats.protocols import BFCLProtocol

    if not isinstance(result, list) or not all(isinstance(t, list) and all(isinstance(s, str) for s in t)
                                               for t in result):
        raise ConfigError("a multi-turn result is a list (turns) of lists (steps) of reply strings")
    proto = BFCLProtocol()
    stub = Trajectory(id="x", messages=[], tags=TAGS, source=Source(format="bfcl"))
    out: list[list[Calls]] = []
    for turn in result:
        steps: list[Calls] = []
        for text in turn:
            action = proto.parse(text, stub)
            steps.append([{"name": c.name, "arguments": c.arguments} for c in action.calls]
                         if action.kind == "call" else [])
        out.append(steps)
    return out


BFCL_MULTI = ModuleSuite(SUITE, __name__)
"""The suite (`eval.suite.SUITES` registers it as `bfcl-multi`)."""
