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
    assistant  The converter gave 42.16 km, so I can answer.   (reasoning)
    user       Which tool will you use next?                   (elicit)
    assistant  No tool is needed now; I can answer.            (retrieval: choosing *no* tool)
    user       So what is your answer?                         (elicit)
    assistant  A 26.2 mile marathon is about 42.16 km.         (final answer; reasoning)

The tool name is always in backticks and the arguments always in a fenced JSON block, so the
conversation stays machine-parseable: `parse` turns it back into tool calls and tool results
(tests check the round trip on every real sample).

Deciding *whether* to call a tool is part of retrieval (ours): every action of a decomposed
trajectory begins with the tool elicit, and the final answer is preceded by a "no tool" reply.
A harness that plays the elicit turns can therefore run a T-FLAN-trained model exactly as it was
trained: the model, not the harness, decides between calling and answering
(`agentflan.formats.protocols`). Without decomposition (`decompose=False`) a step is one turn
that either holds a call or not, which decides it just as well.

The exact elicit sentences were never published; these pools are ours. The phrase at each turn
is a hash of (key, turn index), never of an RNG stream, so that the harness that plays a
conversation at serving time picks exactly what the data step picked at training time for the
same key and position.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

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
from agentflan.seeds import phrase_index

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
NO_TOOL = (
    "No tool is needed now; I can answer.",
    "I don't need another tool: I can answer now.",
    "None. I have what I need to answer.",
    "No more tools: I'm ready to give the answer.",
    "I need no tool for this; I can reply directly.",
)
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
_NO_TOOL = re.compile(r"^\W*(?:no\b|none\b|nothing\b|i (?:do not|don't|won't|will not) need|i need no\b|"
                      r"there is no (?:need|tool))", re.IGNORECASE)


def pick(pool: Sequence[str], key: str, index: int) -> str:
    """The phrase of `pool` for turn `index` of the conversation identified by `key`.

    Examples:
        >>> pick(ELICIT_TOOL, "k", 3) == pick(ELICIT_TOOL, "k", 3)
        True
    """
    return pool[phrase_index(len(pool), key, index, pool[0])]


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


