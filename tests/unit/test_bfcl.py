"""BFCL-format function calling: hand-made predictions for each rule of BFCL's AST checker and decoder,
irrelevance that an unparseable reply cannot pass, every outcome, and predictions files scored and
re-scored without a model."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from agentflan.cli.main import cli
from agentflan.errors import ParseError
from agentflan.eval import bfcl
from agentflan.eval.runlog import exchange
from agentflan.formats.protocols import conversation_key, get_protocol
from agentflan.formats.pycall import decode_calls
from agentflan.models.driver import drive
from agentflan.models.engines import ScriptedEngine

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
    """The verdict of a predictions-file result (a string: read by BFCL's decoder for BFCL's verdict too)."""
    return bfcl.prediction_verdict(it, result, **kw)


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
    from agentflan.formats.protocols import BFCLProtocol
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


# ---- replies BFCL's decoder reads in its own way (issue: parity with the official checker) ---------------

G = {"name": "get_closest_prime", "description": "g", "parameters": {"type": "dict", "properties": {
    "b": {"type": "integer", "description": "b"}}, "required": []}}
MATH = {"name": "math.sum", "description": "s", "parameters": {"type": "dict", "properties": {
    "b": {"type": "integer", "description": "b"}}, "required": ["b"]}}


@pytest.mark.parametrize("reply", [
    "\tget_closest_prime()", " \t\nget_closest_prime()", "\r\nget_closest_prime()", "(get_closest_prime)()",
    "((get_closest_prime))()", "\t(get_closest_prime)()"])
def test_replies_bfcl_reads_as_calls_are_calls(reply):
    """Leading tabs (BFCL strips only spaces, newlines and backticks, then Python skips the tab inside
    its brackets) and a parenthesized callee are calls to BFCL's decoder: an AST item judges them,
    irrelevance fails."""
    simple = item("simple_python", [G], [{"get_closest_prime": {"b": [""]}}])
    v = verdict(simple, reply)
    assert v["valid"] and v["official_valid"] and v["decoded"] == [{"get_closest_prime": {}}], v
    irr = verdict(item("irrelevance", [G], []), reply)
    assert not irr["valid"] and irr["official_valid"] is False and irr["outcome"] == "call", irr


@pytest.mark.parametrize("reply", ["\t[get_closest_prime()]", "\u00a0get_closest_prime()", "\u3000get_closest_prime()"])
def test_replies_bfcls_decoder_rejects_are_unparseable_attempts(reply):
    """`\t[...]` gains a second `[` and never closes; a no-break space is no Python whitespace: BFCL's
    decoder fails on both (an abstention to its irrelevance rule), and here they are unparseable."""
    v = verdict(item("simple_python", [G], [{"get_closest_prime": {"b": [""]}}]), reply)
    assert not v["valid"] and v["official_valid"] is False and v["outcome"] == "unparseable", v
    irr = verdict(item("irrelevance", [G], []), reply)
    assert not irr["valid"] and irr["official_valid"] is True and irr["difference"] == "irrelevance_unparseable"


@pytest.mark.parametrize("reply", ["(math.sum)(b=120)", "[(math.sum)(b=120)]", "(math).sum(b=120)", "\t(math.sum)(b=120)"])
def test_dotted_calls_in_parentheses(reply):
    v = verdict(item("simple_python", [MATH], [{"math.sum": {"b": [120]}}]), reply)
    assert v["valid"] and v["official_valid"] and v["decoded"] == [{"math.sum": {"b": 120}}], v


@pytest.mark.parametrize(("reply", "ours", "bfcls"), [
    ("math.sum(b=abs(120) + 0)", False, True),    # BFCL evaluates the call: 120
    ("math.sum(b=abs(-3) + 1)", False, False),    # ... 4, not acceptable
    ("math.sum(b=max(100, 120) * 1)", False, True),
    ("math.sum(b=x + 1)", False, False),           # eval raises NameError: the decoding fails
    ("math.sum(b=119 + 1)", True, True),           # arithmetic on literals: both compute it
    ("math.sum(b=+120 + 0)", True, True),          # inside eval a unary plus is a plus ...
    ("math.sum(b=+120)", False, False),            # ... outside it, BFCL negates whatever the operator
])
def test_a_call_inside_an_argument_expression_has_both_verdicts(reply, ours, bfcls):
    """agentflan never evaluates model output: a call or a name inside an expression is unparseable
    here; BFCL's verdict is derived as its `eval` would compute it, and the difference is named."""
    v = verdict(item("simple_python", [MATH], [{"math.sum": {"b": [120]}}]), reply)
    assert (v["valid"], v["official_valid"]) == (ours, bfcls), v
    assert v.get("difference") == ("evaluated_expression" if ours != bfcls else None)
    if "abs" in reply or "max" in reply or "x +" in reply:
        assert v["outcome"] == "unparseable" and "inside an expression" in v["error"]


