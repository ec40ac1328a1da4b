"""Salesforce xLAM / APIGen function-calling data (`xlam-function-calling-60k` and its kin).

A record is `{"id", "query", "tools", "answers"}`; in the released files `tools` and `answers`
are JSON strings (lists are accepted too). A record becomes a user turn (the query) and one
assistant turn holding the answers as tool calls (several answers: parallel calls). There are no
tool results and no final text: APIGen verified the calls by executing them, but did not release
the outputs.

APIGen's tool parameters are not JSON schema but `{name: {"type": "str, optional", "description",
"default"}}` with Python type names; they are converted to a JSON-schema object: `str` -> string,
`int` -> integer, `float` -> number, `bool` -> boolean, `list`/`List[...]`/`Tuple[...]`/`set` ->
array (with `items` for `List[str]` etc.), `dict`/`Dict[...]` -> object, anything else (`Any`,
`Callable`, `Union[...]`) untyped; `description` and `default` kept. A parameter is required
unless its type says `optional` or it has a `default` (an explicit `required` flag wins).

An empty answer list (APIGen's irrelevance data: no offered tool fits) gives a prompt-only
trajectory tagged `no_call=true`: the right reply is not to call, and the data has no text for it.
"""

from __future__ import annotations

import json
import re
from typing import Any, ClassVar

from agentflan.errors import ParseError
from agentflan.io.base import Reader, RecordContext, as_text, require_key
from agentflan.schema import AssistantMessage, Message, ToolCall, ToolSpec, Trajectory, UserMessage

_SCALARS = {"str": "string", "string": "string", "int": "integer", "integer": "integer", "float": "number",
            "number": "number", "bool": "boolean", "boolean": "boolean"}
_ARRAYS = ("list", "tuple", "set", "array", "sequence")
_OBJECTS = ("dict", "object", "mapping")


def _decode_list(record: dict[str, Any], key: str) -> list[Any]:
    value = require_key(record, key, (str, list))
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ParseError(f"{key} is not valid JSON: {e.msg}", reason="bad_tools" if key == "tools"
                             else "unparseable_action", field=key) from e
    if not isinstance(value, list):
        raise ParseError(f"{key} must be a list, found {type(value).__name__}", reason="wrong_type", field=key)
    return value


def json_schema_type(type_text: str) -> dict[str, Any]:
    """A JSON-schema type for an APIGen Python type name.

    Examples:
        >>> json_schema_type("str, optional"), json_schema_type("List[int]"), json_schema_type("Callable")
        ({'type': 'string'}, {'type': 'array', 'items': {'type': 'integer'}}, {})
    """
    base = re.sub(r",?\s*optional\s*$", "", type_text.strip(), flags=re.IGNORECASE).strip()
    head, _, inner = base.partition("[")
    head = head.strip().lower()
    if head in _SCALARS and not inner:
        return {"type": _SCALARS[head]}
    if head in _ARRAYS:
        item = inner.rstrip("]").strip().lower()
        return {"type": "array", **({"items": {"type": _SCALARS[item]}} if item in _SCALARS else {})}
    if head in _OBJECTS:
        return {"type": "object"}
    return {}


def tool_spec(raw: Any, where: str) -> ToolSpec:
    """An APIGen tool (`name`, `description`, `parameters` by name) as a JSON-schema function spec."""
    name = require_key(raw, "name", str, where)
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise ParseError("parameters must be an object", reason="bad_tools", field=f"{where}.parameters")
    if params.get("type") == "object" and isinstance(params.get("properties"), dict):  # already JSON schema
        schema = params
    else:
        props: dict[str, Any] = {}
        required = []
        for pname, p in params.items():
            if not isinstance(p, dict):
                raise ParseError(f"parameter {pname!r} must be an object", reason="bad_tools",
                                 field=f"{where}.parameters.{pname}")
            type_text = str(p.get("type", ""))
            prop = {**json_schema_type(type_text),
                    **{k: p[k] for k in ("description", "default", "enum") if k in p}}
            props[pname] = prop
            optional = "optional" in type_text.lower() or "default" in p
            if p.get("required", not optional) is True:
                required.append(pname)
        schema = {"type": "object", "properties": props, **({"required": required} if required else {})}
    extra = {k: v for k, v in raw.items() if k not in ("name", "description", "parameters")}
    return ToolSpec(name=name, description=as_text(raw.get("description"), f"{where}.description"),
                    parameters=schema, metadata=extra)


class XLAMReader(Reader):
    name: ClassVar[str] = "xlam"

    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        query = as_text(require_key(record, "query", str), "query")
        tools = [tool_spec(t, f"tools[{i}]") for i, t in enumerate(_decode_list(record, "tools"))]
        calls = []
        for i, answer in enumerate(_decode_list(record, "answers")):
            where = f"answers[{i}]"
            name = require_key(answer, "name", str, where)
            args = answer.get("arguments", {})
            raw = None
            if isinstance(args, str):
                raw = args
                try:
                    args = json.loads(args)
                except json.JSONDecodeError as e:
                    raise ParseError(f"arguments are not valid JSON: {e.msg}", reason="unparseable_action",
                                     field=f"{where}.arguments") from e
            if not isinstance(args, dict):
                raise ParseError(f"arguments must be an object, found {type(args).__name__}", reason="wrong_type",
                                 field=f"{where}.arguments")
            calls.append(ToolCall(id=f"call_{i}", name=name, arguments=args, raw=raw))
        messages: list[Message] = [UserMessage(content=query)]
        tags = {}
        if calls:
            messages.append(AssistantMessage(tool_calls=calls))
        else:
            tags["no_call"] = "true"
        rid = record.get("id")
        return Trajectory(id=str(rid) if rid is not None else ctx.default_id(), messages=messages, tools=tools,
                          source=ctx.source(str(rid) if rid is not None else None), lineage=[f"read:{self.name}"],
                          tags=tags)
