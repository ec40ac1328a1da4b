"""AgentInstruct (THUDM/AgentTuning): `{"id": "os_0", "conversations": [{"from", "value", "loss"}]}`.

The first turns are the task instruction and a one-shot demonstration (`loss` false or null): they
are kept as untrained context. Every assistant turn is parsed with its task's action dialect
(`agentflan.formats.agentinstruct`) into a thought plus a tool call; the human turn that follows a
non-terminal call is that call's tool result, a human turn after a terminal call (`answer`,
`finish`, ...) is a new request. A `gpt` turn with `loss: null` is trained; a turn that names an
action the dialect cannot parse is rejected (`unparseable_action`).
"""

from __future__ import annotations

from typing import Any, ClassVar

from agentflan.errors import ParseError
from agentflan.formats.agentinstruct import dialect_for
from agentflan.io.base import Reader, RecordContext, as_text, require_key
from agentflan.schema import AssistantMessage, Message, ToolCall, ToolMessage, Trajectory, UserMessage


class AgentInstructReader(Reader):
    """Args:
        task: The task (os, db, kg, webshop, alfworld, mind2web) when ids do not say it.
    """

    name: ClassVar[str] = "agentinstruct"

    def __init__(self, *, task: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.task = task

    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        convs = require_key(record, "conversations", list)
        rid = str(record.get("id") or ctx.default_id())
        dialect = dialect_for(rid, self.task)
        messages: list[Message] = []
        pending: ToolCall | None = None
        n_calls = 0
        for i, m in enumerate(convs):
            loc = f"conversations[{i}]"
            role = require_key(m, "from", str, loc)
            value = as_text(m.get("value"), f"{loc}.value")
            loss = m.get("loss")
            if role in ("human", "user"):
                if pending is not None:
                    messages.append(ToolMessage(content=value, name=pending.name, tool_call_id=pending.id))
                else:
                    messages.append(UserMessage(content=value))
                pending = None
            elif role in ("gpt", "assistant"):
                try:
                    step = dialect.parse(value)
                except ParseError as e:
                    e.field = f"{loc}.value"
                    raise
                calls = []
                if step.name is not None:
                    call = ToolCall(id=f"call_{n_calls}", name=step.name, arguments=step.arguments)
                    n_calls += 1
                    calls.append(call)
                    pending = None if step.name in dialect.terminal else call
                messages.append(AssistantMessage(content=step.thought, tool_calls=calls,
                                                 loss=True if loss is None else bool(loss)))
            else:
                raise ParseError(f"unknown role {role!r} (expected human, gpt)", reason="unknown_role",
                                 field=f"{loc}.from")
        tags = {"task": dialect.task}
        if dialect.terminal:
            tags["final_tool"] = sorted(dialect.terminal)[0]
        return Trajectory(id=rid, messages=messages, tools=list(dialect.tools),
                          source=ctx.source(str(record["id"]) if record.get("id") else None),
                          lineage=[f"read:{self.name}"], tags=tags)
