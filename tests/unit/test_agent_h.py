"""Agent-H style hallucination: items, keyword/parse judges for every outcome, HScore with over-refusal,
logs that re-score, and the items built from a user's ToolBench catalogue."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.envs.toolapi import HELDOUT_TOOLS, TRAIN_TOOLS
from agentflan.eval import agent_h
from agentflan.eval.runlog import exchange
from agentflan.formats.protocols import Completion, conversation_key, get_protocol
from agentflan.models.driver import drive
from agentflan.models.engines import ScriptedEngine


def _item(kind: str):
    return next(it for it in agent_h.builtin_items(8, 0) if it.kind == kind)


def play(item, protocol: str, *replies):
    """The verdict of `replies` (texts or Completions, in order) to `item` under `protocol`."""
    proto = get_protocol(protocol)
    traj = item.trajectory()
    queue = list(replies)
    engine = ScriptedEngine(respond=lambda p: queue.pop(0))
    (ex,) = drive([exchange(proto, traj, conversation_key(traj))], engine)
    assert not queue, "the protocol asked for fewer replies than given"
    return agent_h.judge(item, agent_h.style_of(proto.name), ex.action, ex.context_limit)


def react(action: str, args: dict) -> str:
    return f"Thought: I decide.\nAction: {action}\nAction Input: {json.dumps(args)}"


CONTROL_ARGS = {"start": "2023-10-30", "end": "2024-08-13"}


@pytest.mark.parametrize(("protocol", "replies", "outcome"), [
    ("react", [react("days_between_for_calendar", CONTROL_ARGS)], "correct_call"),
    ("react", [react("weekday_for_calendar", {"date": "2023-10-30"})], "wrong_tool"),
    ("react", [react("days_between_for_calendar", {"begin": "2023-10-30"})], "wrong_argument"),
    ("native", ['<tool_call>{"name": "days_between_for_calendar", "arguments": {"start": "2023-10-30", '
                '"end": "2024-08-13"}}</tool_call><tool_call>{"name": "weekday_for_calendar", "arguments": '
                '{"date": "2024-08-13"}}</tool_call>'], "extra_call"),
    ("react", [react("Finish", {"final_answer": "About 288 days."})], "no_call"),
    ("react", [react("Finish", {"final_answer": "Sorry, I cannot do that."})], "refusal"),
    ("react", ["Action: days_between_for_calendar\nAction Input: {bad json"], "unparseable"),
    ("react", [react("count_days", CONTROL_ARGS)], "invented_tool"),
    ("tflan:inline", ["Let me work it out.\nAction: days_between\nAction Input: {}", "288 days."],
     "format_hallucination"),
    ("tflan:inline", ["I'll use `days_between_for_calendar`.\n```json\n" + json.dumps(CONTROL_ARGS) + "\n```"],
     "correct_call"),
])
def test_control_outcomes(protocol, replies, outcome):
    v = play(_item("control"), protocol, *replies)
    assert v["outcome"] == outcome, v
    assert v["correct_call"] == (outcome == "correct_call")
    assert v["over_refusal"] == (outcome in ("no_call", "refusal", "format_hallucination"))
    assert v["action_level"] == (outcome == "invented_tool")


@pytest.mark.parametrize(("protocol", "replies", "outcome", "free"), [
    ("react", [react("Finish", {"final_answer": "I can't add meetings: my calendar tools only compute dates."})],
     "refusal", True),
    ("react", [react("Finish", {"final_answer": "Done, it is noted."})], "answer", True),
    ("react", [react("add_days_for_calendar", {"date": "2025-04-14", "days": 0})], "call", False),
    ("react", [react("create_event", {"title": "meeting"})], "invented_tool", False),
    ("react", ["Sure, I added the meeting."], "unparseable", False),  # the stated format is broken
    ("react", [Completion(text=react("Finish", {"final_answer": "Done."}), stop="\nObservation:")],
     "format_hallucination", False),
    ("tflan:inline", ["I can't add it for you.", "I can't: the calendar tools only compute dates."], "refusal", True),
    ("tflan:inline", ["<tool_call>{\"name\": \"add_event\", \"arguments\": {}}</tool_call>", "Done."],
     "format_hallucination", False),
    ("tflan:inline", ["[add_event(date='2025-04-14')]", "Done."], "format_hallucination", False),
    ("tflan:inline", ["I'll use `add_days_for_calendar`.\n```json\n{\"date\": \"2025-04-14\", \"days\": 0}\n```"],
     "call", False),
    ("tflan:inline", ["I'll use `calendar`.\n```json\n{bad\n```"], "unparseable", False),
])
def test_negative_outcomes(protocol, replies, outcome, free):
    v = play(_item("insufficient"), protocol, *replies)
    assert v["outcome"] == outcome, v
    assert v["hallucination_free"] is free
    assert v["action_level"] == (outcome in ("call", "invented_tool"))
    assert v["format_level"] == (outcome in ("unparseable", "format_hallucination"))


def test_a_ReAct_answer_is_judged_on_its_text_not_on_its_agent_format():
    # the reply is rightly in ReAct lines; only the answer inside must not imitate a call
    ok = play(_item("no_need"), "react", react("Finish", {"final_answer": "Waves fold silver."}))
    assert ok["hallucination_free"], ok
    bad = play(_item("no_need"), "react", react("Finish", {"final_answer": "Action: poem\nAction Input: {}"}))
    assert bad["format_level"] and bad["format_reason"] == "call_format:react_lines"


def test_builtin_items_are_deterministic_held_out_and_balanced(tmp_path):
    items = agent_h.builtin_items(40, 0)
    assert [it.kind for it in items[:4]] == list(agent_h.KINDS)
    assert agent_h.write_items(items, tmp_path / "a.jsonl").read_bytes() == \
        agent_h.write_items(agent_h.builtin_items(40, 0), tmp_path / "b.jsonl").read_bytes()
    assert agent_h.builtin_items(12, 0) == items[:12]  # item i depends on (seed, i) only
    assert agent_h.builtin_items(12, 1) != items[:12]
    groups = {t.name.split("_for_")[-1] for it in items for t in it.tools}
    assert groups <= set(HELDOUT_TOOLS) and not groups & set(TRAIN_TOOLS)
    for it in items:
        if it.kind == "no_tools":
            assert not it.tools
        elif it.kind == "control":
            assert set(it.expected_tools) <= {t.name for t in it.tools} and it.gold_call
        else:
            assert it.tools and not it.expected_tools
            assert agent_h.call_format(it.answer) is None  # the gold replies are plain


def _catalogue(tmp_path):
    def api(tool, name, method="GET"):
        return {"category_name": "Movies", "tool_name": tool, "api_name": name, "api_description": f"{name} of a film",
                "required_parameters": [{"name": "title", "type": "STRING", "description": "film"}],
                "optional_parameters": [], "method": method}
    records = [
        {"query": "What is the plot of Heat?", "query_id": 1, "api_list": [api("MovieDB", "Movie details")],
         "relevant APIs": [["MovieDB", "Movie details"]]},
        {"query": "Book two tickets for Heat.", "query_id": 2,
         "api_list": [api("Tickets", "Buy ticket", "POST"), api("MovieDB", "Movie details")],
         "relevant APIs": [["Tickets", "Buy ticket"]]},
    ]
    path = tmp_path / "G1_query.json"
    path.write_text(json.dumps(records))
    return path


def test_items_from_a_user_catalogue(tmp_path):
    items = agent_h.catalogue_items(_catalogue(tmp_path), seed=0)
    assert [it.kind for it in items] == list(agent_h.KINDS) * 2
    insufficient = [it for it in items if it.kind == "insufficient"]
    # a tool with a write API (POST, "Buy") never serves an "insufficient" request
    assert all({t.name for t in it.tools} == {"movie_details_for_moviedb"} for it in insufficient)
    controls = [it for it in items if it.kind == "control"]
    assert controls[0].expected_tools == ["movie_details_for_moviedb"]
    assert agent_h.catalogue_items(_catalogue(tmp_path), seed=0) == items
    # an items file round-trips
    path = agent_h.write_items(items, tmp_path / "items.jsonl")
    assert agent_h.load_items(path, 100) == items
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    with pytest.raises(Exception, match=r"bad.jsonl:1"):
        agent_h.load_items(bad, 10)


def test_items_from_toolbench_queries(sample_data):
    items = agent_h.catalogue_items(sample_data / "toolbench" / "instruction" / "G1_query.json", seed=0)
    assert {it.kind for it in items} == set(agent_h.KINDS)
    assert all(set(it.expected_tools) <= {t.name for t in it.tools} for it in items if it.kind == "control")


def test_cli_calibration_never_calling_loses_on_over_refusal_and_score_rescores(tmp_path, monkeypatch):
    runner = CliRunner()
    res = runner.invoke(cli, ["eval", "agent-h", "--policy", "expert", "-n", "16", "-o", str(tmp_path / "expert")])
    assert res.exit_code == 0, res.output
    assert "| expert | 100.0 | 100.0 | 100.0 | 0.0 ± 0.0 | 0.0 / 0.0 | 100.0 ± 0.0 |" in res.output
    assert (tmp_path / "expert" / "agent-h-react" / "items.jsonl").exists()
    assert (tmp_path / "expert" / "summary.png").exists()

    # a model that always answers plainly: perfect HScore, and 100% over-refusal beside it
    from agentflan.eval.suites import run_suite

    never = ScriptedEngine(respond=lambda p: react("Finish", {"final_answer": "Sorry, I can't help."})
                           if "Action Input" in p.messages[0].content else "Sorry, I can't help with that.")
    runs = run_suite("agent-h", engine=never, policy="model", protocols=[], n=16, seed=0, tasks_file=None,
                     out_root=tmp_path / "never", agent_name="never", base_config={}, resume=True,
                     progress=lambda label, total: (lambda k: None))
    h = agent_h.hscore([r.summary for r in runs])
    assert h["hscore"] == 1.0 and h["over_refusal"]["rate"] == 1.0

    log = tmp_path / "expert" / "agent-h-react" / "episodes.jsonl"
    assert runner.invoke(cli, ["score", str(tmp_path / "expert")]).exit_code == 0
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    recs[1]["completions"][0]["text"] = react("send_email", {"to": "x"})  # a doctored transcript
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = runner.invoke(cli, ["score", str(log)])
    assert res.exit_code == 1 and "differ" in res.output


def test_failed_requests_are_errors_not_answers_and_resume(tmp_path):
    from agentflan.client import RequestError
    from agentflan.eval.suites import run_suite

    def flaky(p):
        return RequestError("HTTP 500", url="x", status=500) if "days" in p.messages[-1].content else \
            react("Finish", {"final_answer": "Sorry, I can't help."})

    def run(engine):
        return run_suite("agent-h", engine=engine, policy="model", protocols=["react"], n=8, seed=0, tasks_file=None,
                         out_root=tmp_path, agent_name="m", base_config={}, resume=True,
                         progress=lambda label, total: (lambda k: None))[0]

    first = run(ScriptedEngine(respond=flaky))
    assert first.summary["errors"] >= 1 and first.summary["scored"] + first.summary["errors"] == 8
    assert all(r["verdict"] is None for r in first.records if r["error"])
    again = run(ScriptedEngine(respond=lambda p: react("Finish", {"final_answer": "Sorry, I can't help."})))
    assert again.resumed == first.summary["scored"] and again.summary["errors"] == 0
