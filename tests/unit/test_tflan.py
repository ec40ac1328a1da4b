"""T-FLAN alignment: labels, varied elicits, and the parse round trip on every sample (fixtures, then real)."""

from __future__ import annotations

import pytest

from agentflan.formats.tflan import ELICIT_ARGS, ELICIT_FINAL, ELICIT_TOOL, NO_TOOL, AlignOptions, align, parse
from agentflan.io import read
from agentflan.samples import episodes
from agentflan.schema import AssistantMessage, ToolMessage, Trajectory, check, errors

REAL = [("toolbench/answer/*/*.json", "toolbench"), ("fireact/hotpotqa_react.jsonl", "react"),
        ("llamafactory/glaive_toolcall_en_demo.json", "sharegpt"),
        ("llamafactory/reason_tool_use_demo_50.jsonl", "openai")]


def _calls(t: Trajectory):
    final = t.tags.get("final_tool")
    return [(c.name, c.arguments) for m in t.messages if isinstance(m, AssistantMessage)
            for c in m.tool_calls if c.name != final]


def _observations(t: Trajectory):
    final_ids = {c.id for m in t.messages if isinstance(m, AssistantMessage) for c in m.tool_calls
                 if c.name == t.tags.get("final_tool")}
    return [m.content for m in t.messages if isinstance(m, ToolMessage) and m.tool_call_id not in final_ids]


@pytest.mark.parametrize(("rel", "fmt"), REAL)
@pytest.mark.parametrize(("cot", "decompose"), [(True, True), (False, True), (True, False)])
def test_round_trip_on_real_samples(sample_data, rel, fmt, cot, decompose):
    n = 0
    for t in read(str(sample_data / rel), fmt, on_error="skip"):
        aligned = align(t, f"k{n}", AlignOptions(cot=cot, decompose=decompose))
        assert not any(isinstance(m, ToolMessage) or (isinstance(m, AssistantMessage) and m.tool_calls)
                       for m in aligned.messages), "aligned data is plain chat"
        back = parse(aligned)
        assert _calls(back) == _calls(t)
        assert _observations(back) == _observations(t)
        assert errors(check(back)) == []
        n += 1
    assert n > 0


def test_final_answers_and_thoughts_survive(sample_data):
    for t in read(str(sample_data / "fireact/hotpotqa_react.jsonl"), "react"):
        back = parse(align(t, "k0"))
        final = [c for m in back.messages if isinstance(m, AssistantMessage) for c in m.tool_calls
                 if c.name == "finish"]
        orig = [c for m in t.messages if isinstance(m, AssistantMessage) for c in m.tool_calls if c.name == "finish"]
        assert [c.arguments for c in final] == [c.arguments for c in orig]
        thoughts = [m.content for m in back.messages if isinstance(m, AssistantMessage)]
        assert thoughts == [m.content for m in t.messages if isinstance(m, AssistantMessage)]


def test_decomposed_turns_are_labelled_and_elicited():
    t = episodes()[1]
    a = align(t, "k1")
    caps = [m.capability for m in a.messages if isinstance(m, AssistantMessage)]
    # the final answer is preceded by its thought and by choosing no tool (retrieval)
    assert caps == ["reasoning", "retrieval", "understanding", "reasoning", "retrieval", "understanding",
                    "reasoning", "retrieval", "reasoning"]
    users = [m.content for m in a.messages if m.role == "user"]
    assert any(u in ELICIT_TOOL for u in users) and any(u in ELICIT_ARGS for u in users)
    assert a.messages[-3].content in NO_TOOL and a.messages[-2].content in ELICIT_FINAL
    assert a.tags["format"] == "tflan"
    assert "Finish" not in a.messages[0].content  # the final tool is an answer, not an offered tool
    assert a.messages[-1].content == "The trip lasts 17 days in total."


def test_elicit_phrasing_varies_with_the_seed():
    t = episodes()[1]
    variants = {tuple(m.content for m in align(t, f"k{s}").messages if m.role == "user") for s in range(20)}
    assert len(variants) > 5


def test_no_cot_drops_thoughts_only():
    t = episodes()[1]
    a = align(t, "k0", AlignOptions(cot=False))
    assert [m.capability for m in a.messages if isinstance(m, AssistantMessage)] == [
        "retrieval", "understanding", "retrieval", "understanding", "retrieval", "reasoning"]
