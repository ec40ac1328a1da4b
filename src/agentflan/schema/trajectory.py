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
        try:
            return _fast_json_dict(self)
        except _NotPlain:
            return self._model_json_dict()

    def _model_json_dict(self) -> dict[str, Any]:
        """`to_json_dict` by pydantic's serializer: the reference the fast path must equal."""
        d = self.model_dump(mode="json", exclude_defaults=True)
        # the role is the union's discriminator: always written, first
        d["messages"] = [{"role": m.role, **md} for m, md in zip(self.messages, d["messages"], strict=True)]
        return {"schema_version": self.schema_version, **d}


def trajectory_from_dict(data: Any) -> Trajectory:
    """`Trajectory.model_validate(data)`, by pydantic's validator without the Python method around
    it (a readers' hot path: that method is an eighth of the cost of validating a chat record)."""
    return Trajectory.__pydantic_validator__.validate_python(data)  # type: ignore[no-any-return]


# ---- the fast path of `to_json_dict` ---------------------------------------------------------------
# `model_dump(mode="json", exclude_defaults=True)` costs as much as parsing the record: every
# converted, built and mixed record pays it. These functions give the same dict for the values
# the schema holds in practice (JSON data), field by field. Anything else (a tuple, a datetime,
# an infinite float, a subclass) raises `_NotPlain` and the record takes pydantic's path, so the
# output never differs. tests/unit/test_schema.py checks both paths agree.


class _NotPlain(Exception):
    pass


_SOURCE_FIELDS = ("format", "path", "line", "original_id", "dataset")
assert tuple(Source.model_fields) == _SOURCE_FIELDS, "_fast_json_dict writes Source's fields in this order"
_DEFAULT_PARAMETERS: dict[str, Any] = ToolSpec.model_fields["parameters"].get_default(call_default_factory=True)


def _plain(v: Any, floats: bool = True) -> Any:
    """A copy of `v` if it is JSON data that pydantic's JSON mode would return unchanged (and
    holds no float, unless `floats`)."""
    t = type(v)
    if t is str or t is int or t is bool or v is None:
        return v
    if t is float:
        if floats and v - v == 0.0:  # finite (inf and nan give nan); JSON mode writes those as null
            return v
        raise _NotPlain
    if t is dict:
        out = {}
        for k, x in v.items():
            tx = type(x)
            if type(k) is not str:
                raise _NotPlain
            # leaves inline: most values are strings, and a call per value doubles the cost
            out[k] = x if tx is str or tx is int or tx is bool or x is None else _plain(x, floats)
        return out
    if t is list:
        return [x if type(x) is str else _plain(x, floats) for x in v]
    raise _NotPlain


def _call_dict(c: ToolCall, floats: bool = True) -> dict[str, Any]:
    if type(c) is not ToolCall:
        raise _NotPlain
    d = c.__dict__
    out = {"id": d["id"], "name": d["name"]}
    if d["arguments"]:
        out["arguments"] = _plain(d["arguments"], floats)
    if d["raw"] is not None:
        out["raw"] = d["raw"]
    if d["parse_error"] is not None:
        out["parse_error"] = d["parse_error"]
    return out


def _message_dict(m: Any, floats: bool = True) -> dict[str, Any]:
    d = m.__dict__
    t = type(m)
    if t is AssistantMessage:
        out: dict[str, Any] = {"role": "assistant"}
        if d["content"] != "":
            out["content"] = d["content"]
        if d["reasoning"] is not None:
            out["reasoning"] = d["reasoning"]
        if d["tool_calls"]:
            out["tool_calls"] = [_call_dict(c, floats) for c in d["tool_calls"]]
        if not d["loss"]:
            out["loss"] = d["loss"]
        if d["capability"] is not None:
            out["capability"] = d["capability"]
    elif t is UserMessage or t is SystemMessage:
        out = {"role": d["role"], "content": d["content"]}
        if d["loss"]:
            out["loss"] = d["loss"]
    elif t is ToolMessage:
        out = {"role": "tool", "content": d["content"]}
        if d["tool_call_id"] is not None:
            out["tool_call_id"] = d["tool_call_id"]
        if d["name"] is not None:
            out["name"] = d["name"]
        if d["loss"]:
            out["loss"] = d["loss"]
    else:
        raise _NotPlain
    if d["metadata"]:
        out["metadata"] = _plain(d["metadata"], floats)
    return out


def _tool_dict(t: ToolSpec, floats: bool = True) -> dict[str, Any]:
    if type(t) is not ToolSpec:
        raise _NotPlain
    d = t.__dict__
    out = {"name": d["name"]}
    if d["description"] != "":
        out["description"] = d["description"]
    if d["parameters"] != _DEFAULT_PARAMETERS:
        out["parameters"] = _plain(d["parameters"], floats)
    if d["metadata"]:
        out["metadata"] = _plain(d["metadata"], floats)
    return out


def _fast_json_dict(traj: Trajectory, tools: bool = True, floats: bool = True) -> dict[str, Any]:
    """`to_json_dict`'s fast path; raises `_NotPlain` where it cannot follow pydantic (and on any
    float, unless `floats`: a writer whose JSON engine writes some floats otherwise than Python)."""
    if type(traj) is not Trajectory or type(traj.source) is not Source:
        raise _NotPlain
    d = traj.__dict__
    out: dict[str, Any] = {"schema_version": d["schema_version"], "id": d["id"],
                           "messages": [_message_dict(m, floats) for m in d["messages"]]}
    if d["tools"] and tools:
        out["tools"] = [_tool_dict(t, floats) for t in d["tools"]]
    s = d["source"].__dict__
    src = {"format": s["format"]} if s["format"] is not None else {}  # `_SOURCE_FIELDS` in order, but None
    if s["path"] is not None:
        src["path"] = s["path"]
    if s["line"] is not None:
        src["line"] = s["line"]
    if s["original_id"] is not None:
        src["original_id"] = s["original_id"]
    if s["dataset"] is not None:
        src["dataset"] = s["dataset"]
    out["source"] = src
    if d["lineage"]:
        out["lineage"] = list(d["lineage"])
    if d["tags"]:
        out["tags"] = dict(d["tags"])
    if d["metadata"]:
        out["metadata"] = _plain(d["metadata"], floats)
    return out


def json_dict_checked(traj: Trajectory) -> tuple[dict[str, Any], bool]:
    """`traj.to_json_dict()`, and whether `traj` held JSON data only: then the dict validates back
    into an equal trajectory; otherwise pydantic's JSON mode converted some value (a tuple, a
    date) and a consumer that must see what a reader of the file sees should use the dict."""
    try:
        return _fast_json_dict(traj), True
    except _NotPlain:
        return traj._model_json_dict(), False
