"""BFCL-format function calling: hand-made predictions for each rule of BFCL's AST checker and decoder,
irrelevance that an unparseable reply cannot pass, every outcome, and predictions files scored and
re-scored without a model."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.errors import ParseError
from agentflan.eval import bfcl
from agentflan.eval.driver import drive
from agentflan.eval.engines import ScriptedEngine
from agentflan.eval.runlog import exchange
from agentflan.formats.protocols import conversation_key, get_protocol
from agentflan.formats.pycall import decode_calls

AREA = {"name": "calc.area", "description": "Area of a shape.", "parameters": {"type": "dict", "properties": {
    "base": {"type": "integer", "description": "base"}, "height": {"type": "float", "description": "height"},
    "unit": {"type": "string", "description": "unit"}, "flag": {"type": "boolean", "description": "flag"},
    "dims": {"type": "array", "items": {"type": "float"}, "description": "dims"},
    "point": {"type": "tuple", "items": {"type": "integer"}, "description": "point"},
    "opts": {"type": "dict", "description": "options", "properties": {}},
    "rows": {"type": "array", "items": {"type": "dict"}, "description": "rows"},
    "data": {"type": "any", "description": "data"}}, "required": ["base", "height"]}}
AREA_GT = {"calc.area": {"base": [10], "height": [5.0], "unit": ["meters", "m", ""], "flag": [True, ""],
                         "dims": [[1.0, 2.0], ""], "point": [[1, 2], ""], "opts": [{"mode": ["fast"], "level": [1, ""]}, ""],
                         "rows": [[{"k": ["a"]}], ""], "data": ["x", ""]}}
OTHER = {"name": "other", "description": "Something else.", "parameters": {"type": "dict", "properties": {
    "x": {"type": "integer", "description": "x"}}, "required": ["x"]}}
F = {"name": "f", "description": "f", "parameters": {"type": "dict", "properties": {
    "a": {"type": "integer", "description": "a"}}, "required": ["a"]}}


def item(category: str, functions: list, truth: list) -> bfcl.BFCLItem:
    return bfcl.BFCLItem(id=f"{category}_0", category=category, question=[{"role": "user", "content": "q"}],
                         function=functions, ground_truth=truth)


def verdict(it: bfcl.BFCLItem, result, **kw):
    return bfcl.judge(it, bfcl.action_of_result(result), **kw)


OK = "calc.area(base=10, height=5.0"


@pytest.mark.parametrize(("args", "valid", "error"), [
    ("", True, None),                                   # optional parameters may be left out
    (", unit='meters', flag=True, data='x'", True, None),
    ("|base=10, height=5", True, None),                 # an int is accepted for a float (converted)
    ("|base=10.0, height=5.0", False, "type_error:simple"),  # ... a float never for an int
    ("|base=True, height=5.0", False, "type_error:simple"),  # types compare exactly: a bool is no int
    ("|base='10', height=5.0", False, "type_error:simple"),
    ("|height=5.0", False, "missing_required"),
    (", color='red'", False, "unexpected_param"),
    ("|base=11, height=5.0", False, "value_error:others"),   # acceptable-value lists
    (", unit='Meters'", True, None),                    # strings: case-insensitive ...
    (", unit='m.'", True, None),                        # ... ,./-_*^ and spaces removed
    (", unit='me ters'", True, None),
    (", unit='metres'", False, "value_error:string"),
    (", flag=False", False, "value_error:others"),
    (", dims=[1.0, 2.0]", True, None),
    (", dims=[1, 2]", True, None),  # BFCL skips the item type check when "" (optional) is acceptable; 1 == 1.0
    (", dims=[2.0, 1.0]", False, "value_error:list"),   # lists match in order
    (", point=(1, 2)", True, None),                     # a tuple for a tuple parameter
    (", point=[1, 2]", True, None),
    (", opts={'mode': 'FAST'}", True, None),            # dict values standardized, optional keys may be absent
    (", opts={'mode': 'fast', 'level': 2}", False, "value_error:dict_value"),
    (", opts={'mode': 'fast', 'extra': 1}", False, "value_error:dict_key"),
    (", opts={'level': 1}", False, "value_error:dict_key"),
    (", rows=[{'k': 'A'}]", True, None),                # lists of dicts, per position
    (", rows=[{'k': 'a'}, {'k': 'a'}]", False, "list_dict_count"),
    (", data='X'", True, None),                         # any: a string
])
def test_simple_rules(args, valid, error):
    text = f"[calc.area({args[1:]})]" if args.startswith("|") else f"[{OK}{args})]"
    v = verdict(item("simple_python", [AREA], [AREA_GT]), text)
    assert v["valid"] is valid, (text, v)
    if error:
        assert error in v["error_type"], v


def test_counts_names_optional_and_variables():
    simple = item("simple_python", [AREA], [AREA_GT])
    assert verdict(simple, f"[{OK}), {OK})]")["error_type"] == "simple:wrong_count"
    assert verdict(simple, "[other(base=10, height=5.0)]")["error_type"].endswith("wrong_func_name")
    assert verdict(simple, "I think the area is 25.")["outcome"] == "no_call"
    not_optional = item("simple_python", [AREA], [{"calc.area": {"base": [10], "height": [5.0], "unit": ["m"]}}])
    assert verdict(not_optional, f"[{OK})]")["error_type"].endswith("missing_optional")
    # array items are type-checked one level down: no int for a float there (no conversion)
    dims = item("simple_python", [AREA], [{"calc.area": {"base": [10], "height": [5.0], "dims": [[1.0, 2.0]]}}])
    assert verdict(dims, f"[{OK}, dims=[1.0, 2.0])]")["valid"]
    assert verdict(dims, f"[{OK}, dims=[1, 2])]")["error_type"] == "type_error:nested"
    # a value of the possible answers' type where they differ from the documented one is a variable: exact match
    var = item("simple_python", [F], [{"f": {"a": ["n"]}}])
    assert verdict(var, "[f(a='n')]")["valid"] and not verdict(var, "[f(a='N')]")["valid"]
    # models that cannot name functions with dots: BFCL compares with dots as underscores for them
    assert not verdict(simple, "[calc_area(base=10, height=5.0)]")["valid"]
    assert verdict(simple, "[calc_area(base=10, height=5.0)]", dots_as_underscores=True)["valid"]


def test_multiple_and_parallel():
    multi = item("multiple", [OTHER, AREA], [AREA_GT])
    assert verdict(multi, f"[{OK})]")["valid"]
    assert verdict(multi, "[other(x=1)]")["outcome"] == "wrong_tool"
    assert verdict(multi, f"[{OK}), other(x=1)]")["outcome"] == "extra_call"
    par = item("parallel", [F], [{"f": {"a": [1]}}, {"f": {"a": [2]}}])
    assert verdict(par, "[f(a=2), f(a=1)]")["valid"]  # any order
    assert verdict(par, "[f(a=1)]")["outcome"] == "missing_call"
    assert verdict(par, "[f(a=1), f(a=1)]")["error_type"] == "parallel:cannot_find_match"
    # matching is greedy, as BFCL's: the first expected call takes the first reply call that fits it
    greedy = item("parallel", [F], [{"f": {"a": [1, 2]}}, {"f": {"a": [1]}}])
    assert verdict(greedy, "[f(a=2), f(a=1)]")["valid"]
    assert not verdict(greedy, "[f(a=1), f(a=2)]")["valid"]


def test_irrelevance_needs_a_readable_reply_without_a_call():
    irr = item("irrelevance", [F], [])
    for text in ("None of the functions can compute this.", "[]", ""):
        v = verdict(irr, text)
        assert v["valid"] and v["official_valid"], (text, v)
    v = verdict(irr, "[f(a=1)]")
    assert not v["valid"] and not v["official_valid"] and v["outcome"] == "call"
    # a reply that tried to call and cannot be read: BFCL's runner passes it, we do not
    for text in ("[f(a=", "You could use f(a=1) but it won't help.", '<tool_call>{"name": "f"}</tool_call>'):
        v = verdict(irr, text)
        assert not v["valid"] and v["official_valid"] and v["outcome"] == "unparseable", (text, v)
    rel = item("live_relevance", [F], [])
    assert verdict(rel, "[f(a=3)]")["valid"] and not verdict(rel, "No.")["valid"]


def test_function_calling_results():
    simple = item("simple_python", [AREA], [AREA_GT])
    assert verdict(simple, [{"calc.area": json.dumps({"base": 10, "height": 5.0})}])["valid"]
    assert verdict(simple, [{"calc.area": {"base": 10, "height": 5.0}}])["valid"]
    assert verdict(simple, [{"calc.area": "{bad"}])["outcome"] == "unparseable"
    assert verdict(simple, [])["outcome"] == "no_call"
    assert verdict(item("irrelevance", [F], []), [])["valid"]


def test_decoder_reproduces_bfcl():
    got = decode_calls("```\nmath.sqrt(x=-4, y=2**3, z=np.pi, w=(1, 2), v=a[0], u=foo(), t=g(k=1), s=[1, {'a': None}])\n```"
                       .replace("z=np.pi, ", ""))
    assert got == [{"math.sqrt": {"x": -4, "y": 8, "w": (1, 2), "v": "a[0]", "u": "foo()", "t": {"g": {"k": 1}},
                                  "s": [1, {"a": None}]}}]
    assert decode_calls("[f(a=1)]\n") == decode_calls("f(a=1)") == [{"f": {"a": 1}}]  # brackets added when missing
    assert decode_calls("f(1, a=2)") == [{"f": {"a": 2}}]  # positional arguments are dropped, as BFCL drops them
    for bad in ("f(a=np.pi)", "f(a=lambda x: x)", "[1, 2]", "f(a=x+1)", "f(a=", "f(**k)", "'f(a=1)'"):
        with pytest.raises(ParseError):
            decode_calls(bad)


@pytest.mark.parametrize(("reply", "outcome"), [
    ("[f(a=1), f(a=2)]", "correct_call"),
    ("[other(x=1), f(a=2)]", "wrong_tool"),
    ("[f(a=1), f(a=3)]", "wrong_argument"),
    ("[f(a=1), f(a=2), f(a=3)]", "extra_call"),
    ("The answer is 3.", "no_call"),
    ("Sorry, I cannot call these functions.", "refusal"),
    ("[f(a=1), f(a=2", "unparseable"),
    ('<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>', "unparseable"),  # another call format
])
def test_every_outcome_through_the_bfcl_protocol(reply, outcome):
    it = item("parallel", [F, OTHER], [{"f": {"a": [1]}}, {"f": {"a": [2]}}])
    proto = get_protocol("bfcl")
    traj = it.trajectory()
    (ex,) = drive([exchange(proto, traj, conversation_key(traj))], ScriptedEngine(texts=[reply]))
    v = bfcl.judge(it, ex.action)
    assert v["outcome"] == outcome, v
    assert v["valid"] is (outcome == "correct_call")
    prompt = ex.prompt[0]["content"]
    assert "Python 3 syntax" in prompt and '"name": "f"' in prompt  # BFCL's own prompt and documents


def test_a_react_reply_is_checked_by_the_same_rules():
    it = item("simple_python", [AREA], [AREA_GT])
    proto = get_protocol("react")
    traj = it.trajectory()
    reply = 'Thought: area.\nAction: calc.area\nAction Input: {"base": 10, "height": 5}'
    (ex,) = drive([exchange(proto, traj, conversation_key(traj))], ScriptedEngine(texts=[reply]))
    assert bfcl.judge(it, ex.action)["valid"]
    assert traj.tools[0].parameters["type"] == "object"  # JSON schema for protocols that show it


def _files(tmp_path):
    q = tmp_path / "BFCL_v4_simple_python.json"
    items = [{"id": f"simple_python_{i}", "question": [[{"role": "user", "content": f"area {i}"}]], "function": [AREA]}
             for i in range(3)]
    q.write_text("".join(json.dumps(r) + "\n" for r in items))
    (tmp_path / "possible_answer").mkdir()
    (tmp_path / "possible_answer" / q.name).write_text(
        "".join(json.dumps({"id": r["id"], "ground_truth": [AREA_GT]}) + "\n" for r in items))
    return q


def test_predictions_file_scored_and_rescored_without_a_model(tmp_path):
    q = _files(tmp_path)
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"id": "simple_python_0", "result": f"[{OK})]"}) + "\n"
                     + json.dumps({"id": "simple_python_1", "result": "[calc.area(base=3, height=5.0)]"}) + "\n")
    runner = CliRunner()
    res = runner.invoke(cli, ["eval", "bfcl", "--predictions", str(preds), "--tasks", str(q), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "o" / "bfcl-predictions" / "summary.json").read_text())
    assert summary["accuracy"]["k"] == 1 and summary["accuracy"]["n"] == 3 and summary["missing"] == 1
    log = tmp_path / "o" / "bfcl-predictions" / "episodes.jsonl"
    assert runner.invoke(cli, ["score", str(log)]).exit_code == 0
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    recs[1]["verdict"]["valid"] = True  # a doctored verdict
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert runner.invoke(cli, ["score", str(log)]).exit_code == 1


def test_bad_bfcl_files_are_named(tmp_path):
    q = _files(tmp_path)
    (tmp_path / "possible_answer" / q.name).write_text("")
    with pytest.raises(Exception, match="no possible answer"):
        bfcl.load_items(q)
    q.write_text('{"id": "simple_python_0", "question": "x", "function": []}\n')
    with pytest.raises(Exception, match=r"BFCL_v4_simple_python.json:1"):
        bfcl.load_items(q)
    java = tmp_path / "BFCL_v4_simple_java.json"
    java.write_text('{"id": "simple_java_0", "question": [[]], "function": []}\n')
    with pytest.raises(Exception, match="only the Python categories"):
        bfcl.load_items(java)


def test_expert_calibration_on_real_bfcl_data_when_fetched(tmp_path, monkeypatch):
    from agentflan.eval.suites import BFCL_FILES, bfcl_data_dir

    if not all((bfcl_data_dir() / f).is_file() for f in BFCL_FILES):
        pytest.skip(f"BFCL data not fetched into {bfcl_data_dir()} (python bench/fetch_bfcl.py)")
    res = CliRunner().invoke(cli, ["eval", "bfcl", "--policy", "expert", "-n", "80", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "bfcl-bfcl" / "summary.json").read_text())
    assert summary["accuracy"]["rate"] == 1.0 and summary["scored"] == 80


def test_bfcl_protocol_round_trip_and_expert_calibration(tmp_path):
    """What `render` writes for calls, `parse` reads back; the expert (gold replies rendered by the
    protocol) passes every item: prompts at evaluation equal the rendering of the gold conversation."""
    from agentflan.formats.pycall import BFCLProtocol
    from agentflan.schema import AssistantMessage, ToolCall

    it = item("parallel", [F, AREA], [{"f": {"a": [1]}}, {"calc.area": {"base": [2], "height": [1.5]}}])
    traj = it.trajectory()
    calls = [ToolCall(id="call_0", name="f", arguments={"a": -1}),
             ToolCall(id="call_1", name="calc.area", arguments={"base": 2, "height": 1.5, "unit": "it's", "dims": [1.0]})]
    proto = BFCLProtocol()
    rendered = proto.render(traj.model_copy(update={"messages": [*traj.messages, AssistantMessage(tool_calls=calls)]}))
    back = proto.parse(rendered[-1].content, traj)
    assert [(c.name, c.arguments) for c in back.calls] == [(c.name, c.arguments) for c in calls]
    res = CliRunner().invoke(cli, ["eval", "bfcl", "--policy", "expert", "--tasks", str(_files(tmp_path)),
                                   "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "bfcl-bfcl" / "summary.json").read_text())["accuracy"]["rate"] == 1.0
