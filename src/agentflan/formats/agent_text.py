"""Agent trajectories as text in a stated format: ReAct or JSON, with randomized key names.

Agent-FLAN keeps ~10% of the data in the original agent format, with *randomized format
instructions* (the release varies Action/action/Tool/API/Command, Parameters/Arguments/
action_input, a final give_answer action) so the model learns to follow the format it is told,
not one template. A `FormatSpec` is one such format; `format_instructions` states it in the
system prompt; `render_step` and `parse_step` are exact inverses.

The `react`/`json` protocols (`agentflan.formats.protocols`) render and parse with these; the
source formats (ToolLLaMA, FireAct, AgentInstruct dialects) are protocols there too.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from agentflan.errors import ParseError
from agentflan.formats.tflan import final_answer
from agentflan.schema import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolMessage,
    ToolSpec,
    Trajectory,
    UserMessage,
)

THOUGHT_KEYS = ("Thought", "thought", "Thinking", "Reasoning")
ACTION_KEYS = ("Action", "action", "Tool", "API", "Command")
INPUT_KEYS = ("Action Input", "Parameters", "Arguments", "action_input", "Args")
FINAL_ACTIONS = ("give_answer", "finish", "Finish", "final_answer")
ANSWER_KEYS = ("answer", "final_answer", "response")
OBSERVATION_KEY = "Observation"


@dataclass(frozen=True)
class FormatSpec:
    style: Literal["react", "json"] = "react"
    thought_key: str = "Thought"
    action_key: str = "Action"
    input_key: str = "Action Input"
    final_action: str = "Finish"
    answer_key: str = "final_answer"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


TOOLLLAMA_SPEC = FormatSpec()


def random_spec(rng: random.Random, styles: tuple[str, ...] = ("react", "json")) -> FormatSpec:
    """A format with every key drawn at random (distinct key names guaranteed)."""
    style = rng.choice(styles)
    action = rng.choice(ACTION_KEYS)
    inputs = [k for k in INPUT_KEYS if k.lower() != action.lower()]
    return FormatSpec(style=style, thought_key=rng.choice(THOUGHT_KEYS), action_key=action,  # type: ignore[arg-type]
                      input_key=rng.choice(inputs), final_action=rng.choice(FINAL_ACTIONS),
                      answer_key=rng.choice(ANSWER_KEYS))


def format_instructions(spec: FormatSpec, tools: list[ToolSpec]) -> str:
    """The system-prompt text that lists the tools and states `spec` exactly."""
    tool_lines = "\n".join(
        f"- {t.name}: {t.description.strip() or '(no description)'} "
        f"Parameters: {json.dumps(t.parameters, ensure_ascii=False, sort_keys=True)}" for t in tools)
    final_args = json.dumps({spec.answer_key: "..."})
    if spec.style == "json":
        shape = json.dumps({spec.thought_key: "your reasoning", spec.action_key: "tool name",
                            spec.input_key: {"argument": "value"}})
        how = (f"Reply with exactly one JSON object per turn, of the form:\n{shape}\n"
               f"When you can answer, use \"{spec.action_key}\": \"{spec.final_action}\" with "
               f"\"{spec.input_key}\": {final_args}.")
    else:
        how = (f"Reply in exactly this format:\n{spec.thought_key}: your reasoning\n{spec.action_key}: tool name\n"
               f"{spec.input_key}: the arguments as a JSON object\n"
               f"When you can answer, use {spec.action_key}: {spec.final_action} with {spec.input_key}: {final_args}.")
    return (f"You can use these tools:\n{tool_lines}\n\n{how}\n"
            f"Tool results come back as \"{OBSERVATION_KEY}: ...\".")


def render_step(spec: FormatSpec, thought: str, name: str, arguments: dict[str, Any]) -> str:
    """One assistant turn in `spec`.

    Examples:
        >>> render_step(FormatSpec(), "look up", "get_x", {"a": 1})
        'Thought: look up\\nAction: get_x\\nAction Input: {"a": 1}'
    """
    if spec.style == "json":
        return json.dumps({spec.thought_key: thought, spec.action_key: name, spec.input_key: arguments},
                          ensure_ascii=False)
    args = json.dumps(arguments, ensure_ascii=False)
    return f"{spec.thought_key}: {thought}\n{spec.action_key}: {name}\n{spec.input_key}: {args}"


def parse_step(spec: FormatSpec, text: str) -> tuple[str, str, dict[str, Any]]:
    """Inverse of `render_step`: (thought, tool name, arguments). Raises `ParseError`."""
    if spec.style == "json":
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ParseError(f"not a JSON object: {e.msg}", reason="unparseable_action") from e
        if not isinstance(obj, dict) or spec.action_key not in obj:
            raise ParseError(f"JSON reply lacks the {spec.action_key!r} key", reason="unparseable_action")
        args = obj.get(spec.input_key, {})
        return str(obj.get(spec.thought_key, "")), str(obj[spec.action_key]), args if isinstance(args, dict) else {}
    pattern = (rf"^(?:{re.escape(spec.thought_key)}: ?(?P<t>.*?)\n)?{re.escape(spec.action_key)}: ?(?P<n>[^\n]+)\n"
               rf"{re.escape(spec.input_key)}: ?(?P<a>.*)\Z")
    m = re.match(pattern, text, re.DOTALL)
    if not m:
        raise ParseError(f"reply does not follow the {spec.action_key}/{spec.input_key} format",
                         reason="unparseable_action")
    try:
        args = json.loads(m.group("a"))
    except json.JSONDecodeError as e:
        raise ParseError(f"{spec.input_key} is not valid JSON: {e.msg}", reason="unparseable_action") from e
    return m.group("t") or "", m.group("n").strip(), args if isinstance(args, dict) else {"input": args}


def render_with_spec(traj: Trajectory, spec: FormatSpec) -> list[Message]:
    """The whole trajectory as text turns in `spec` (observations as user turns)."""
    final_tool = traj.tags.get("final_tool")
    msgs = list(traj.messages)
    head = msgs.pop(0).content + "\n\n" if msgs and isinstance(msgs[0], SystemMessage) else ""
    tools = [t for t in traj.tools if t.name != final_tool]
    out: list[Message] = [SystemMessage(content=head + format_instructions(spec, tools))]
    finals: set[str] = set()
    for m in msgs:
        if isinstance(m, AssistantMessage):
            if not m.tool_calls:
                out.append(AssistantMessage(content=m.content, loss=m.loss))
                continue
            parts = []
            for k, c in enumerate(m.tool_calls):
                thought = m.content if k == 0 else ""
                if c.name == final_tool:
                    finals.add(c.id)
                    parts.append(render_step(spec, thought, spec.final_action, {spec.answer_key: final_answer(c)[0]}))
                else:
                    parts.append(render_step(spec, thought, c.name, c.arguments))
            out.append(AssistantMessage(content="\n".join(parts), loss=m.loss))
        elif isinstance(m, ToolMessage):
            if m.tool_call_id not in finals:
                out.append(UserMessage(content=f"{OBSERVATION_KEY}: {m.content}"))
        else:
            out.append(type(m)(content=m.content))
    return out
