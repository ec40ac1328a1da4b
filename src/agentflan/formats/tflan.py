"""T-FLAN: an agent trajectory rendered as natural multi-turn chat, and parsed back.

Agent-FLAN (section 2 of docs) aligns ReAct/JSON agent data to the chat distribution by splitting
each step into separate assistant turns, each elicited by a short user turn:

    user       How many km is 26.2 miles?
    assistant  I should convert miles to km.                   (reasoning; only with cot=True)
    user       Which tool fits this step?                      (elicit, from a pool)
    assistant  I'll use `convert_units`.                       (retrieval)
    user       What arguments will you pass?                   (elicit)
    assistant  ```json\n{"value": 26.2, ...}\n```             (understanding)
    user       `convert_units` returned:\n{"value": 42.16}     (observation, never trained)
    assistant  A 26.2 mile marathon is about 42.16 km.         (final answer; reasoning)

The tool name is always in backticks and the arguments always in a fenced JSON block, so the
conversation stays machine-parseable: `parse` turns it back into tool calls and tool results
(tests check the round trip on every real sample). The exact elicit sentences were never
published; these pools are ours, chosen per turn by a seeded RNG so that a model learns the step,
not one string.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any

from agentflan.errors import ParseError
from agentflan.schema import (
    AssistantMessage,
    Capability,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    Trajectory,
    UserMessage,
)

ELICIT_TOOL = (
    "Which tool fits this step?",
    "Which tool will you use next?",
    "What tool do you need for this?",
    "Which API should be called now?",
    "Which function will you call?",
    "Based on your reasoning, which tool do you pick?",
    "What is the next tool to use?",
    "Name the tool you want to call.",
)
ELICIT_NEXT_TOOL = (
    "And which other tool do you call at the same time?",
    "Which further tool do you call in parallel?",
    "What other tool do you call alongside it?",
)
ELICIT_ARGS = (
    "What arguments will you pass?",
    "With which parameters?",
    "What are the arguments for that call?",
    "Give me the parameters for the call.",
    "What input do you give it?",
    "Which values do you pass to it?",
)
ELICIT_FINAL = (
    "So what is your answer?",
    "What is your final answer?",
    "Please give me the final answer.",
    "What do you reply to the user?",
)
RETRIEVAL = (
    "I'll use `{name}`.",
    "The right tool here is `{name}`.",
    "`{name}` fits this step.",
    "Let me call `{name}`.",
    "I need `{name}` for this.",
    "I choose `{name}`.",
)
ARGS_LEAD = ("", "Here are the arguments:\n", "The call takes:\n", "I'll pass:\n")
OBSERVATION = (
    "`{name}` returned:\n{content}",
    "Result of `{name}`:\n{content}",
    "Here is what `{name}` gave back:\n{content}",
    "The output of `{name}` is:\n{content}",
    "`{name}` responded with:\n{content}",
)
TOOLS_HEADER = "You can use the following tools:"
GIVE_UP_ANSWER = "I could not complete this task with the tools available."
_NAME = re.compile(r"`([^`\n]+)`")
_JSON_BLOCK = re.compile(r"```json\n(.*?)\n```", re.DOTALL)
# one inline (non-decomposed) call: a retrieval sentence naming the tool, then its JSON block
_INLINE = re.compile(r"^[^\n`]*`([^`\n]+)`[^\n`]*\n```json\n(.*?)\n```(?:\n\n|\Z)", re.DOTALL | re.MULTILINE)


def _template_regex(template: str) -> re.Pattern[str]:
    pattern = re.escape(template)
    pattern = pattern.replace(re.escape("{name}"), r"(?P<name>[^`\n]+)")
    pattern = pattern.replace(re.escape("{content}"), r"(?P<content>.*)")
    return re.compile(f"^{pattern}\\Z", re.DOTALL)


_OBS = [_template_regex(t) for t in OBSERVATION]


def tools_prompt(tools: list[ToolSpec]) -> str:
    """The tool list as the system prompt shows it."""
    lines = [TOOLS_HEADER]
    for t in tools:
        params = json.dumps(t.parameters, ensure_ascii=False, sort_keys=True)
        lines.append(f"- {t.name}: {t.description.strip() or '(no description)'}\n  parameters: {params}")
    return "\n".join(lines)


@dataclass(frozen=True)
class AlignOptions:
    cot: bool = True
    """Keep the thoughts as reasoning turns (T-FLAN "cot"); without, only calls and answers."""
    decompose: bool = True
    """Split each step into thought, tool and argument turns (each elicited). Without it, a step
    is one natural assistant turn: the thought, then the tool in backticks and a JSON block."""
    tools_in_system: bool = True


def final_answer(call: ToolCall) -> tuple[str, str | None]:
    """(answer text, the argument it came from) of a terminal call."""
    args = call.arguments
    if args.get("return_type") == "give_up_and_restart":
        return GIVE_UP_ANSWER, None
    for key in ("final_answer", "answer"):
        if key in args:
            value = args[key]
            return (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)), key
    if not args:
        return "", None
    return json.dumps(args, ensure_ascii=False), None


def align(traj: Trajectory, rng: random.Random, options: AlignOptions = AlignOptions()) -> Trajectory:
    """Render `traj` as T-FLAN chat. Every trained assistant turn gets its capability label.

    The final tool (tag `final_tool`) becomes a plain final answer; its tool result (e.g.
    "Episode finished") is not rendered.
    """
    final_tool = traj.tags.get("final_tool")
    out: list[Message] = []
    system_parts = []
    msgs = list(traj.messages)
    if msgs and isinstance(msgs[0], SystemMessage):
        system_parts.append(msgs.pop(0).content)
    offered = [t for t in traj.tools if t.name != final_tool]  # the answer is plain text, not a tool
    if offered and options.tools_in_system:
        system_parts.append(tools_prompt(offered))
    if system_parts:
        out.append(SystemMessage(content="\n\n".join(p for p in system_parts if p)))
    final_ids: set[str] = set()
    final_key: str | None = None
    names: dict[str, str] = {}

    def assistant(text: str, cap: Capability, loss: bool) -> None:
        out.append(AssistantMessage(content=text, capability=cap, loss=loss))

    for m in msgs:
        if isinstance(m, AssistantMessage):
            regular = [c for c in m.tool_calls if c.name != final_tool]
            finals = [c for c in m.tool_calls if c.name == final_tool]
            thought = m.content.strip()
            if regular and not options.decompose:
                parts = [m.content] if thought and options.cot else []
                for call in regular:
                    names[call.id] = call.name
                    args = json.dumps(call.arguments, ensure_ascii=False, indent=2)
                    parts.append(f"{rng.choice(RETRIEVAL).format(name=call.name)}\n```json\n{args}\n```")
                # one turn holds thought, tool choice and arguments: no single capability
                out.append(AssistantMessage(content="\n\n".join(parts), loss=m.loss, metadata={"inline_call": True}))
                regular = []
            elif thought and (options.cot or not m.tool_calls):
                assistant(m.content, "reasoning", m.loss)
            for k, call in enumerate(regular):
                names[call.id] = call.name
                pool = ELICIT_TOOL if k == 0 else ELICIT_NEXT_TOOL
                out.append(UserMessage(content=rng.choice(pool)))
                assistant(rng.choice(RETRIEVAL).format(name=call.name), "retrieval", m.loss)
                out.append(UserMessage(content=rng.choice(ELICIT_ARGS)))
                args = json.dumps(call.arguments, ensure_ascii=False, indent=2)
                assistant(f"{rng.choice(ARGS_LEAD)}```json\n{args}\n```", "understanding", m.loss)
            for call in finals:
                final_ids.add(call.id)
                answer, final_key = final_answer(call)
                if out and isinstance(out[-1], AssistantMessage):
                    out.append(UserMessage(content=rng.choice(ELICIT_FINAL)))
                assistant(answer or m.content or GIVE_UP_ANSWER, "reasoning", m.loss)
        elif isinstance(m, ToolMessage):
            if m.tool_call_id in final_ids:
                continue
            name = m.name or names.get(m.tool_call_id or "", "the tool")
            out.append(UserMessage(content=rng.choice(OBSERVATION).format(name=name, content=m.content)))
        elif isinstance(m, UserMessage):
            out.append(UserMessage(content=m.content))
        else:
            out.append(SystemMessage(content=m.content))
    tags = {**traj.tags, "format": "tflan", "cot": str(options.cot).lower(),
            "decomposed": str(options.decompose).lower()}
    meta = dict(traj.metadata)
    if final_key:
        meta["final_answer_key"] = final_key
    return traj.model_copy(update={"messages": out, "tags": tags, "metadata": meta})


def parse(traj: Trajectory) -> Trajectory:
    """Turn a T-FLAN conversation back into tool calls and tool results.

    Raises:
        ParseError: An elicited tool turn names no tool, or an argument turn has no JSON block.
    """
    final_tool = traj.tags.get("final_tool")
    final_key = traj.metadata.get("final_answer_key", "answer")
    msgs = traj.messages
    out: list[Message] = []
    if msgs and isinstance(msgs[0], SystemMessage):
        system = msgs[0].content
        at = system.find(TOOLS_HEADER)
        head = system[:at].rstrip("\n") if at >= 0 else system
        if head:
            out.append(SystemMessage(content=head))
        msgs = msgs[1:]
    thought = ""
    calls: list[ToolCall] = []
    pending: list[ToolCall] = []
    expect: str | None = None
    n = 0

    def flush() -> None:
        nonlocal thought, calls
        if calls or thought:
            out.append(AssistantMessage(content=thought, tool_calls=calls))
        thought, calls = "", []

    for i, m in enumerate(msgs):
        if isinstance(m, UserMessage):
            if m.content in ELICIT_TOOL or m.content in ELICIT_NEXT_TOOL:
                expect = "tool"
                continue
            if m.content in ELICIT_ARGS:
                expect = "args"
                continue
            if m.content in ELICIT_FINAL:
                expect = "final"
                continue
            obs = _match_observation(m.content)
            if obs is not None and pending:
                flush()
                call = pending.pop(0)
                out.append(ToolMessage(content=obs, name=call.name, tool_call_id=call.id))
                continue
            flush()
            out.append(UserMessage(content=m.content))
        elif isinstance(m, AssistantMessage):
            if expect == "tool":
                found = _NAME.search(m.content)
                if not found:
                    raise ParseError(f"tool turn names no tool in backticks: {m.content!r}",
                                     reason="unparseable_action", field=f"messages[{i}].content")
                calls.append(ToolCall(id=f"call_{n}", name=found.group(1)))
                n += 1
            elif expect == "args":
                block = _JSON_BLOCK.search(m.content)
                if not block or not calls:
                    raise ParseError("argument turn has no ```json block", reason="unparseable_action",
                                     field=f"messages[{i}].content")
                calls[-1] = calls[-1].model_copy(update={"arguments": _json_args(block.group(1), i)})
                pending.append(calls[-1])
            elif final_tool and (expect == "final" or _is_last_assistant(msgs, i)):
                calls.append(ToolCall(id=f"call_{n}", name=final_tool, arguments={final_key: m.content}))
                n += 1
                flush()
            elif inline := _INLINE.findall(m.content):
                flush()
                head = _INLINE.split(m.content, maxsplit=1)[0]
                thought = head[:-2] if head.endswith("\n\n") else head
                for name, args_text in inline:
                    calls.append(ToolCall(id=f"call_{n}", name=name, arguments=_json_args(args_text, i)))
                    pending.append(calls[-1])
                    n += 1
            else:
                flush()
                thought = m.content
            expect = None
        else:
            flush()
            out.append(SystemMessage(content=m.content))
    flush()
    tags = {k: v for k, v in traj.tags.items() if k not in ("format", "cot", "decomposed")}
    return traj.model_copy(update={"messages": out, "tags": tags})


def _json_args(text: str, index: int) -> dict[str, Any]:
    """Arguments from a JSON block of message `index` (a non-object value becomes `{"input": v}`)."""
    try:
        args = json.loads(text)
    except json.JSONDecodeError as e:
        raise ParseError(f"arguments are not valid JSON: {e.msg}", reason="unparseable_action",
                         field=f"messages[{index}].content") from e
    return args if isinstance(args, dict) else {"input": args}


def _is_last_assistant(msgs: list[Message], i: int) -> bool:
    return not any(isinstance(m, AssistantMessage) for m in msgs[i + 1:])


def _match_observation(text: str) -> str | None:
    for rx in _OBS:
        m = rx.match(text)
        if m:
            return m.group("content")
    return None


__all__ = ["ELICIT_ARGS", "ELICIT_FINAL", "ELICIT_TOOL", "AlignOptions", "align", "parse", "tools_prompt"]
