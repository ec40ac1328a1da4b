from __future__ import annotations

import pytest
from pydantic import ValidationError

from agentflan.schema import (
    AssistantMessage,
    Source,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    Trajectory,
    UserMessage,
    check,
    errors,
)


def _traj(messages, tools=(), **kw):
    return Trajectory(id="t", messages=list(messages), tools=list(tools), source=Source(format="test"), **kw)


def test_check_returns_every_problem_not_just_the_first():
    t = _traj([
        AssistantMessage(content="hello"),                                            # first turn not user
        ToolMessage(content="r", tool_call_id="zz"),                                  # orphan result
        AssistantMessage(tool_calls=[ToolCall(id="c", name="ghost", parse_error="bad json")]),
        AssistantMessage(),                                                           # empty
        SystemMessage(content="late"),                                                # system not first
        UserMessage(content="q", loss=True),                                          # loss on user
    ])
    codes = [i.code for i in check(t)]
    for code in ("first_turn_not_user", "orphan_tool_result", "undeclared_tool", "tool_call_parse_error",
                 "empty_assistant", "system_not_first", "loss_on_non_assistant"):
        assert code in codes
    assert {i.code for i in errors(check(t, allow_parse_errors=True))} == {
        "orphan_tool_result", "undeclared_tool", "empty_assistant"}


def test_valid_tool_trajectory_has_no_issues():
    t = _traj([SystemMessage(content="s"), UserMessage(content="q"),
               AssistantMessage(content="t", tool_calls=[ToolCall(id="c0", name="f", arguments={"a": 1})]),
               ToolMessage(content="r", tool_call_id="c0", name="f"), AssistantMessage(content="a")],
              tools=[ToolSpec(name="f")])
    assert check(t) == []
    assert t.system == "s"


def test_empty_conversation_is_an_error():
    assert [i.code for i in check(_traj([SystemMessage(content="s")]))] == ["empty"]


def test_duplicate_call_ids_are_an_error():
    call = ToolCall(id="x", name="f")
    t = _traj([UserMessage(content="q"), AssistantMessage(tool_calls=[call, call])], tools=[ToolSpec(name="f")])
    assert "duplicate_call_id" in [i.code for i in errors(check(t))]


def test_schema_is_strict():
    with pytest.raises(ValidationError):
        UserMessage(content="x", tool_calls=[])  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        AssistantMessage(capability="planning")  # type: ignore[arg-type]


def test_json_dict_round_trip_is_lossless_and_compact():
    t = _traj([UserMessage(content="q"), AssistantMessage(content="a", loss=False, capability="reasoning")],
              tags={"task": "x"}, metadata={"k": [1, 2]})
    d = t.to_json_dict()
    assert d["schema_version"] == 1
    assert d["messages"][0] == {"role": "user", "content": "q"}
    assert Trajectory.model_validate(d) == t
