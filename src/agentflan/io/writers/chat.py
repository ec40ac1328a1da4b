"""Writers for chat formats: `openai`, `sharegpt` (LLaMA-Factory), `alpaca`, `agentflan` (release)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from agentflan.formats.react import render_toolllama
from agentflan.formats.templates import with_tools_in_system
from agentflan.io.writers.base import Unwritable, Writer
from agentflan.schema import AssistantMessage, SystemMessage, ToolCall, ToolMessage, Trajectory, UserMessage


def call_arguments(call: ToolCall) -> str:
    """Arguments as the JSON string tool-call formats store.

    The source text (`raw`) is reused when it never parsed, or when it still says exactly what
    `arguments` says (keeps e.g. ToolBench's indentation); otherwise the arguments are dumped.
    """
    if call.raw is not None:
        if call.parse_error is not None:
            return call.raw
        try:
            if json.loads(call.raw) == call.arguments:
                return call.raw
        except json.JSONDecodeError:
            pass
    return json.dumps(call.arguments, ensure_ascii=False)


def tool_call_dicts(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Tool calls as OpenAI chat messages hold them (arguments as a JSON string)."""
    return [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": call_arguments(c)}}
            for c in calls]


def function_specs(traj: Trajectory) -> list[dict[str, Any]]:
    """Tool specs as function objects; keys the source had beyond the schema are kept."""
    return [{"name": t.name, "description": t.description, "parameters": t.parameters, **t.metadata}
            for t in traj.tools]


def openai_tools(traj: Trajectory) -> list[dict[str, Any]]:
    return [{"type": "function", "function": f} for f in function_specs(traj)]


class OpenAIWriter(Writer):
    """OpenAI chat fine-tuning/eval records: `messages` (+`tool_calls`, role `tool`) and `tools`.

    Ready for TRL (`messages` + `tools` columns) and vLLM/OpenAI requests. An assistant message's
    `loss` is written as OpenAI's fine-tuning `weight` (0 or 1).
    """

    name: ClassVar[str] = "openai"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        msgs: list[dict[str, Any]] = []
        for m in traj.messages:
            if m.metadata:
                self.report.lossy["message_metadata"] += 1
            if isinstance(m, AssistantMessage):
                out: dict[str, Any] = {"role": "assistant", "content": m.content}
                if m.reasoning is not None:
                    out["reasoning_content"] = m.reasoning
                if m.tool_calls:
                    out["tool_calls"] = tool_call_dicts(m.tool_calls)
                out["weight"] = int(m.loss)
                msgs.append(out)
            elif isinstance(m, ToolMessage):
                tm: dict[str, Any] = {"role": "tool", "content": m.content}
                if m.tool_call_id is not None:
                    tm["tool_call_id"] = m.tool_call_id
                if m.name is not None:
                    tm["name"] = m.name
                msgs.append(tm)
            else:
                if m.loss:
                    self.report.lossy["loss_on_non_assistant"] += 1
                msgs.append({"role": m.role, "content": m.content})
        rec: dict[str, Any] = {"id": traj.id, "messages": msgs}
        if traj.tools:
            rec["tools"] = openai_tools(traj)
        return rec


class ShareGPTWriter(Writer):
    """LLaMA-Factory ShareGPT: `conversations` (human/gpt/function_call/observation), `system`, `tools`.

    LLaMA-Factory wants strictly alternating user-side and assistant-side turns and has no place
    for a thought before a function call or for per-message loss; what cannot be kept is counted
    in `lossy` (`thought_before_call`, `loss_flags`, `non_alternating`). Consecutive tool results
    (parallel calls) are merged into one observation, a JSON list, as LLaMA-Factory expects.
    """

    name: ClassVar[str] = "sharegpt"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        conv: list[dict[str, str]] = []
        system = None
        for i, m in enumerate(traj.messages):
            if isinstance(m, SystemMessage):
                if i == 0:
                    system = m.content
                else:
                    conv.append({"from": "system", "value": m.content})
            elif isinstance(m, UserMessage):
                conv.append({"from": "human", "value": m.content})
            elif isinstance(m, AssistantMessage):
                if not m.loss:
                    self.report.lossy["loss_flags"] += 1
                if m.tool_calls:
                    if m.content.strip():
                        self.report.lossy["thought_before_call"] += 1
                    calls = [{"name": c.name, "arguments": c.arguments} for c in m.tool_calls]
                    value = calls[0] if len(calls) == 1 else calls
                    conv.append({"from": "function_call", "value": json.dumps(value, ensure_ascii=False)})
                else:
                    conv.append({"from": "gpt", "value": m.content})
            elif isinstance(m, ToolMessage):
                if conv and conv[-1]["from"] == "observation":
                    prev = conv[-1]["value"]
                    items = json.loads(prev) if conv[-1].get("_merged") else [prev]
                    conv[-1] = {"from": "observation", "value": json.dumps([*items, m.content], ensure_ascii=False),
                                "_merged": "1"}
                else:
                    conv.append({"from": "observation", "value": m.content})
        for turn in conv:
            turn.pop("_merged", None)
        user_side = {"human", "observation"}
        if any((t["from"] in user_side) != (k % 2 == 0) for k, t in enumerate(conv) if t["from"] != "system"):
            self.report.lossy["non_alternating"] += 1
        rec: dict[str, Any] = {"id": traj.id, "conversations": conv}
        if system is not None:
            rec["system"] = system
        if traj.tools:
            rec["tools"] = json.dumps(function_specs(traj), ensure_ascii=False)
        return rec

    def dataset_info(self, path: Path) -> dict[str, Any]:
        return {path.name.split(".")[0]: {
            "file_name": str(path), "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                     "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}}}


