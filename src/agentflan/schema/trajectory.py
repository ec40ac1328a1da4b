"""The one typed schema in the middle: every reader produces `Trajectory`, every writer consumes it.

A trajectory is a conversation between a user, an assistant (that may call tools) and the tools
themselves. It keeps where it came from (`Source`, `lineage`), what tools were offered (`tools`)
and, on every message, whether the message carries loss (`loss`) and, for assistant messages,
which Agent-FLAN capability it exercises (`capability`).

Readers stay faithful to their source: a terminal action such as ToolBench's `Finish` or
FireAct's `finish[...]` is kept as a tool call, and the trajectory is tagged
`final_tool=<name>`, so that later steps (alignment to chat) know which call is the answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION: Literal[1] = 1

Capability = Literal["reasoning", "retrieval", "understanding", "instruction_following"]
CAPABILITIES: tuple[str, ...] = ("reasoning", "retrieval", "understanding", "instruction_following")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class ToolSpec(_Strict):
    """A function the assistant may call, as an OpenAI-style JSON-schema function spec."""

    name: str = Field(min_length=1)
    description: str = ""
    parameters: dict[str, Any] = Field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    """JSON schema of the arguments, kept verbatim from the source."""
    metadata: dict[str, Any] = Field(default_factory=dict)
    """Keys of the source spec that are not part of the OpenAI function schema."""


class ToolCall(_Strict):
    """One call of a tool by the assistant."""

    id: str
    name: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    raw: str | None = None
    """The text the call was parsed from (ReAct step, JSON string), when it was parsed."""
    parse_error: str | None = None
    """Why `raw` could not be parsed; the call is then kept for audit, not silently dropped."""


class SystemMessage(_Strict):
    role: Literal["system"] = "system"
    content: str
    loss: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)


class UserMessage(_Strict):
    role: Literal["user"] = "user"
    content: str
    loss: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)


class AssistantMessage(_Strict):
    role: Literal["assistant"] = "assistant"
    content: str = ""
    """Visible text: a plain answer, or the thought that accompanies tool calls."""
    reasoning: str | None = None
    """Hidden reasoning of reasoning models (e.g. a `reasoning` content part), kept apart."""
    tool_calls: list[ToolCall] = Field(default_factory=list)
    loss: bool = True
    capability: Capability | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)


class ToolMessage(_Strict):
    """The result of a tool call (an observation)."""

    role: Literal["tool"] = "tool"
    content: str
    tool_call_id: str | None = None
    name: str | None = None
    loss: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class Source(_Strict):
    """Where a trajectory came from."""

    format: str
    """Reader name, e.g. `toolbench`."""
    path: str | None = None
    line: int | None = None
    """1-based line of the record in `path` (its first line for multi-line JSON)."""
    original_id: str | None = None
    dataset: str | None = None
    """A user-facing name of the source dataset (per-source statistics group by it)."""


class Trajectory(_Strict):
    """One agent (or chat) episode."""

    schema_version: Literal[1] = SCHEMA_VERSION
    id: str = Field(min_length=1)
    messages: list[Message]
    tools: list[ToolSpec] = Field(default_factory=list)
    source: Source
    lineage: list[str] = Field(default_factory=list)
    """Names of the steps applied, in order (the reader first, e.g. `read:toolbench`)."""
    tags: dict[str, str] = Field(default_factory=dict)
    """Short labels: `task`, `final_tool`, `negative_kind`, `finish_type`, ..."""
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def system(self) -> str | None:
        """The leading system prompt, if any."""
        if self.messages and isinstance(self.messages[0], SystemMessage):
            return self.messages[0].content
        return None

    def tool_names(self) -> set[str]:
        return {t.name for t in self.tools}

    def to_json_dict(self) -> dict[str, Any]:
        """A compact, deterministic JSON-ready dict (fields equal to their defaults left out,
        except `schema_version`, which identifies the format)."""
        d = self.model_dump(mode="json", exclude_defaults=True)
        # the role is the union's discriminator: always written, first
        d["messages"] = [{"role": m.role, **md} for m, md in zip(self.messages, d["messages"], strict=True)]
        return {"schema_version": self.schema_version, **d}
