"""BFCL multi-turn (`eval bfcl-multi`): a tiny bfcl-eval-shaped tree written here (a backend class of
our own, entries and ground truth in BFCL's formats), so these run on a fresh clone without BFCL's
code; and, when BFCL's multi-turn data was fetched (`bench/fetch_bfcl.py`), its real ground truth."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.client import RequestError
from agentflan.eval import bfcl_multi as bm
from agentflan.formats.protocols import Prompt, get_protocol
from agentflan.models.driver import drive
from agentflan.models.engines import ScriptedEngine

BACKEND = '''
class CounterAPI:
    def __init__(self):
        self.counters = {}
        self.tags = []
        self._note = "private state is not compared"

    def _load_scenario(self, scenario, long_context=False):
        self.counters = dict(scenario.get("counters", {}))
        self.tags = []
        if long_context:
            self.counters.update({f"filler_{i}": i for i in range(30)})

    def create(self, name):
        if name in self.counters:
            return {"error": f"counter {name} exists"}
        self.counters[name] = 0
        return {"created": name}

    def add(self, name, amount=1):
        if name not in self.counters:
            raise KeyError(name)
        self.counters[name] += amount
        return {"value": self.counters[name]}

    def get(self, name):
        return self.counters.get(name, -1)

    def tag(self, names):
        self.tags.append(names)  # keeps the caller's list, as BFCL's posting API does
        return "tagged"

    def untag(self, name):
        for group in self.tags:
            if name in group:
                group.remove(name)
                return "untagged"
        return {"error": f"{name} is not tagged"}
'''
CONFIG = '''
CLASS_FILE_PATH_MAPPING = {"CounterAPI": "bfcl_eval.eval_checker.multi_turn_eval.func_source_code.counter_api"}
STATELESS_CLASSES = []
MULTI_TURN_FUNC_DOC_FILE_MAPPING = {"CounterAPI": "counter_api.json"}
'''


def _doc(name: str, params: dict[str, str], required: list[str]) -> dict[str, Any]:
    return {"name": name, "description": f"Counter API: {name}.",
            "parameters": {"type": "dict", "properties": {p: {"type": t, "description": p} for p, t in params.items()},
                           "required": required}}


DOCS = [_doc("create", {"name": "string"}, ["name"]), _doc("add", {"name": "string", "amount": "integer"}, ["name"]),
        _doc("get", {"name": "string"}, ["name"]), _doc("tag", {"names": "array"}, ["names"]),
        _doc("untag", {"name": "string"}, ["name"])]
BASE_TURNS = [("Create a counter called apples and add 2 to it.", ["create(name='apples')", "add(name='apples',amount=2)"]),
              ("How many apples now?", ["get('apples')"]),
              ("Tag apples and pears.", ["tag(names=['apples', 'pears'])"]),
              ("Untag pears.", ["untag(name='pears')"])]


def _user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def entries() -> dict[str, tuple[dict[str, Any], list[list[str]]]]:
    cfg = {"CounterAPI": {"counters": {"pears": 5}}}
    base = {"question": [_user(q) for q, _ in BASE_TURNS], "initial_config": cfg, "involved_classes": ["CounterAPI"]}
    return {
        "multi_turn_base": (base, [gt for _, gt in BASE_TURNS]),
        "multi_turn_long_context": (base, [gt for _, gt in BASE_TURNS]),
        "multi_turn_miss_param": ({**base, "question": [_user("Add 3 to a counter."), _user("The pears one.")]},
                                  [[], ["add(name='pears',amount=3)"]]),
        "multi_turn_miss_func": ({**base, "question": [_user("Create apples."), _user("Tag apples."), []],
                                  "missed_function": {"2": ["tag"]}},
                                 [["create(name='apples')"], [], ["tag(names=['apples'])"]]),
    }


def write_tree(root: Path) -> Path:
    """BFCL's layout as `bench/fetch_bfcl.py` leaves it: data files, `possible_answer/`,
    `multi_turn_func_doc/`, and the backends under `official/bfcl_eval/`."""
    pkg = root / "official" / "bfcl_eval"
    (pkg / "constants").mkdir(parents=True)
    (pkg / "constants" / "executable_backend_config.py").write_text(CONFIG)
    backends = pkg / "eval_checker" / "multi_turn_eval" / "func_source_code"
    backends.mkdir(parents=True)
    (backends / "counter_api.py").write_text(BACKEND)
    (root / "multi_turn_func_doc").mkdir()
    (root / "multi_turn_func_doc" / "counter_api.json").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    (root / "possible_answer").mkdir()
    for cat, (entry, gt) in entries().items():
        (root / f"BFCL_v4_{cat}.json").write_text(json.dumps({"id": f"{cat}_0", **entry}) + "\n")
        (root / "possible_answer" / f"BFCL_v4_{cat}.json").write_text(json.dumps({"id": f"{cat}_0", "ground_truth": gt}) + "\n")
    return root


@pytest.fixture(autouse=True)
def _forget_bfcl_eval():
    """The backends are imported as the package `bfcl_eval`: other tests import BFCL's own."""
    yield
    for name in [m for m in sys.modules if m == "bfcl_eval" or m.startswith("bfcl_eval.")]:
        del sys.modules[name]


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = write_tree(tmp_path / "bfcl")
    monkeypatch.setenv("AGENTFLAN_BFCL_DATA", str(root))
    monkeypatch.delenv("AGENTFLAN_BFCL_EVAL", raising=False)
    return root


