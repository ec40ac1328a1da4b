"""The one OpenAI-style rendering of messages and tools.

Three consumers need conversations as OpenAI chat dicts, with one difference between them: how a
tool call's arguments are held.

* the `openai` writer and requests to an OpenAI-compatible endpoint: `arguments` as a JSON
  *string* (OpenAI's wire and fine-tuning format);
* Hugging Face chat templates (`apply_chat_template`, TRL): `arguments` as an *object*.

Both come from `openai_messages`; tools from `openai_tools`. Nothing else in agentflan builds
these dicts. The way back, an OpenAI assistant message (a record's turn or an endpoint's reply) read
as ours, is `assistant_message`: the `openai` reader, the OpenAI engine and the teacher use it.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from agentflan.errors import ParseError
from agentflan.fields import as_text, optional_key, require_key
from agentflan.formats.react import parse_json_arguments
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


# ---- reading replies back ----

def reply_message(response: Any) -> AssistantMessage:
    """The first choice's message of a chat completion response, read as ours (`assistant_message`).

    Raises:
        ParseError: The response has no readable first choice, naming the field.
    """
    choices = require_key(response, "choices", list)
    if not choices:
        raise ParseError("the reply has no choices", reason="missing_key", field="choices[0]")
    return assistant_message(require_key(choices[0], "message", dict, "choices[0]"), "choices[0].message")


def assistant_message(m: Any, where: str = "message", first_call: int = 0) -> AssistantMessage:
    """One OpenAI assistant message (a record's turn, or an endpoint's reply) as ours: tool calls
    (ids kept, else `call_<n>`), legacy `function_call`, typed parts, reasoning, `weight` as loss.
    Arguments that are not valid JSON are kept with `parse_error`."""
    if not isinstance(m, dict):
        raise ParseError(f"a message is an object, found {type(m).__name__}", reason="wrong_type", field=where)
    text, reasoning, part_calls = message_content(m.get("content"), f"{where}.content")
    calls: list[ToolCall] = []
    raw_calls = list(optional_key(m, "tool_calls", list, where, []) or [])
    if m.get("function_call"):
        raw_calls.append({"function": m["function_call"]})
    n = first_call
    for j, tc in enumerate(raw_calls):
        fn = require_key(tc, "function", dict, f"{where}.tool_calls[{j}]")
        calls.append(_call(fn, tc.get("id") or f"call_{n}", f"{where}.tool_calls[{j}].function"))
        n += 1
    for j, value in enumerate(part_calls):
        calls.append(_call(value, f"call_{n}", f"{where}.content[tool_call {j}]"))
        n += 1
    reasoning = m.get("reasoning_content") or m.get("reasoning") or reasoning
    loss = bool(m.get("weight", 1)) if "weight" in m else bool(m.get("loss", True))
    return AssistantMessage(content=text, reasoning=reasoning or None, tool_calls=calls, loss=loss)


def message_content(content: Any, where: str) -> tuple[str, str | None, list[Any]]:
    """(text, reasoning, tool-call parts) of a string or typed-parts content."""
    if content is None or isinstance(content, str):
        return content or "", None, []
    if not isinstance(content, list):
        raise ParseError(f"content must be a string or a list of parts, found {type(content).__name__}",
                         reason="wrong_type", field=where)
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[Any] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        value = part.get("text", part.get("value", part.get("reasoning"))) if isinstance(part, dict) else None
        if kind == "text":
            texts.append(as_text(value, f"{where}[{j}].text"))
        elif kind in ("reasoning", "thinking"):
            reasoning.append(as_text(value, f"{where}[{j}].value"))
        elif kind == "tool_call":
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except json.JSONDecodeError as e:
                    raise ParseError(f"tool_call part is not valid JSON: {e.msg}",
                                     reason="unparseable_action", field=f"{where}[{j}].value") from e
            calls.append(value)
        else:
            raise ParseError(f"unsupported content part type {kind!r} (supported: text, reasoning, tool_call)",
                             reason="unsupported_content", field=f"{where}[{j}].type")
    return "\n".join(texts), "\n".join(reasoning) or None, calls


def _call(fn: Any, call_id: str, where: str) -> ToolCall:
    name = require_key(fn, "name", str, where)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        parsed, err = parse_json_arguments(args)
        return ToolCall(id=call_id, name=name, arguments=parsed, raw=args, parse_error=err)
    if not isinstance(args, dict):
        args = {"input": args}
    return ToolCall(id=call_id, name=name, arguments=args)
