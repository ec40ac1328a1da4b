"""The one OpenAI-style rendering of messages and tools.

Three consumers need conversations as OpenAI chat dicts, with one difference between them: how a
tool call's arguments are held.

* the `openai` writer and requests to an OpenAI-compatible endpoint: `arguments` as a JSON
  *string* (OpenAI's wire and fine-tuning format);
* Hugging Face chat templates (`apply_chat_template`, TRL): `arguments` as an *object*.

Both come from `openai_messages`; tools from `openai_tools`. Nothing else in agentflan builds
these dicts.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from agentflan.schema import AssistantMessage, Message, ToolCall, ToolMessage, ToolSpec

Arguments = Literal["string", "object"]


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


def tool_call_dicts(calls: list[ToolCall], arguments: Arguments = "string") -> list[dict[str, Any]]:
    """Tool calls as OpenAI chat messages hold them."""
    return [{"id": c.id, "type": "function", "function": {
        "name": c.name, "arguments": call_arguments(c) if arguments == "string" else c.arguments}} for c in calls]


def openai_message(m: Message, arguments: Arguments = "string", *, weight: bool = False) -> dict[str, Any]:
    """One message as an OpenAI chat dict (`weight` writes an assistant turn's loss as 0/1)."""
    if isinstance(m, AssistantMessage):
        out: dict[str, Any] = {"role": "assistant", "content": m.content}
        if m.reasoning is not None:
            out["reasoning_content"] = m.reasoning
        if m.tool_calls:
            out["tool_calls"] = tool_call_dicts(m.tool_calls, arguments)
        if weight:
            out["weight"] = int(m.loss)
        return out
    if isinstance(m, ToolMessage):
        tm: dict[str, Any] = {"role": "tool", "content": m.content}
        if m.tool_call_id is not None:
            tm["tool_call_id"] = m.tool_call_id
        if m.name is not None:
            tm["name"] = m.name
        return tm
    return {"role": m.role, "content": m.content}


def openai_messages(messages: list[Message], arguments: Arguments = "string", *,
                    weight: bool = False) -> list[dict[str, Any]]:
    return [openai_message(m, arguments, weight=weight) for m in messages]


def function_spec(tool: ToolSpec, *, extra: bool = False) -> dict[str, Any]:
    """A tool as a function object. `extra` keeps keys the source had beyond the schema (files keep
    them; requests and chat templates do not: OpenAI rejects unknown keys)."""
    spec = {"name": tool.name, "description": tool.description, "parameters": tool.parameters}
    return {**spec, **tool.metadata} if extra else spec


def openai_tools(tools: list[ToolSpec] | None, *, extra: bool = False) -> list[dict[str, Any]] | None:
    """Tools as the `tools` list of a chat request (None when there are none)."""
    if not tools:
        return None
    return [{"type": "function", "function": function_spec(t, extra=extra)} for t in tools]