def _load(tree: Path) -> tuple[dict[str, bm.MultiEntry], bm.Backends]:
    source = bm.locate()
    loaded = bm.load_entries(source, [source.question_file(c) for c in bm.CATEGORIES])
    return {e.category: e for e in loaded}, bm.Backends(source.root)


def calls(*texts: str) -> list[dict[str, Any]]:
    out = []
    for t in texts:
        g = bm.parse_ground_truth(t.replace("get('apples')", "get(name='apples')"))  # as a model names it
        out.append({"name": g.name, "arguments": g.kwargs})
    return out


def test_expert_scores_100_under_every_protocol_and_rescores(tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["eval", "bfcl-multi", "--policy", "expert", "--protocol", "bfcl", "--protocol", "json",
                                   "--protocol", "react", "--protocol", "native", "--protocol", "tflan", "-o", str(out)])
    assert res.exit_code == 0, res.output
    for proto in ("bfcl", "json", "react", "native", "tflan"):
        summary = json.loads((out / f"bfcl-multi-{proto}" / "summary.json").read_text())
        assert summary["accuracy"]["rate"] == 1.0, (proto, summary)
        assert set(summary["by_category"]) == set(bm.CATEGORIES)
        assert summary["turns_passed"]["rate"] == 1.0
    rec = json.loads((out / "bfcl-multi-bfcl" / "episodes.jsonl").read_text().splitlines()[0])
    assert rec["suite"] == "bfcl-multi" and rec["verdict"]["valid"]
    # the positional ground truth `get('apples')` is stated with its parameter's name
    assert rec["turns"][1][0]["calls"] == [{"name": "get", "arguments": {"name": "apples"}}]
    assert rec["turns"][2][0]["calls"] == [{"name": "tag", "arguments": {"names": ["apples", "pears"]}}]  # not mutated
    scored = CliRunner().invoke(cli, ["score", str(out)])
    assert scored.exit_code == 0, scored.output
    assert "bfcl-multi" in scored.output


def test_rules_per_turn(tree: Path) -> None:
    es, be = _load(tree)
    base = es["multi_turn_base"]
    gold = [[calls(*gt)] for _, gt in BASE_TURNS]
    assert bm.check(base, gold, be)["valid"]
    # one call per step, a prose step with no calls between: the same
    split = [[calls(c) for c in gt] + [[]] for _, gt in BASE_TURNS]
    assert bm.check(base, split, be)["valid"]
    v = bm.check(base, [gold[0], [], gold[2], gold[3]], be)  # turn 1 made no call
    assert not v["valid"] and v["error_type"] == "multi_turn:empty_turn_model_response" and v["turn"] == 1
    assert [t["rule"] for t in v["turns"]] == ["pass", "multi_turn:empty_turn_model_response", "pass", "pass"]
    v = bm.check(base, [[calls("create(name='apples')", "add(name='apples',amount=3)")], *gold[1:]], be)
    assert v["error_type"] == "multi_turn:instance_state_mismatch" and v["turn"] == 0
    assert "counters" in v["turns"][0]["differences"]["CounterAPI"]
    # the state is right but `get` was asked in the turn before: results of earlier turns count
    early = [[calls("create(name='apples')", "add(name='apples',amount=2)", "get(name='apples')")],
             [calls("get(name='pears')")], *gold[2:]]
    assert bm.check(base, early, be)["valid"]
    v = bm.check(base, [gold[0], [calls("get(name='pears')")], *gold[2:]], be)
    assert v["error_type"] == "multi_turn:execution_response_mismatch" and v["turn"] == 1 and v["turns"][1]["missing"] == ["2"]
    v = bm.check(base, gold[:3], be)
    assert v["error_type"] == "multi_turn:force_terminated"
    # a call where the ground truth makes none is not checked there, but its state change counts later
    mp = es["multi_turn_miss_param"]
    v = bm.check(mp, [[calls("get(name='pears')")], [calls("add(name='pears',amount=3)")]], be)
    assert v["valid"] and v["calls_where_none_due"] == 1 and v["turns"][0]["rule"] == "not_checked"
    v = bm.check(mp, [[calls("add(name='pears',amount=1)")], [calls("add(name='pears',amount=3)")]], be)
    assert v["error_type"] == "multi_turn:instance_state_mismatch" and v["turn"] == 1