class AlpacaWriter(Writer):
    """Alpaca `instruction`/`input`/`output` (+`system`, `history`) for tool-free chat only."""

    name: ClassVar[str] = "alpaca"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        msgs = list(traj.messages)
        system = msgs.pop(0).content if msgs and isinstance(msgs[0], SystemMessage) else None
        if not msgs or len(msgs) % 2 or not all(
                isinstance(u, UserMessage) and isinstance(a, AssistantMessage) and not a.tool_calls
                for u, a in zip(msgs[::2], msgs[1::2], strict=True)):
            raise Unwritable("not_user_assistant_pairs", "alpaca holds only user/assistant pairs without tools")
        if traj.tools:
            self.report.lossy["tools_offered"] += 1
        pairs = [(u.content, a.content) for u, a in zip(msgs[::2], msgs[1::2], strict=True)]
        prompt, output = pairs[-1]
        instruction, extra = prompt, ""
        meta_i, meta_x = traj.metadata.get("instruction"), traj.metadata.get("input")
        if isinstance(meta_i, str) and isinstance(meta_x, str) and prompt == f"{meta_i}\n\n{meta_x}":
            instruction, extra = meta_i, meta_x
        rec: dict[str, Any] = {"instruction": instruction, "input": extra, "output": output}
        if system is not None:
            rec["system"] = system
        if len(pairs) > 1:
            rec["history"] = [list(p) for p in pairs[:-1]]
        return rec


class AgentFlanWriter(Writer):
    """The released Agent-FLAN record: `{"id", "conversation": [{"role", "content", "loss"}]}`.

    No tool role exists in the release: tool calls are written in ReAct text
    (`Thought:/Action:/Action Input:`), tool results as user turns, and the offered tools are
    listed in the system prompt (a system message is added if there is none). Trajectories that
    are already text (T-FLAN, ReAct renderings) are written as they are.
    """

    name: ClassVar[str] = "agentflan"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        conv: list[dict[str, Any]] = []
        for m in with_tools_in_system(traj.messages, traj.tools):
            if isinstance(m, SystemMessage):
                conv.append({"role": "system", "content": m.content, "loss": m.loss})
            elif isinstance(m, AssistantMessage):
                if m.tool_calls:
                    content = "\n".join(render_toolllama(m.content if k == 0 else "", c.name, raw_arguments=call_arguments(c))
                                        for k, c in enumerate(m.tool_calls)).lstrip("\n")
                else:
                    content = m.content
                conv.append({"role": "assistant", "content": content, "loss": m.loss})
            else:  # user turns and tool results (observations are user turns in the release)
                conv.append({"role": "user", "content": m.content, "loss": m.loss})
        return {"id": traj.id, "conversation": conv}
