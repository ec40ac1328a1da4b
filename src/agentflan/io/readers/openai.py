"""OpenAI chat messages: `tool_calls`, role `tool`, top-level `tools`, typed content parts.

Content may be a string or a list of parts: `{"type": "text", "text"|"value": ...}`,
`{"type": "reasoning", ...}` (goes to `AssistantMessage.reasoning`) and `{"type": "tool_call",
"value": {"name", "arguments"}}` (LLaMA-Factory's reasoning tool-use data). The fine-tuning
`weight` (0/1) of an assistant message is its `loss`. Legacy `function_call` and role
`function` are accepted. A tool result without `tool_call_id` answers the oldest open call.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from agentflan.errors import ParseError
from agentflan.formats.react import parse_json_arguments
from agentflan.io.base import Reader, RecordContext, as_text, optional_key, parse_tools, require_key
from agentflan.schema import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Trajectory,
    UserMessage,
)


class OpenAIReader(Reader):
    name: ClassVar[str] = "openai"

    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        raw_msgs = require_key(record, "messages", list)
        messages: list[Message] = []
        pending: list[ToolCall] = []
        n_calls = 0
        for i, m in enumerate(raw_msgs):
            loc = f"messages[{i}]"
            role = require_key(m, "role", str, loc)
            text, _, _ = _content(m.get("content"), f"{loc}.content")
            if role in ("system", "developer"):
                messages.append(SystemMessage(content=text))
            elif role == "user":
                messages.append(UserMessage(content=text))
                pending.clear()  # results never came back; checks() reports it
            elif role == "assistant":
                msg = assistant_message(m, loc, n_calls)
                n_calls += len(msg.tool_calls)
                pending.extend(msg.tool_calls)
                messages.append(msg)
            elif role in ("tool", "function"):
                call_id = m.get("tool_call_id")
                split = _split_parallel_results(text, pending) if call_id is None else None
                if split is not None:
                    for open_call, result in zip(list(pending), split, strict=False):
                        messages.append(ToolMessage(content=result, name=open_call.name, tool_call_id=open_call.id))
                        pending.remove(open_call)
                    continue
                answered = next((c for c in pending if c.id == call_id), None) if call_id else None
                if answered is None and call_id is None and pending:
                    answered = pending[0]
                if answered is not None:
                    pending.remove(answered)
                messages.append(ToolMessage(content=text, name=m.get("name") or (answered.name if answered else None),
                                            tool_call_id=call_id or (answered.id if answered else None)))
            else:
                raise ParseError(f"unknown role {role!r} (expected system, user, assistant, tool)",
                                 reason="unknown_role", field=f"{loc}.role")
        rid = record.get("id")
        tools = parse_tools(record.get("tools") or record.get("functions"))
        return Trajectory(id=str(rid) if rid is not None else ctx.default_id(), messages=messages,
                          tools=tools, source=ctx.source(str(rid) if rid is not None else None),
                          lineage=[f"read:{self.name}"])


def assistant_message(m: Any, where: str = "message", first_call: int = 0) -> AssistantMessage:
    """One OpenAI assistant message (a record's turn, or an endpoint's reply) as ours: tool calls
    (ids kept, else `call_<n>`), legacy `function_call`, typed parts, reasoning, `weight` as loss.
    Arguments that are not valid JSON are kept with `parse_error`."""
    if not isinstance(m, dict):
        raise ParseError(f"a message is an object, found {type(m).__name__}", reason="wrong_type", field=where)
    text, reasoning, part_calls = _content(m.get("content"), f"{where}.content")
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


def _content(content: Any, where: str) -> tuple[str, str | None, list[Any]]:
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


def _split_parallel_results(text: str, pending: list[ToolCall]) -> list[str] | None:
    """LLaMA-Factory answers parallel calls with one tool message holding a JSON list of results
    (`[{"tool_call_id", "name", "content"}, ...]`); split it into one result per open call."""
    if len(pending) < 2 or not text.startswith("["):
        return None
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not (isinstance(items, list) and 1 < len(items) <= len(pending)
            and all(isinstance(i, dict) and isinstance(i.get("content"), str) for i in items)):
        return None
    return [i["content"] for i in items]


def _call(fn: Any, call_id: str, where: str) -> ToolCall:
    name = require_key(fn, "name", str, where)
    args = fn.get("arguments", {})
    if isinstance(args, str):
        parsed, err = parse_json_arguments(args)
        return ToolCall(id=call_id, name=name, arguments=parsed, raw=args, parse_error=err)
    if not isinstance(args, dict):
        args = {"input": args}
    return ToolCall(id=call_id, name=name, arguments=args)