def test_execution_results_as_bfcl_writes_them(tree: Path) -> None:
    es, be = _load(tree)
    methods = bm.methods_of(be.instances(es["multi_turn_base"]))
    assert bm.execute(methods, "create", {"name": "kiwis"}) == '{"created": "kiwis"}'  # a dict: json.dumps
    assert bm.execute(methods, "get", {"name": "kiwis"}) == "0"  # anything else: str
    assert bm.execute(methods, "add", {"name": "nope"}) == "Error during execution: 'nope'"
    assert bm.execute(methods, "add", {"nme": "x"}).startswith("Error during execution: ")
    assert bm.execute(methods, "nothing", {}) == "Error during execution: name 'nothing' is not defined"
    assert bm.execute(methods, "exit", {}) == "Error during execution: Function call exit is not allowed."
    assert "_load_scenario" not in methods
    long = be.instances(es["multi_turn_long_context"])["CounterAPI"]
    assert "filler_0" in long.counters  # the long-context scenario is BFCL's backend's own


def test_miss_func_adds_the_held_out_function_at_its_turn(tree: Path) -> None:
    es, be = _load(tree)
    entry = es["multi_turn_miss_func"]
    assert [d["name"] for d in entry.function] == ["create", "add", "get", "untag"]
    engine = ScriptedEngine(texts=["[create(name='apples')]", "Done.", "I have no function to tag.",
                                   "[tag(names=['apples'])]", "Done."])
    (played,) = drive([bm.play(entry, get_protocol("bfcl"), be)], engine)
    prompts: list[Prompt] = engine.prompts
    assert "\"name\": \"tag\"" not in prompts[2].messages[0].content
    assert "\"name\": \"tag\"" in prompts[3].messages[0].content
    assert prompts[3].messages[-1].content == bm.ADDED_FUNCTIONS
    v = bm.judge(entry, played.turns, be)
    assert v["valid"], v
    wrong = ScriptedEngine(texts=["[create(name='apples')]", "Done.", "[tag(names=['apples'])]", "Done.", "Done."])
    (played,) = drive([bm.play(entry, get_protocol("bfcl"), be)], wrong)
    # not offered yet, but BFCL's executor runs any method of the entry's backends: so does this one
    assert played.turns[1][0]["results"] == ["tagged"]
    assert bm.judge(entry, played.turns, be)["error_type"] == "multi_turn:empty_turn_model_response"


def test_step_limit_force_quits_the_entry(tree: Path) -> None:
    es, be = _load(tree)
    entry = es["multi_turn_base"]
    engine = ScriptedEngine(respond=lambda p: "[get(name='pears')]")
    (played,) = drive([bm.play(entry, get_protocol("bfcl"), be)], engine)
    assert played.force_quit and len(played.turns) == 1 and len(played.turns[0]) == bm.STEP_LIMIT + 1
    v = bm.judge(entry, played.turns, be, force_quit=True)
    assert not v["valid"] and v["error_type"] == "multi_turn:force_terminated" and v["outcome"] == "step_limit"
    summary = bm.summarize([bm.record(entry, "bfcl", "m", played, be)])
    assert summary["outcomes"] == {"step_limit": 1} and summary["steps"] == bm.STEP_LIMIT + 1
    row = bm.table([summary]).splitlines()[-1].split(" | ")
    assert row[-3:] == ["1", "0", "0 |"]  # step limit, context limit, errors


