"""Writers back to agent trajectory formats: `toolbench` (ToolLLaMA JSON), `react`, `agentinstruct`."""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

from agentflan.errors import ParseError
from agentflan.formats.agentinstruct import DIALECTS
from agentflan.formats.react import (
    OBSERVATION_PREFIX,
    ReactStep,
    parse_bracket,
    parse_toolllama,
    render_bracket,
    render_toolllama,
)
from agentflan.io.readers.toolbench import API_LIST_MARKER
from agentflan.io.writers.base import Unwritable, Writer
from agentflan.io.writers.chat import call_arguments, function_specs
from agentflan.schema import AssistantMessage, SystemMessage, ToolMessage, Trajectory, UserMessage


def _single_call(m: AssistantMessage) -> None:
    if len(m.tool_calls) > 1:
        raise Unwritable("parallel_calls", "the format has one action per turn")


def _reads_back(step: Callable[[], ReactStep], thought: str, name: str | None, argument: str | None) -> None:
    """Refuse a turn whose text its own reader would parse differently (an answer holding an
    `Action:` line, a thought holding a second action): written, it would be read back wrong."""
    try:
        got = step()
    except ParseError as e:
        raise Unwritable("ambiguous_text", f"the text would not read back: {e}") from e
    args = got.raw_arguments if got.raw_arguments is not None else next(iter(got.arguments.values()), None)
    if (got.thought, got.name, args if name else None) != (thought, name, argument):
        raise Unwritable("ambiguous_text", "the text would read back as another action")


class ToolBenchWriter(Writer):
    """ToolLLaMA training JSON: `conversations` from system/user/assistant/function.

    Assistant turns are `\\nThought: ...\\nAction: name\\nAction Input: {json}`; the tools go into the
    system prompt after "Specifically, you have access to the following APIs:" as ToolBench does.
    """

    name: ClassVar[str] = "toolbench"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        conv: list[dict[str, str]] = []
        api_list = json.dumps(function_specs(traj), ensure_ascii=False)
        if any(API_LIST_MARKER in m.content for m in traj.messages if isinstance(m, SystemMessage)):
            raise Unwritable("ambiguous_text", "the system prompt already holds the API list marker")
        if not isinstance(traj.messages[0], SystemMessage):
            conv.append({"from": "system", "value": f"{API_LIST_MARKER} {api_list}"})
        for i, m in enumerate(traj.messages):
            if isinstance(m, SystemMessage):
                value = f"{m.content}\n{API_LIST_MARKER} {api_list}" if i == 0 else m.content
                conv.append({"from": "system", "value": value})
            elif isinstance(m, UserMessage):
                conv.append({"from": "user", "value": m.content})
            elif isinstance(m, AssistantMessage):
                _single_call(m)
                if not m.loss:
                    self.report.lossy["loss_flags"] += 1
                c = m.tool_calls[0] if m.tool_calls else None
                value = render_toolllama(m.content, c.name, raw_arguments=call_arguments(c)) if c else m.content
                _reads_back(partial(parse_toolllama, value), m.content if c else value, c.name if c else None,
                            call_arguments(c).strip() if c else None)
                conv.append({"from": "assistant", "value": value})
            else:
                conv.append({"from": "function", "value": m.content})
        return {"id": traj.id, "conversations": conv}


class ReactWriter(Writer):
    """FireAct-style ReAct in OpenAI messages (`Action: name[arg]`, `Observation: ...`)."""

    name: ClassVar[str] = "react"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        msgs: list[dict[str, Any]] = []
        for m in traj.messages:
            if isinstance(m, AssistantMessage):
                _single_call(m)
                c = m.tool_calls[0] if m.tool_calls else None
                content = render_bracket(m.content, c.name if c else None, c.arguments if c else {})
                arg = None
                if c:  # what render_bracket wrote between the brackets
                    only = next(iter(c.arguments.values()), None)
                    arg = only if len(c.arguments) == 1 and isinstance(only, str) else \
                        json.dumps(c.arguments, ensure_ascii=False)
                _reads_back(partial(parse_bracket, content), m.content if c else content, c.name if c else None, arg)
                out: dict[str, Any] = {"role": "assistant", "content": content}
                if not m.loss:
                    out["loss"] = False
                msgs.append(out)
            elif isinstance(m, ToolMessage):
                msgs.append({"role": "user", "content": f"{OBSERVATION_PREFIX} {m.content}"})
            else:
                msgs.append({"role": m.role, "content": m.content})
        return {"messages": msgs}