def align(traj: Trajectory, key: str, options: AlignOptions = AlignOptions()) -> Trajectory:
    """Render `traj` as T-FLAN chat. Every trained assistant turn gets its capability label.

    `key` chooses the phrasing (see `pick`). The final tool (tag `final_tool`) becomes a plain
    final answer; its tool result (e.g. "Episode finished") is not rendered.
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

    def elicit(pool: Sequence[str]) -> None:
        out.append(UserMessage(content=pick(pool, key, len(out))))

    for m in msgs:
        if isinstance(m, AssistantMessage):
            regular = [c for c in m.tool_calls if c.name != final_tool]
            finals = [c for c in m.tool_calls if c.name == final_tool]
            thought = m.content.strip()
            if regular and not options.decompose:
                parts = [m.content] if thought and options.cot else []
                for call in regular:
                    names[call.id] = call.name
                    parts.append(inline_call(call.name, call.arguments, key, len(out)))
                # one turn holds thought, tool choice and arguments: no single capability
                out.append(AssistantMessage(content="\n\n".join(parts), loss=m.loss, metadata={"inline_call": True}))
                regular = []
            elif thought and (options.cot or not m.tool_calls):
                assistant(m.content, "reasoning", m.loss)
            for k, call in enumerate(regular):
                names[call.id] = call.name
                elicit(ELICIT_TOOL if k == 0 else ELICIT_NEXT_TOOL)
                assistant(pick(RETRIEVAL, key, len(out)).format(name=call.name), "retrieval", m.loss)
                elicit(ELICIT_ARGS)
                assistant(args_turn(call.arguments, key, len(out)), "understanding", m.loss)
            for call in finals:
                final_ids.add(call.id)
                answer, final_key = final_answer(call)
                if options.decompose and not regular:  # deciding that no tool is needed is retrieval
                    elicit(ELICIT_TOOL)
                    assistant(pick(NO_TOOL, key, len(out)), "retrieval", m.loss)
                if out and isinstance(out[-1], AssistantMessage):
                    elicit(ELICIT_FINAL)
                assistant(answer or m.content or GIVE_UP_ANSWER, "reasoning", m.loss)
        elif isinstance(m, ToolMessage):
            if m.tool_call_id in final_ids:
                continue
            name = m.name or names.get(m.tool_call_id or "", "the tool")
            out.append(UserMessage(content=observation(name, m.content, key, len(out))))
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


def args_turn(arguments: dict[str, Any], key: str, index: int) -> str:
    """The understanding turn: the arguments in a fenced JSON block."""
    args = json.dumps(arguments, ensure_ascii=False, indent=2)
    return f"{pick(ARGS_LEAD, key, index)}```json\n{args}\n```"


def inline_call(name: str, arguments: dict[str, Any], key: str, index: int) -> str:
    """One call inside a non-decomposed turn: a retrieval sentence, then the JSON block."""
    args = json.dumps(arguments, ensure_ascii=False, indent=2)
    return f"{pick(RETRIEVAL, key, index).format(name=name)}\n```json\n{args}\n```"


def observation(name: str, content: str, key: str, index: int) -> str:
    """A tool result as the user turn that reports it."""
    return pick(OBSERVATION, key, index).format(name=name, content=content)


Retrieval = tuple[Literal["tool"], str] | tuple[Literal["none"], None] | tuple[Literal["unparseable"], str]


def parse_retrieval(text: str, tool_names: Sequence[str] = ()) -> Retrieval:
    """What a retrieval turn chose: `("tool", name)`, `("none", None)` or `("unparseable", why)`.

    A name in backticks wins; a reply that starts by saying no tool is needed is `none`; a reply
    that names exactly one offered tool without backticks is that tool.

    Examples:
        >>> parse_retrieval("I'll use `get_x`."), parse_retrieval("No tool is needed now; I can answer.")
        (('tool', 'get_x'), ('none', None))
    """
    if _NO_TOOL.match(text):
        return ("none", None)
    found = _NAME.search(text)
    if found:
        return ("tool", found.group(1).strip())
    named = [n for n in tool_names if re.search(rf"(?<![\w`]){re.escape(n)}(?![\w`])", text)]
    if len(named) == 1:
        return ("tool", named[0])
    return ("unparseable", "the reply names no tool in backticks and does not say that no tool is needed")


def parse_args_turn(text: str) -> dict[str, Any]:
    """The arguments of an understanding turn (the first ```json block). Raises `ParseError`."""
    block = _JSON_BLOCK.search(text)
    if not block:
        raise ParseError("the argument turn has no ```json block", reason="unparseable_action")
    return _json_args(block.group(1), None)


def parse_inline(text: str) -> tuple[str, list[tuple[str, dict[str, Any]]]]:
    """(thought, calls) of a non-decomposed turn; no calls when it holds none. Raises `ParseError`
    when a call's JSON block is malformed."""
    found = _INLINE.findall(text)
    if not found:
        if "```json" in text:
            raise ParseError("a ```json block without a tool named in backticks before it", reason="unparseable_action")
        return text, []
    head = _INLINE.split(text, maxsplit=1)[0]
    thought = head[:-2] if head.endswith("\n\n") else head
    return thought, [(name, _json_args(args, None)) for name, args in found]


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
                kind, value = parse_retrieval(m.content)
                if kind == "unparseable":
                    raise ParseError(f"tool turn names no tool in backticks: {m.content!r}",
                                     reason="unparseable_action", field=f"messages[{i}].content")
                if kind == "tool":
                    calls.append(ToolCall(id=f"call_{n}", name=str(value)))
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


def _json_args(text: str, index: int | None) -> dict[str, Any]:
    """Arguments from a JSON block of message `index` (a non-object value becomes `{"input": v}`)."""
    try:
        args = json.loads(text)
    except json.JSONDecodeError as e:
        raise ParseError(f"arguments are not valid JSON: {e.msg}", reason="unparseable_action",
                         field=f"messages[{index}].content" if index is not None else None) from e
    return args if isinstance(args, dict) else {"input": args}


def _is_last_assistant(msgs: list[Message], i: int) -> bool:
    return not any(isinstance(m, AssistantMessage) for m in msgs[i + 1:])


def _match_observation(text: str) -> str | None:
    for rx in _OBS:
        m = rx.match(text)
        if m:
            return m.group("content")
    return None


__all__ = ["ELICIT_ARGS", "ELICIT_FINAL", "ELICIT_TOOL", "NO_TOOL", "AlignOptions", "align", "parse", "parse_retrieval",
           "pick", "tools_prompt"]