def test_failed_request_is_an_error_not_a_verdict(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    es, be = _load(tree)
    entry = es["multi_turn_base"]
    engine = ScriptedEngine(respond=lambda p: RequestError("HTTP 500", url="x", status=500) if len(p.messages) > 3
                            else "[create(name='apples'), add(name='apples', amount=2)]")
    (played,) = drive([bm.play(entry, get_protocol("bfcl"), be)], engine)
    rec = bm.record(entry, "bfcl", "m", played, be)
    assert rec["error"] and rec["verdict"] is None
    assert bm.rescore(rec, get_protocol("bfcl")) is None


def test_rescore_replays_completions_through_the_protocol(tree: Path) -> None:
    es, be = _load(tree)
    entry = es["multi_turn_miss_param"]
    engine = ScriptedEngine(texts=["[get(name='pears')]", "No count given.", "[add(name='pears', amount=3)]", "ok"])
    (played,) = drive([bm.play(entry, get_protocol("bfcl"), be)], engine)
    rec = json.loads(json.dumps(bm.record(entry, "bfcl", "m", played, be)))
    assert rec["verdict"]["valid"]
    assert bm.rescore(rec, get_protocol("bfcl")) == rec["verdict"]
    rec["turns"][1][0]["completions"][0]["text"] = "[add(name='pears', amount=4)]"  # the log is what is judged
    assert bm.rescore(rec, get_protocol("bfcl"))["error_type"] == "multi_turn:instance_state_mismatch"


def test_missing_bfcl_is_exit_4_with_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTFLAN_BFCL_DATA", str(tmp_path / "none"))
    monkeypatch.delenv("AGENTFLAN_BFCL_EVAL", raising=False)
    res = CliRunner().invoke(cli, ["eval", "bfcl-multi", "--policy", "expert", "-o", str(tmp_path / "o")])
    assert res.exit_code == 4, res.output
    assert "fetch_bfcl.py" in res.output and "Traceback" not in res.output


def test_bad_ground_truth_names_file_and_entry(tree: Path) -> None:
    path = tree / "possible_answer" / "BFCL_v4_multi_turn_base.json"
    path.write_text(json.dumps({"id": "multi_turn_base_0", "ground_truth": [["create(name=x)"], [], [], []]}) + "\n")
    res = CliRunner().invoke(cli, ["eval", "bfcl-multi", "--policy", "expert", "-o", str(tree / "o")])
    assert res.exit_code == 4 and "multi_turn_base_0" in res.output and "create(name=x)" in res.output, res.output


# ---- BFCL's own data, when fetched --------------------------------------------------------------------

@pytest.fixture(scope="module")
def real() -> tuple[list[bm.MultiEntry], bm.Backends]:
    from agentflan.errors import MissingDependencyError

    try:
        source = bm.locate()
        files = [source.question_file(c) for c in bm.CATEGORIES]
        if not all(f.is_file() for f in files):
            raise MissingDependencyError("no multi-turn files")
    except MissingDependencyError:
        pytest.skip("BFCL's multi-turn data not fetched: run `python bench/fetch_bfcl.py` (PyPI: bfcl-eval)")
    return bm.load_entries(source, files, 25), bm.Backends(source.root)


def test_real_ground_truth_passes_through_the_bfcl_protocol(real: tuple[list[bm.MultiEntry], bm.Backends]) -> None:
    entries, be = real
    proto = get_protocol("bfcl")
    failed = []
    for e in entries:
        gen = bm.expert_play(e, proto, be)
        try:
            next(gen)
        except StopIteration as stop:
            v = bm.judge(e, stop.value.turns, be)
            if not v["valid"]:
                failed.append((e.id, v["error_type"], v["turn"]))
    assert not failed, failed


def test_bad_question_names_file_line_and_turn(tree: Path) -> None:
    path = tree / "BFCL_v4_multi_turn_base.json"
    entry = json.loads(path.read_text())
    entry["question"][1] = [{"role": "assistant", "content": "hi"}]
    path.write_text(json.dumps(entry) + "\n")
    res = CliRunner().invoke(cli, ["eval", "bfcl-multi", "--policy", "expert", "-o", str(tree / "o")])
    assert res.exit_code == 4 and f"{path}:1" in res.output and "turn 1" in res.output, res.output