class AgentInstructWriter(Writer):
    """AgentInstruct `conversations` (human/gpt with `loss`), actions in the task's dialect.

    Needs the `task` tag (set by the agentinstruct reader) to choose the dialect; a call to a tool the
    dialect has no action for is unwritable (`not_in_dialect`), and so is a turn that would read back
    as another action (`ambiguous_text`). The id starts with the task (`os_12`), as AgentInstruct's
    ids do, because that is how a reader finds the dialect: an id without that prefix gets it.
    """

    name: ClassVar[str] = "agentinstruct"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        task = traj.tags.get("task")
        if task not in DIALECTS:
            raise Unwritable("no_agentinstruct_task", "trajectory has no AgentInstruct task tag")
        dialect = DIALECTS[task]
        conv: list[dict[str, Any]] = []
        for m in traj.messages:
            if isinstance(m, AssistantMessage):
                _single_call(m)
                c = m.tool_calls[0] if m.tool_calls else None
                if c and c.name not in {t.name for t in dialect.tools}:
                    raise Unwritable("not_in_dialect", f"the {task} dialect has no action {c.name!r}")
                value = dialect.render(m.content, c.name if c else None, c.arguments if c else {})
                try:  # the dialects normalize thoughts and arguments, but never change the action
                    same = dialect.parse(value).name == (c.name if c else None)
                except ParseError:
                    same = False
                if not same:
                    raise Unwritable("ambiguous_text", "the text would read back as another action")
                conv.append({"from": "gpt", "loss": m.loss, "value": value})
            else:
                conv.append({"from": "human", "loss": None, "value": m.content})
        rid = traj.id if traj.id.startswith(f"{task}_") else f"{task}_{traj.id}"
        return {"id": rid, "conversations": conv}


class ToolBenchAnswerWriter(Writer):
    """ToolBench DFS answer records (`answer_generation`): what ToolBench's `answer/` files hold.

    `train_messages` holds the whole successful path once (ToolBench also stores its prefixes;
    readers take the last entry). The terminal tool call becomes `final_answer` and `finish_type`.
    """

    name: ClassVar[str] = "toolbench_answer"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        final_tool = traj.tags.get("final_tool", "Finish")
        msgs: list[dict[str, Any]] = []
        final: dict[str, Any] = {}
        n_calls = 0
        for m in traj.messages:
            if isinstance(m, AssistantMessage):
                _single_call(m)
                out: dict[str, Any] = {"role": "assistant", "content": m.content or None}
                if m.tool_calls:
                    c = m.tool_calls[0]
                    out["function_call"] = {"name": c.name, "arguments": call_arguments(c)}
                    n_calls += c.name != final_tool
                    if c.name == final_tool:
                        final = c.arguments
                msgs.append(out)
            elif isinstance(m, ToolMessage):
                msgs.append({"role": "function", "name": m.name, "content": m.content})
            else:
                msgs.append({"role": m.role, "content": m.content})
        query = next((m.content for m in traj.messages if isinstance(m, UserMessage)), "")
        finish_type = "give_up" if final.get("return_type") == "give_up_and_restart" else "give_answer"
        return {"answer_generation": {
            "valid_data": True, "query": query, "query_count": n_calls, "total_tokens": 0,
            "function": function_specs(traj), "train_messages": [msgs], "chain": [],
            "final_answer": json.dumps(final, ensure_ascii=False), "finish_type": finish_type}}
