"""ReAct text: parse and render the two dialects readers meet.

* ToolLLaMA / ToolBench: ``Thought: ...\\nAction: name\\nAction Input: {json}``
* FireAct / HotpotQA: ``Thought: ...\\nAction: name[argument]`` with ``Observation: ...`` turns

Parsing and rendering live side by side so that `render(parse(x)) == x` for well-formed text;
tests check the round trip on every real sample.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from agentflan.errors import ParseError

_TOOLLLAMA = re.compile(
    r"^\n?(?:Thought: ?(?P<thought>.*?))?\nAction: ?(?P<name>[^\n]*?) *\nAction Input: ?(?P<args>.*)\Z",
    re.DOTALL,
)
_BRACKET = re.compile(
    r"^(?:Thought:\s?(?P<thought>.*?)\n)?Action:\s?(?P<name>[A-Za-z_][\w.-]*)\[(?P<arg>.*)\]\s*\Z",
    re.DOTALL,
)


@dataclass(frozen=True)
class ReactStep:
    """One parsed assistant step: the thought and, if any, the action."""

    thought: str
    name: str | None
    arguments: dict[str, Any]
    raw_arguments: str | None = None
    parse_error: str | None = None


def parse_toolllama(text: str) -> ReactStep:
    """Parse a ToolLLaMA assistant turn. Text without `Action:` is a plain answer, kept verbatim.

    Examples:
        >>> s = parse_toolllama('\\nThought: look it up\\nAction: get_x\\nAction Input: {"a": 1}')
        >>> (s.thought, s.name, s.arguments)
        ('look it up', 'get_x', {'a': 1})
    """
    if "\nAction:" not in "\n" + text:
        return ReactStep(thought=text, name=None, arguments={})
    m = _TOOLLLAMA.match("\n" + text if text.startswith("Action:") else text)
    if not m:
        raise ParseError("text has 'Action:' but not the 'Action:'/'Action Input:' pair",
                         reason="unparseable_action")
    args_text = m.group("args").strip()
    arguments, error = parse_json_arguments(args_text)
    return ReactStep(thought=m.group("thought") or "", name=m.group("name"),
                     arguments=arguments, raw_arguments=args_text, parse_error=error)


def render_toolllama(thought: str, name: str | None, arguments: dict[str, Any] | None = None,
                     raw_arguments: str | None = None) -> str:
    """Render a ToolLLaMA assistant turn (the inverse of `parse_toolllama`)."""
    if name is None:
        return thought
    args = raw_arguments if raw_arguments is not None else json.dumps(arguments or {}, ensure_ascii=False)
    return f"\nThought: {thought}\nAction: {name}\nAction Input: {args}"


def parse_bracket(text: str, arg_names: dict[str, str] | None = None) -> ReactStep:
    """Parse a FireAct-style step `Thought: t\\nAction: name[arg]`.

    Args:
        text: The assistant turn.
        arg_names: Argument name per action (`search` -> `query`); unknown actions use `input`.

    Examples:
        >>> parse_bracket("Thought: find it\\nAction: search[Badr Hari]").arguments
        {'query': 'Badr Hari'}
    """
    names = {**DEFAULT_BRACKET_ARGS, **arg_names} if arg_names else DEFAULT_BRACKET_ARGS
    thought, name, arguments = split_bracket(text, names)
    return ReactStep(thought=thought, name=name, arguments=arguments)


def split_bracket(text: str, names: dict[str, str]) -> tuple[str, str | None, dict[str, Any]]:
    """`parse_bracket` as a tuple (thought, name, arguments), with the argument names complete:
    what a reader calls for every assistant turn."""
    m = _BRACKET.match(text)
    if not m:
        if _ACTION_LINE.search(text):
            raise ParseError(f"unparseable ReAct action in {text[-120:]!r}", reason="unparseable_action")
        return text, None, {}
    thought, name, arg = m.group("thought", "name", "arg")
    return thought or "", name, {names.get(name, "input"): arg}


_ACTION_LINE = re.compile(r"^Action:", re.MULTILINE)


def render_bracket(thought: str, name: str | None, arguments: dict[str, Any]) -> str:
    """Render a FireAct-style step (the inverse of `parse_bracket`)."""
    if name is None:
        return thought
    if len(arguments) == 1 and isinstance(next(iter(arguments.values())), str):
        arg = next(iter(arguments.values()))
    else:
        arg = json.dumps(arguments, ensure_ascii=False)
    head = f"Thought: {thought}\n" if thought else ""
    return f"{head}Action: {name}[{arg}]"


DEFAULT_BRACKET_ARGS = {"search": "query", "lookup": "keyword", "finish": "answer"}
"""Argument names of the HotpotQA/Wikipedia actions used by ReAct and FireAct."""

OBSERVATION_PREFIX = "Observation:"


def parse_json_arguments(text: str) -> tuple[dict[str, Any], str | None]:
    """Parse call arguments from a JSON string; return `({}, error)` when that fails.

    A JSON value that is not an object is wrapped as `{"input": value}`.
    """
    if not text.strip():
        return {}, None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return {}, f"arguments are not valid JSON ({e.msg} at char {e.pos})"
    if isinstance(value, dict):
        return value, None
    return {"input": value}, None

