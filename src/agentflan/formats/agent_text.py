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
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from agentflan.errors import ParseError
from agentflan.formats.tflan import GIVE_UP_ANSWER, final_answer
from agentflan.schema import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
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
    return_type: bool = False
    """The final action's input also states ToolBench's `return_type` (`give_answer`, or
    `give_up_and_restart` with no answer), as ToolBench's own `Finish` does."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def final_input(self, answer: str | None) -> dict[str, Any]:
        """The input of the final action: the answer, or a give-up (`answer=None`).

        Examples:
            >>> FormatSpec(return_type=True).final_input("4")
            {'return_type': 'give_answer', 'final_answer': '4'}
        """
        if not self.return_type:
            return {self.answer_key: GIVE_UP_ANSWER if answer is None else answer}
        if answer is None:
            return {"return_type": "give_up_and_restart"}
        return {"return_type": "give_answer", self.answer_key: answer}


TOOLLLAMA_SPEC = FormatSpec()


def random_spec(rng: random.Random, styles: tuple[str, ...] = ("react", "json")) -> FormatSpec:
    """A format with every key drawn at random (distinct key names guaranteed)."""
    style = rng.choice(styles)
    action = rng.choice(ACTION_KEYS)
    inputs = [k for k in INPUT_KEYS if k.lower() != action.lower()]
    spec = FormatSpec(style=style, thought_key=rng.choice(THOUGHT_KEYS), action_key=action,  # type: ignore[arg-type]
                      input_key=rng.choice(inputs), final_action=rng.choice(FINAL_ACTIONS),
                      answer_key=rng.choice(ANSWER_KEYS))
    # drawn last, so that the keys drawn before stay what they were for a given seed
    return replace(spec, return_type=rng.random() < 0.5)


def format_instructions(spec: FormatSpec, tools: list[ToolSpec]) -> str:
    """The system-prompt text that lists the tools and states `spec` exactly."""
    tool_lines = "\n".join(
        f"- {t.name}: {t.description.strip() or '(no description)'} "
        f"Parameters: {json.dumps(t.parameters, ensure_ascii=False, sort_keys=True)}" for t in tools)
    final_args = json.dumps(spec.final_input("..."))
    give_up = (f" If you cannot complete the task, use {spec.final_action} with "
               f"{json.dumps(spec.final_input(None))}." if spec.return_type else "")
    if spec.style == "json":
        shape = json.dumps({spec.thought_key: "your reasoning", spec.action_key: "tool name",
                            spec.input_key: {"argument": "value"}})
        how = (f"Reply with exactly one JSON object per turn, of the form:\n{shape}\n"
               f"When you can answer, use \"{spec.action_key}\": \"{spec.final_action}\" with "
               f"\"{spec.input_key}\": {final_args}.{give_up}")
    else:
        how = (f"Reply in exactly this format:\n{spec.thought_key}: your reasoning\n{spec.action_key}: tool name\n"
               f"{spec.input_key}: the arguments as a JSON object\n"
               f"When you can answer, use {spec.action_key}: {spec.final_action} with {spec.input_key}: {final_args}."
               f"{give_up}")
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
    """The whole trajectory as text turns in `spec` (observations as user turns).

    Every assistant turn states an action, as the format demands: a turn that only thinks (a
    source that wrote its thought and its call as two messages) is joined to the call that follows
    it, and a text-only turn that ends a trajectory with a final action is that final action.
    """
    final_tool = traj.tags.get("final_tool")
    msgs = _join_thoughts(list(traj.messages), final_tool)
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
                    give_up = c.arguments.get("return_type") == "give_up_and_restart"
                    answer = None if give_up else final_answer(c)[0]
                    parts.append(render_step(spec, thought, spec.final_action, spec.final_input(answer)))
                else:
                    parts.append(render_step(spec, thought, c.name, c.arguments))
            out.append(AssistantMessage(content="\n".join(parts), loss=m.loss))
        elif isinstance(m, ToolMessage):
            if m.tool_call_id not in finals:
                out.append(UserMessage(content=f"{OBSERVATION_KEY}: {m.content}"))
        else:
            out.append(type(m)(content=m.content))
    return out


def _join_thoughts(msgs: list[Message], final_tool: str | None) -> list[Message]:
    """Assistant turns that hold no call, joined to the call that follows them; a last one, when the
    trajectory ends with a final tool, made that final call (see `render_with_spec`)."""
    out: list[Message] = []
    for m in msgs:
        prev = out[-1] if out else None
        if isinstance(m, AssistantMessage) and isinstance(prev, AssistantMessage) and not prev.tool_calls:
            thought = "\n".join(t for t in (prev.content.strip(), m.content.strip()) if t)
            out[-1] = m.model_copy(update={"content": thought, "loss": m.loss or prev.loss})
        else:
            out.append(m)
    last = out[-1] if out else None
    if final_tool and isinstance(last, AssistantMessage) and not last.tool_calls and last.content.strip():
        out[-1] = last.model_copy(update={"content": "", "tool_calls": [
            ToolCall(id="call_final", name=final_tool, arguments={"final_answer": last.content.strip()})]})
    return out
