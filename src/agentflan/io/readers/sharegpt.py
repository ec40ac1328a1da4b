"""ShareGPT conversations (plain chat, and LLaMA-Factory/glaive with tools) and Alpaca.

ShareGPT roles: `human`/`user`, `gpt`/`assistant`, `system`, `function_call` (a JSON call, or a
list of calls, made by the assistant), `observation` (a tool result). A top-level `system` and
`tools` (a JSON string or list) are read too. An observation answers the oldest unanswered call.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from agentflan.errors import ParseError
from agentflan.io.base import Reader, RecordContext, as_text, optional_key, parse_tools, require_key
from agentflan.schema import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Trajectory,
    UserMessage,
    trajectory_from_dict,
)

USER_ROLES = {"human", "user"}
ASSISTANT_ROLES = {"gpt", "assistant", "bing", "chatgpt", "bard"}


class ShareGPTReader(Reader):
    name: ClassVar[str] = "sharegpt"

    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        key = "conversations" if isinstance(record, dict) and "conversations" in record else "messages"
        convs = require_key(record, key, list)
        messages: list[Message] = []
        system = record.get("system")
        if system:
            messages.append(SystemMessage(content=as_text(system, "system")))
        pending: list[ToolCall] = []
        n_calls = 0
        for i, m in enumerate(convs):
            loc = f"{key}[{i}]"
            role = require_key(m, "from", str, loc)
            value = as_text(m.get("value"), f"{loc}.value")
            if role == "system":
                messages.append(SystemMessage(content=value))
            elif role in USER_ROLES:
                messages.append(UserMessage(content=value))
            elif role in ASSISTANT_ROLES:
                messages.append(AssistantMessage(content=value, loss=bool(m.get("loss", True))))
            elif role == "function_call":
                calls = []
                for j, call in enumerate(_decode_calls(value, f"{loc}.value")):
                    name = require_key(call, "name", str, f"{loc}.value[{j}]")
                    args = call.get("arguments", {})
                    raw = None
                    if isinstance(args, str):  # some exports double-encode the arguments
                        raw = args
                        try:
                            args = json.loads(args)
                        except json.JSONDecodeError as e:
                            raise ParseError(f"arguments are not valid JSON: {e.msg}",
                                             reason="unparseable_action",
                                             field=f"{loc}.value.arguments") from e
                    if not isinstance(args, dict):
                        args = {"input": args}
                    calls.append(ToolCall(id=f"call_{n_calls}", name=name, arguments=args, raw=raw))
                    n_calls += 1
                pending.extend(calls)
                messages.append(AssistantMessage(tool_calls=calls, loss=bool(m.get("loss", True))))
            elif role in ("observation", "function", "tool"):
                results = _parallel_results(value, pending)
                for result in results or [value]:
                    call = pending.pop(0) if pending else None
                    messages.append(ToolMessage(content=result, name=call.name if call else None,
                                                tool_call_id=call.id if call else None))
            else:
                raise ParseError(
                    f"unknown role {role!r} (expected human, gpt, system, function_call, observation)",
                    reason="unknown_role", field=f"{loc}.from")
        rid = record.get("id")
        return Trajectory(id=str(rid) if rid is not None else ctx.default_id(), messages=messages,
                          tools=parse_tools(record.get("tools")),
                          source=ctx.source(str(rid) if rid is not None else None),
                          lineage=[f"read:{self.name}"])


def _parallel_results(value: str, pending: list[ToolCall]) -> list[str] | None:
    """The results of parallel calls, which LLaMA-Factory (and the `sharegpt` writer) put in one
    observation as a JSON list of strings: split when it answers every open call at once."""
    if len(pending) < 2 or not value.startswith("["):
        return None
    try:
        items = json.loads(value)
    except json.JSONDecodeError:
        return None
    if isinstance(items, list) and len(items) == len(pending) and all(isinstance(i, str) for i in items):
        return items
    return None


def _decode_calls(value: str, where: str) -> list[Any]:
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError as e:
        raise ParseError(f"function_call is not valid JSON: {e.msg}", reason="unparseable_action",
                         field=where) from e
    return decoded if isinstance(decoded, list) else [decoded]


class AlpacaReader(Reader):
    """Alpaca `instruction`/`input`/`output` (+ optional `system`, `history` of [user, assistant])."""

    name: ClassVar[str] = "alpaca"

    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        # type checks inline, the shared helpers called only to raise their error (as ReactReader)
        if type(record) is not dict:
            require_key(record, "instruction", str)  # raises unless it is an object after all
        instruction = record.get("instruction")
        if type(instruction) is not str:
            instruction = require_key(record, "instruction", str)
        extra = record.get("input")
        if type(extra) is not str:
            extra = as_text(extra, "input")
        output = record.get("output")
        if type(output) is not str:
            output = require_key(record, "output", str)
        messages: list[dict[str, Any]] = []
        if record.get("system"):
            messages.append({"role": "system", "content": as_text(record["system"], "system")})
        history = record.get("history")
        for j, turn in enumerate(() if history is None else optional_key(record, "history", list)):
            if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
                raise ParseError("history turns must be [user, assistant] string pairs",
                                 reason="wrong_type", field=f"history[{j}]")
            messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
        prompt = f"{instruction}\n\n{extra}" if extra else instruction
        messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
        meta = {"instruction": instruction, "input": extra} if extra else {}
        rid = record.get("id")
        # one validation of the whole tree (see ReactReader.parse)
        return trajectory_from_dict({
            "id": str(rid) if rid is not None else ctx.default_id(), "messages": messages,
            "source": ctx.source_dict(str(rid) if rid is not None else None),
            "lineage": [f"read:{self.name}"], "metadata": meta})