@pytest.mark.parametrize(("reply", "official"), [
    ("f(**kwargs)", False),          # BFCL reads a parameter named None: a call
    ("f(a=2 ** 1200)", False),       # BFCL computes the power: a call
    ("f(a=abs(-3) + 1)", False),     # BFCL evaluates the call: a call
    ("f(a=x + 1)", True),            # NameError: BFCL's decoding fails, an abstention
    ("f(a=b'x')", False),            # bytes: a call to BFCL
    ("f(a=1j)", False),
    ("You could try f(a=1).", True),
    ("f(a=print(1) + 1)", True),     # print gives None, None + 1 raises: BFCL's decoding fails
    ("f(a=len + 1)", True),          # a builtin function in arithmetic: TypeError
    ("f(a=json.dumps(1) + 'x')", None),  # BFCL would call into its own json module: undetermined here
    ("x[0](a=1j)", False),           # no call pattern, but BFCL's decoder reads a call (named "")
])
def test_irrelevance_by_bfcls_rule_is_computed_as_bfcl_decodes(reply, official):
    v = verdict(item("irrelevance", [F], []), reply)
    assert v["official_valid"] is official and not v["valid"], v
    assert v["outcome"] == ("call" if "1200" in reply else "unparseable"), v  # agentflan computes 2 ** 1200 too
    s = bfcl.summarize([{"category": "irrelevance", "error": None, "verdict": v}])
    assert s["official_undetermined"] == (official is None)
    assert s["irrelevance_official"]["k"] == (official is True)


@pytest.mark.parametrize("reply", [
    "f(a=b'abc')", "f(a=3j)", "f(a=-1j)", "f(a='\\ud800')", "f(a=[b'x'])", "f(a={(1, 2): 3})", "f(a=2 ** 20000)",
    "f(a='x\ud800')", "I cannot \ud800 answer.", "\ud800", "f(a=1)\x00", "f(a=1e999)", "f(a=10 ** 400 * 1.0)"])
