"""The released Agent-FLAN dataset: `{"id", "conversation": [{"role", "content", "loss"}]}`.

The release is inconsistent across splits (some messages lack `loss`, some carry `type`), which
is why `datasets.load_dataset` fails on it. This reader parses line by line and tolerates it: a
missing `loss` means "trained" for assistant turns and "not trained" otherwise; unknown nested
keys are kept in the message's `metadata`. There is no tool role: observations are user turns,
and tool calls stay inside the assistant text (ReAct or T-FLAN chat), as released.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agentflan.errors import ParseError
from agentflan.io.base import Reader, RecordContext, as_text, require_key
from agentflan.schema import AssistantMessage, Message, SystemMessage, Trajectory, UserMessage

_KNOWN = {"role", "content", "loss"}


class AgentFlanReader(Reader):
    name: ClassVar[str] = "agentflan"

    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        key = "conversation" if isinstance(record, dict) and "conversation" in record else "conversations"
        convs = require_key(record, key, list)
        messages: list[Message] = []
        for i, m in enumerate(convs):
            loc = f"{key}[{i}]"
            role = require_key(m, "role", str, loc)
            content = as_text(m.get("content"), f"{loc}.content")
            loss = m.get("loss")
            if loss is not None and not isinstance(loss, bool):
                raise ParseError(f"loss must be true, false or absent, found {loss!r}", reason="wrong_type",
                                 field=f"{loc}.loss")
            meta = {k: v for k, v in m.items() if k not in _KNOWN}
            if role == "system":
                messages.append(SystemMessage(content=content, loss=bool(loss), metadata=meta))
            elif role == "user":
                messages.append(UserMessage(content=content, loss=bool(loss), metadata=meta))
            elif role == "assistant":
                messages.append(AssistantMessage(content=content, loss=True if loss is None else loss,
                                                 metadata=meta))
            else:
                raise ParseError(f"unknown role {role!r} (expected system, user, assistant)",
                                 reason="unknown_role", field=f"{loc}.role")
        rid = record.get("id")
        return Trajectory(id=str(rid) if rid is not None else ctx.default_id(), messages=messages,
                          source=ctx.source(str(rid) if rid is not None else None),
                          lineage=[f"read:{self.name}"])
