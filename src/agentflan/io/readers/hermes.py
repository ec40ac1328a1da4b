"""Hermes function-calling data (NousResearch `hermes-function-calling-v1` and data in its format).

A record is ShareGPT-like: `conversations` with `from` system/human/gpt/tool (plus `id`,
`category`, `subcategory`, `task`, kept in metadata). The tools, calls and results live in tags:

* the system prompt lists the tools between `<tools>` and `</tools>` (a JSON or Python-literal list,
  or objects separated by whitespace as in the Hermes 2 Pro / Hermes 3 model-card prompt; OpenAI
  `{"type": "function", "function": {...}}` entries or bare functions); the list becomes
  the trajectory's `tools` and its block is removed from the prompt text (the rest of the prompt,
  which explains the tags and names them in an empty `<tools> </tools>`, is kept);
* a `gpt` turn's `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (JSON or a Python
  literal) become its tool calls, parallel when there are several; the text outside them is the
  assistant's content;
* a `tool` turn's `<tool_response>` blocks are the results, answering the open calls in order;
  a block `{"name": n, "content": c}` gives the tool name and the result `c` (a string as is,
  anything else as JSON); other blocks are kept as text.

Rows without `<tools>` (the json-mode subsets) are plain chat. A call block that does not parse,
or a result with no open call, rejects the record with a reason.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from agentflan.errors import ParseError
from agentflan.io.base import Reader, RecordContext, as_text, json_or_literal, parse_tools, require_key
from agentflan.schema import AssistantMessage, Message, SystemMessage, ToolCall, ToolMessage, Trajectory, UserMessage

TOOLS_RE = re.compile(r"<tools>(.*?)</tools>", re.DOTALL)
CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)
RESPONSE_RE = re.compile(r"<tool_response>(.*?)</tool_response>", re.DOTALL)
USER = {"human", "user"}
ASSISTANT = {"gpt", "assistant"}


class HermesReader(Reader):
    name: ClassVar[str] = "hermes"

    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        convs = require_key(record, "conversations", list)
        messages: list[Message] = []
        tools: list[Any] = []
        pending: list[ToolCall] = []
        n_calls = 0
        for i, turn in enumerate(convs):
            loc = f"conversations[{i}]"
            role = require_key(turn, "from", str, loc)
            value = as_text(turn.get("value"), f"{loc}.value")
            if role == "system":
                # the prompt's own prose mentions "<tools> </tools>": only blocks with content are lists
                for match in reversed([m for m in TOOLS_RE.finditer(value) if m.group(1).strip()]):
                    tools[:0] = parse_tools(_tool_list(match.group(1).strip(), f"{loc}.value"), f"{loc}.value")
                    value = (value[:match.start()] + value[match.end():]).strip()
                messages.append(SystemMessage(content=value))
            elif role in USER:
                messages.append(UserMessage(content=value))
            elif role in ASSISTANT:
                calls = []
                for block in CALL_RE.findall(value):
                    calls.append(_call(block, f"call_{n_calls}", f"{loc}.value"))
                    n_calls += 1
                text = CALL_RE.sub("", value).strip() if calls else value
                pending.extend(calls)
                messages.append(AssistantMessage(content=text, tool_calls=calls))
            elif role == "tool":
                blocks = RESPONSE_RE.findall(value) or [value]
                for block in blocks:
                    if not pending:
                        raise ParseError("a tool result with no open tool call", reason="orphan_tool_result",
                                         field=f"{loc}.value")
                    call = pending.pop(0)
                    name, content = _response(block.strip())
                    messages.append(ToolMessage(content=content, name=name or call.name, tool_call_id=call.id))
            else:
                raise ParseError(f"unknown role {role!r} (expected system, human, gpt, tool)", reason="unknown_role",
                                 field=f"{loc}.from")
        rid = record.get("id")
        meta = {k: record[k] for k in ("category", "subcategory", "task") if k in record}
        return Trajectory(id=str(rid) if rid is not None else ctx.default_id(), messages=messages, tools=tools,
                          source=ctx.source(str(rid) if rid is not None else None), lineage=[f"read:{self.name}"],
                          metadata=meta)


def _tool_list(text: str, where: str) -> Any:
    """What a `<tools>` block holds: a JSON (or Python literal) list, or, as the Hermes 2 Pro and
    Hermes 3 model cards write the prompt, JSON objects one after the other, separated by
    whitespace (`<tools> {...} {...} </tools>`)."""
    try:
        return json_or_literal(text, "the <tools> list", "bad_tools", where)
    except ParseError:
        objects = _json_objects(text)
        if objects is None:
            raise
        return objects


def _json_objects(text: str) -> list[Any] | None:
    """JSON objects separated by whitespace, or None when `text` is not that."""
    decoder = json.JSONDecoder()
    out: list[Any] = []
    i = 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        try:
            value, i = decoder.raw_decode(text, i)
        except (json.JSONDecodeError, RecursionError):
            return None
        if not isinstance(value, dict):
            return None
        out.append(value)
    return out or None


def _call(block: str, call_id: str, where: str) -> ToolCall:
    value = json_or_literal(block.strip(), "a <tool_call> block", "unparseable_action", where)
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ParseError("a <tool_call> block must hold an object with a name", reason="unparseable_action",
                         field=where)
    args = value.get("arguments", {})
    raw = None
    if isinstance(args, str):  # arguments double-encoded as a JSON string
        raw = args
        args = json_or_literal(args, "tool-call arguments", "unparseable_action", where)
    if not isinstance(args, dict):
        raise ParseError(f"tool-call arguments must be an object, found {type(args).__name__}",
                         reason="unparseable_action", field=where)
    return ToolCall(id=call_id, name=value["name"], arguments=args, raw=raw)


def _response(block: str) -> tuple[str | None, str]:
    """(tool name, result text) of a `<tool_response>` block."""
    try:
        value = json_or_literal(block, "a <tool_response> block", "bad_result", "")
    except ParseError:
        return None, block
    if isinstance(value, dict) and "content" in value:
        content = value["content"]
        name = value.get("name")
        return (name if isinstance(name, str) else None,
                content if isinstance(content, str) else json.dumps(content, ensure_ascii=False))
    return None, block