def test_no_reply_crashes_a_run(tmp_path, reply):
    """Bytes, complex numbers, lone surrogates (escaped or raw), huge integers: the run completes, the
    reply is an invalid prediction (unparseable where JSON cannot hold its value), logged, re-scored."""
    q = tmp_path / "BFCL_v4_simple_python.json"
    q.write_text(json.dumps({"id": "simple_python_0", "question": [[{"role": "user", "content": "q"}]],
                             "function": [F]}) + "\n")
    (tmp_path / "possible_answer").mkdir()
    (tmp_path / "possible_answer" / q.name).write_text(json.dumps({"id": "simple_python_0",
                                                                   "ground_truth": [{"f": {"a": [1]}}]}) + "\n")
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"id": "simple_python_0", "result": reply}) + "\n")
    runner = CliRunner()
    res = runner.invoke(cli, ["eval", "bfcl", "--predictions", str(preds), "--tasks", str(q), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, (res.output, res.exception)
    log = tmp_path / "o" / "bfcl-predictions" / "episodes.jsonl"
    (rec,) = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert rec["result"] == reply and not rec["verdict"]["valid"]
    if any(s in reply for s in ("b'", "j)", "ud800", "\ud800(", "20000", "(1, 2)")):
        assert rec["verdict"]["outcome"] in ("unparseable", "no_call"), rec["verdict"]
    assert runner.invoke(cli, ["score", str(log)]).exit_code == 0


def test_predictions_score_every_line_whatever_n(tmp_path):
    """`-n` limits model runs only: a predictions file of more items than `-n` is scored whole."""
    q = tmp_path / "BFCL_v4_simple_python.json"
    rows = [{"id": f"simple_python_{i}", "question": [[{"role": "user", "content": "q"}]], "function": [F]}
            for i in range(7)]
    q.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "possible_answer").mkdir()
    (tmp_path / "possible_answer" / q.name).write_text("".join(
        json.dumps({"id": r["id"], "ground_truth": [{"f": {"a": [1]}}]}) + "\n" for r in rows))
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": r["id"], "result": "[f(a=1)]"}) + "\n" for r in rows)
                     + json.dumps({"id": "simple_python_99", "result": "[f(a=1)]"}) + "\n")
    res = CliRunner().invoke(cli, ["eval", "bfcl", "--predictions", str(preds), "--tasks", str(q), "-n", "2",
                                   "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    out = tmp_path / "o" / "bfcl-predictions"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 7 and summary["accuracy"]["k"] == 7 and summary["missing"] == 0
    assert json.loads((out / "config.json").read_text())["unmatched_predictions"] == 1


def test_a_model_reply_is_judged_by_bfcls_rule_from_its_text():
    """Under the `bfcl` protocol the logged completion is what BFCL's decoder reads: a model's
    `f(a=x + 1)` to an irrelevance item is an abstention by BFCL's rule, on the run and on re-scoring."""
    it = item("irrelevance", [F], [])
    proto = get_protocol("bfcl")
    traj = it.trajectory()
    (ex,) = drive([exchange(proto, traj, conversation_key(traj))], ScriptedEngine(texts=["f(a=x + 1)"]))
    rec = bfcl.record(it, "bfcl", "m", ex)
    assert not rec["verdict"]["valid"] and rec["verdict"]["official_valid"] is True
    assert rec["verdict"]["difference"] == "irrelevance_unparseable"
    assert bfcl.rescore(json.loads(json.dumps(rec)), proto) == rec["verdict"]


PIECES = ["f(", "g.h(", ")", "a=", "b=", "b'x'", "1j", "2 ** ", "[", "]", "'\\ud800'", "\ud800", "abs(", ", ", "**k",
          "x", " + ", "-", "{", "}", ": ", "(", "1e999", "lambda: 1", "print(", "str(b'x', 'rot13')", "len", "json.",
          "'%d' % ", "1", "2.5", "True", "None", "...", "\t", "\n", "`", "'", "\"", "[1][0]", "{1, 2}", "int('9' * 9)",
          "9" * 30, "max()", "sorted([1, 'a'])", "(1,) * ", "chr(-1)", "<tool_call>", "#", "\\", "\x00"]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.lists(st.sampled_from(PIECES), max_size=14).map("".join),
                 st.lists(st.sampled_from(PIECES), max_size=6).map(lambda p: "f(a=" + "".join(p) + " + 1)")))
@example("f(a=str(b'x', 'rot13') + 'y')")
def test_any_reply_gets_a_loggable_verdict(reply):
    """Fuzzed replies built from the pieces that trouble decoders: every one gets a verdict of each
    kind of item, and the record can be written."""
    from agentflan.eval.runlog import json_line

    for it in (item("simple_python", [F], [{"f": {"a": [1]}}]), item("irrelevance", [F], []),
               item("live_relevance", [F], [])):
        v = verdict(it, reply)
        assert v["official_valid"] in (True, False, None) and isinstance(v["valid"], bool)
        json.loads(json_line({"result": reply, "verdict": v}))
