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
from agentflan.formats.openai import assistant_message, message_content
from agentflan.io.base import Reader, RecordContext, parse_tools, require_key
from agentflan.schema import (
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
            text, _, _ = message_content(m.get("content"), f"{loc}.content")
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
