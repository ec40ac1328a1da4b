"""FireAct-style ReAct in OpenAI messages: `Thought: ...\\nAction: tool[arg]`, `Observation: ...`.

An assistant turn with an action becomes a tool call (`search[x]` -> `search(query=x)`); the user
turn after it that starts with `Observation:` becomes that call's tool result. `finish[answer]`
is kept as a call of the terminal tool `finish` (tag `final_tool=finish`), so writing back
reproduces the action strings exactly.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agentflan.errors import ParseError
from agentflan.formats.react import DEFAULT_BRACKET_ARGS, OBSERVATION_PREFIX, split_bracket
from agentflan.io.base import Reader, RecordContext, as_text, require_key
from agentflan.schema import ToolSpec, Trajectory, trajectory_from_dict

_DESCRIPTIONS = {
    "search": "Search Wikipedia for an entity and return the first paragraph",
    "lookup": "Return the next sentence containing the keyword in the current page",
    "finish": "Finish the task with the answer",
}


class ReactReader(Reader):
    """Args:
        tools: Action names allowed (default: search, lookup, finish). A call to any other name is
            an undeclared tool and the record is rejected.
        arg_names: Argument name per action (default `search`->`query`, `lookup`->`keyword`,
            `finish`->`answer`; others `input`).
        final_tool: The terminal action.
    """

    name: ClassVar[str] = "react"

    def __init__(self, *, tools: list[str] | None = None, arg_names: dict[str, str] | None = None,
                 final_tool: str = "finish", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.tool_names = tools or ["search", "lookup", "finish"]
        self.arg_names = {**DEFAULT_BRACKET_ARGS, **(arg_names or {})}
        self.final_tool = final_tool
        self._specs = self.specs()

    def specs(self) -> list[ToolSpec]:
        out = []
        for name in self.tool_names:
            arg = self.arg_names.get(name, "input")
            out.append(ToolSpec(name=name, description=_DESCRIPTIONS.get(name, ""),
                                parameters={"type": "object", "properties": {arg: {"type": "string"}},
                                            "required": [arg]}))
        return out

    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        # Messages are built as plain dicts and validated once, as one tree: a third of the cost
        # of constructing every message model on its own. Type checks inline, with the shared
        # helpers called only to raise their error (same messages, same fields).
        raw_msgs = require_key(record, "messages", list)
        messages: list[dict[str, Any]] = []
        pending: dict[str, Any] | None = None
        n_calls = 0
        names = self.arg_names
        for i, m in enumerate(raw_msgs):
            role = m.get("role") if type(m) is dict else None
            if type(role) is not str:
                require_key(m, "role", str, f"messages[{i}]")
            content = m.get("content")
            if type(content) is not str:
                content = as_text(content, f"messages[{i}].content")
            if role == "system":
                messages.append({"role": "system", "content": content})
            elif role == "user":
                if pending is not None and content.startswith(OBSERVATION_PREFIX):
                    obs = content[len(OBSERVATION_PREFIX):].lstrip(" ")
                    messages.append({"role": "tool", "content": obs, "name": pending["name"],
                                     "tool_call_id": pending["id"]})
                    pending = None
                else:
                    messages.append({"role": "user", "content": content})
            elif role == "assistant":
                try:
                    thought, name, arguments = split_bracket(content, names)
                except ParseError as e:
                    e.field = f"messages[{i}].content"
                    raise
                calls = []
                if name is not None:
                    pending = {"id": f"call_{n_calls}", "name": name, "arguments": arguments}
                    calls.append(pending)
                    n_calls += 1
                messages.append({"role": "assistant", "content": thought, "tool_calls": calls,
                                 "loss": bool(m.get("loss", True))})
            else:
                raise ParseError(f"unknown role {role!r} (expected system, user, assistant)",
                                 reason="unknown_role", field=f"messages[{i}].role")
        rid = record.get("id")
        return trajectory_from_dict({
            "id": str(rid) if rid is not None else ctx.default_id(), "messages": messages,
            "tools": list(self._specs), "source": ctx.source_dict(str(rid) if rid is not None else None),
            "lineage": [f"read:{self.name}"], "tags": {"final_tool": self.final_tool}})
