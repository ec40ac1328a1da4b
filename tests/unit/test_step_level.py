"""Step-level (T-Eval style) scores: every outcome under the JSON and the string protocol, the metrics,
user files, calibration and re-scoring."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.eval import steps
from agentflan.eval.runlog import exchange
from agentflan.formats.protocols import Completion, conversation_key, get_protocol
from agentflan.models.driver import drive
from agentflan.models.engines import ScriptedEngine
from agentflan.schema import AssistantMessage


@pytest.fixture(scope="module")
def items():
    found, _ = steps.load_items(40, 0)
    call = next(it for it in found if it.gold_calls() and it.gold.content and it.source.startswith("env:toolapi"))
    answer = next(it for it in found if not it.gold_calls())
    return call, answer


def play(item, protocol, reply):
    proto = get_protocol(protocol)
    (ex,) = drive([exchange(proto, item.history, conversation_key(item.history))],
                  ScriptedEngine(respond=lambda p: reply))
    return steps.judge(item, proto.name, ex.action, ex.context_limit)


def render(protocol: str, thought: str, name: str, args: dict) -> str:
    if protocol == "json":
        return json.dumps({"Thought": thought, "Action": name, "Action Input": args})
    return f"Thought: {thought}\nAction: {name}\nAction Input: {json.dumps(args)}"


@pytest.mark.parametrize("protocol", ["json", "react"])
@pytest.mark.parametrize("case", ["correct_call", "wrong_tool", "wrong_argument", "extra_call", "no_call", "refusal",
                                  "unparseable", "format_hallucination", "correct_answer"])
def test_every_outcome_under_both_protocols(items, protocol, case):
    call_item, answer_item = items
    gold = call_item.gold_calls()[0]
    thought = call_item.gold.content
    wrong_args = {k: (v + 1 if isinstance(v, (int, float)) else f"{v}x") for k, v in gold.arguments.items()}
    item, reply = call_item, {
        "correct_call": render(protocol, thought, gold.name, gold.arguments),
        "wrong_tool": render(protocol, thought, "weekday_for_calendar", gold.arguments),
        "wrong_argument": render(protocol, thought, gold.name, wrong_args),
        "no_call": render(protocol, thought, "Finish", {"final_answer": "It is 42."}),
        "refusal": render(protocol, thought, "Finish", {"final_answer": "Sorry, I cannot do that."}),
        "unparseable": render(protocol, thought, gold.name, gold.arguments)[:-3],
        "format_hallucination": Completion(text=render(protocol, thought, gold.name, gold.arguments),
                                           stop="\nObservation:"),
    }.get(case, "")
    if case in ("extra_call", "correct_answer"):  # the gold step answers: a call is one too many
        item = answer_item
        reply = (render(protocol, "Let me check once more.", "average_for_list_tools", {"numbers": [1]})
                 if case == "extra_call" else render(protocol, answer_item.gold.content, "Finish",
                                                     {"final_answer": "done"}))
    v = play(item, protocol, reply)
    assert v["outcome"] == case, v
    assert v["instruct"] == (case != "unparseable")
    assert v["instruct_strict"] == (case not in ("unparseable", "format_hallucination"))
    assert v["retrieve"] == (case in ("correct_call", "wrong_argument", "format_hallucination", "correct_answer"))
    if item is call_item:
        assert v["args_exact"] == (case in ("correct_call", "wrong_tool", "format_hallucination"))
        assert v["reason"] == (0.0 if case == "unparseable" else 1.0)


def test_metrics():
    assert steps.same_value(1, 1.0) and not steps.same_value(True, 1) and not steps.same_value("1", 1)
    assert steps.args_f1({"a": 1, "b": 2}, {"a": 1, "b": 3}) == pytest.approx(0.5)
    assert steps.args_f1({}, {}) == 1.0 and steps.args_f1({"a": 1}, {}) == 0.0
    assert steps.rouge_l("the cat sat", "the cat sat on the mat") == pytest.approx(2 * 1 * 0.5 / 1.5, abs=1e-4)
    assert steps.rouge_l("mat the", "the mat") == 0.5


def test_instruct_protocols_skip_answer_steps_and_score_no_reason(items):
    call_item, _ = items
    found, skipped = steps.load_items(20, 0, calls_only=True)
    assert all(it.gold_calls() for it in found) and skipped
    gold = call_item.gold_calls()[0]
    v = play(call_item, "instruct:json", json.dumps({"name": gold.name, "arguments": gold.arguments}))
    assert v["outcome"] == "correct_call" and v["reason"] is None


def test_steps_from_a_user_file_and_calibration(tmp_path):
    from agentflan.envs import get_env
    from agentflan.envs.base import ExpertPolicy, run_episode

    info = get_env("toolapi")
    trajs = [run_episode(info.make(), t, ExpertPolicy(info.expert(t))).trajectory for t in info.generate(3, "heldout", 5)]
    path = tmp_path / "gold.jsonl"
    path.write_text("".join(json.dumps(t.to_json_dict()) + "\n" for t in trajs))
    runner = CliRunner()
    res = runner.invoke(cli, ["eval", "steps", "--policy", "expert", "--tasks", str(path), "-n", "50",
                              "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "out" / "steps-json" / "summary.json").read_text())
    n_steps = sum(1 for t in trajs for m in t.messages if m.role == "assistant")
    assert summary["scored"] == n_steps and summary["overall"] == 1.0
    assert runner.invoke(cli, ["score", str(tmp_path / "out")]).exit_code == 0
    chat = tmp_path / "chat.jsonl"  # trajectories without tools have no step to score: said, not silent
    plain = trajs[0].model_copy(update={"tools": [], "messages": [trajs[0].messages[1], AssistantMessage(content="Hi")]})
    chat.write_text(json.dumps(plain.to_json_dict()) + "\n")
    res = runner.invoke(cli, ["eval", "steps", "--policy", "expert", "--tasks", str(chat), "-o", str(tmp_path / "e")])
    assert res.exit_code != 0 and "no assistant step" in res.output and "no tools offered" in res.output
    broken = tmp_path / "broken.jsonl"
    broken.write_text(path.read_text().splitlines()[0] + "\n{\"id\": 1}\n")
    res = runner.invoke(cli, ["eval", "steps", "--policy", "expert", "--tasks", str(broken), "-o", str(tmp_path / "b")])
    assert res.exit_code != 0 and "broken.jsonl:2" in res.output
