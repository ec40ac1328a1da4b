"""Protocols: how a conversation with tools is shown to a model, and how its reply is read back.

A protocol is one object that does both directions, so that data, training, play, eval and serve
cannot disagree:

* `render(traj, key)` turns a structured conversation (system, user, assistant turns with tool
  calls, tool results) into the turns a chat template renders: the tools and the reply format
  stated in the system prompt, each call written in the protocol's text, each result as the turn
  that reports it. Data steps write training data with it; the harness renders every prompt with
  it. Assistant turns keep their `loss` flags.
* `act(traj, key)` plays one assistant action at serving time: a generator that yields `Prompt`s
  (the rendered conversation, ending where the model must continue) and receives each
  `Completion`; it returns an `Action`: tool calls, a final answer, or *unparseable*. Most
  protocols need one generation per action; `tflan` plays its elicit turns as the data taught them
  (thought, tool choice, arguments, or the answer).
* A reply that tried to act but cannot be read is `unparseable` (kept raw, counted, never taken for
  an answer). Under a protocol that states a reply format (`react`, `json`, `toolllama`, the
  AgentInstruct dialects), a reply that ignores it is unparseable too, as AgentBench judges it
  ("If your response cannot match any pattern I mentioned earlier, you will be judged as FAIL");
  chat protocols (`tflan`, `native`) take plain text as the answer.

`key` chooses every varied phrase (elicit sentences, random key names): training uses a key per
record, serving the `conversation_key` of the conversation. The same key and the same history
give the same text, token for token: `tests/unit/test_protocols.py` checks it for every template
and protocol on expert episodes of both environments.

| protocol | tools stated as | a call looks like | a result comes back as |
|---|---|---|---|
| `native` | the chat template's own tool rendering | the template's own (parsed as `<tool_call>` JSON) | a `tool` turn |
| `react`, `react:random` | a tool list + the exact format | `Thought: / Action: / Action Input: {json}` | `Observation: ...` |
| `json`, `json:random` | likewise | one JSON object with the format's keys | `Observation: ...` |
| `toolllama` | ToolBench's "Specifically, you have access to the following APIs: [...]" | ToolLLaMA ReAct, `Finish` is a tool | `Observation: ...` |
| `fireact` | nothing (HotpotQA's actions) | `Action: search[...]` | `Observation: ...` |
| `tflan`, `tflan:inline`, `tflan:nocot` | T-FLAN's tool list | elicited turns: thought, `` `tool` ``, ```json args``` | "`tool` returned: ..." |
| `agentinstruct:<task>` | the task's own instruction (AgentBench's prompt for `db`) | the task's action dialect | the raw result as a user turn |
| `instruct:json`, `instruct:string` (`:random`: key names drawn from the key) | tool list + "answer with the next call only" | one call, as JSON or two lines | (single step: none) |

`native` on a template that cannot render tools (the fixed `agentflan`/`llama2` templates,
SmolLM2's ChatML) becomes `react`: the tools then go into the system prompt in that one way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, Literal

from agentflan.errors import ConfigError, ParseError
from agentflan.formats.agent_text import (
    ACTION_KEYS,
    INPUT_KEYS,
    OBSERVATION_KEY,
    TOOLLLAMA_SPEC,
    FormatSpec,
    random_spec,
    render_with_spec,
)
from agentflan.formats.agentinstruct import AGENTBENCH_DB_PROMPT, DIALECTS
from agentflan.formats.neutral import neutral_view, request_of
from agentflan.formats.pycall import (
    SYSTEM_PROMPT,
    attempts_call,
    bfcl_decodes,
    decode_calls,
    function_docs,
    render_calls,
)
from agentflan.formats.react import (
    DEFAULT_BRACKET_ARGS,
    OBSERVATION_PREFIX,
    parse_bracket,
    parse_json_arguments,
    render_bracket,
    render_toolllama,
)
from agentflan.formats.tflan import (
    ELICIT_ARGS,
    ELICIT_FINAL,
    ELICIT_TOOL,
    GIVE_UP_ANSWER,
    AlignOptions,
    align,
    final_answer,
    parse_args_turn,
    parse_inline,
    parse_retrieval,
    pick,
    tools_prompt,
)
from agentflan.registry import Registry
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
from agentflan.seeds import text_rng

API_LIST_MARKER = "Specifically, you have access to the following APIs:"


@dataclass(frozen=True)
class Prompt:
    """What the model is asked to continue: the conversation as the template will render it."""

    messages: list[Message]
    tools: list[ToolSpec] | None = None
    """Only for structured protocols (`native`): the template renders the tools itself."""
    stop: tuple[str, ...] = ()
    """Text that ends the reply besides the template's end of turn (e.g. `\\nObservation:`: a model
    that starts writing the tool's answer itself is cut there, and the action is flagged)."""


@dataclass
class Completion:
    """What a model generated for a `Prompt`."""

    text: str
    stop: str | None = None
    """The protocol stop string that ended the text, if one did."""
    message: AssistantMessage | None = None
    """A structured reply (an endpoint that parsed tool calls itself), for `native`."""
    tokens: int = 0
    prompt_tokens: int = 0
    error: str | None = None
    """Set when the endpoint says the model's reply could not be read (`agentflan serve`)."""


@dataclass
class Action:
    """One assistant action read from the model's reply (or replies)."""

    kind: Literal["call", "answer", "unparseable"]
    thought: str = ""
    calls: list[ToolCall] = field(default_factory=list)
    answer: str | None = None
    error: str | None = None
    flags: list[str] = field(default_factory=list)
    """`hallucinated_observation` (the reply wrote a tool result itself), `extra_text` (text after
    the action), `unformatted_tool_name` (a tool named without the stated markup), ..."""
    texts: list[str] = field(default_factory=list)
    """Every text the model generated for this action, in order (logs keep them)."""


Act = Generator[Prompt, Completion, Action]


def conversation_key(traj: Trajectory) -> str:
    """The phrasing key of a conversation at serving time: a hash of its first request and tools,
    so that any server or client plays the same conversation with the same phrases."""
    first = next((m.content for m in traj.messages if isinstance(m, UserMessage)), "")
    blob = json.dumps([first, sorted(t.name for t in traj.tools)], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Protocol(ABC):
    """One way of showing tools to a model and reading its actions (see the module docstring)."""

    name: str
    structured: ClassVar[bool] = False
    """True when the chat template itself renders tools, calls and results (`native`)."""
    episodic: ClassVar[bool] = True
    """False for protocols that state one step and no final answer (`instruct:*`)."""
    stops: tuple[str, ...] = ()
    """Observation markers a reply must not write (see `Prompt.stop`)."""
    task: str | None = None
    """The one environment this protocol's prompts fit (an AgentInstruct dialect's task); None: any."""
    plays_envs: ClassVar[bool] = True
    """False when its actions fit none of our environments (FireAct's HotpotQA brackets) or it
    resolves per trajectory (`source`): never chosen to play an episode."""
    reply_style: ClassVar[Literal["react", "general"]] = "general"
    """`react` when the protocol states an agent reply format (ReAct lines, a JSON object, a task's
    dialect), `general` for chat-style ones: Agent-H poses and judges its queries in that style."""
    renders_negatives: ClassVar[bool] = True
    """Whether the negatives stage may render its samples (a request answered without a tool) in
    this protocol; the source formats reproduce a dataset's own conversations and have no such turn."""

    def fits(self, env: str | None) -> bool:
        """Can an episode of `env` be played in this protocol (`episodic`, `plays_envs`, and `task`
        unset or `env`)? `env=None`: some environment (a protocol tied to one task fits)."""
        return self.episodic and self.plays_envs and (self.task is None or env is None or self.task == env)

    @abstractmethod
    def render(self, traj: Trajectory, key: str = "") -> list[Message]:
        """The conversation as the model sees it; for `structured` protocols the messages as they
        are (the template gets `template_tools`)."""

    def template_tools(self, traj: Trajectory) -> list[ToolSpec] | None:
        return traj.tools or None if self.structured else None

    @abstractmethod
    def act(self, traj: Trajectory, key: str = "") -> Act:
        """Play one assistant action on the conversation so far (see `Action`)."""

    def prompt(self, messages: list[Message], traj: Trajectory) -> Prompt:
        return Prompt(messages, self.template_tools(traj), self.stops)

    def apply(self, traj: Trajectory, key: str) -> Trajectory:
        """`traj` rendered as training data: its messages replaced by `render`, tagged `protocol`
        (what training, the model card and `eval` read) with the key in `metadata`."""
        return traj.model_copy(update={
            "messages": self.render(traj, key), "tags": {**traj.tags, "protocol": self.tag(key)},
            "metadata": {**traj.metadata, "protocol_key": key}})

    def tag(self, key: str) -> str:
        """The protocol name recorded on data rendered with `key` (concrete: `react:random` for a
        drawn ReAct format)."""
        return self.name

    def __repr__(self) -> str:
        return f"<protocol {self.name}>"


class TextProtocol(Protocol):
    """A protocol with one generation per action, read by `parse`."""

    def act(self, traj: Trajectory, key: str = "") -> Act:
        completion = yield self.prompt(self.render(traj, key), traj)
        if completion.error is not None:
            action = Action("unparseable", error=completion.error)
        elif completion.message is not None:
            action = from_message(completion.message, traj)
        else:
            action = self.parse(completion.text, traj, key)
        return finish(action, completion, self.stops)

    @abstractmethod
    def parse(self, text: str, traj: Trajectory, key: str = "") -> Action:
        """The action a reply states."""


def finish(action: Action, completion: Completion, stops: tuple[str, ...]) -> Action:
    """Record the generation on the action and flag a reply cut at an observation marker."""
    action.texts.append(completion.text)
    if completion.stop is not None and completion.stop in stops and "hallucinated_observation" not in action.flags:
        action.flags.append("hallucinated_observation")
    return action


def answer_text(call: ToolCall) -> str:
    """The answer a terminal call gives, as text (a give-up becomes a sentence saying so)."""
    return final_answer(call)[0]


def from_message(msg: AssistantMessage, traj: Trajectory) -> Action:
    """An action from a structured reply (an endpoint's `tool_calls`, or a parsed text reply)."""
    final_tool = traj.tags.get("final_tool")
    bad = [c for c in msg.tool_calls if c.parse_error or not c.name]
    if bad:
        return Action("unparseable", thought=msg.content, error=bad[0].parse_error or "a tool call without a name")
    finals = [c for c in msg.tool_calls if c.name == final_tool]
    if finals:
        return Action("answer", thought=msg.content, answer=answer_text(finals[0]))
    if msg.tool_calls:
        return Action("call", thought=msg.content, calls=list(msg.tool_calls))
    return Action("answer", answer=msg.content.strip())


# ---- native: the chat template's own tool format ---------------------------------------------------------

_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)


def parse_tool_call_text(text: str, call_prefix: str = "call_") -> AssistantMessage:
    """Tool calls in a model's text: `<tool_call>{json}</tool_call>` blocks (Hermes, Qwen, SmolLM3
    style), or the whole reply as one JSON object `{"name": ..., "arguments"|"parameters": ...}`
    (Llama 3.1 style); anything else is a plain answer. A malformed call is kept with its
    `parse_error` (it tried to act: it is never an answer)."""
    stripped = text.strip()
    blocks = _TOOL_CALL.findall(text)
    if blocks:
        content = _TOOL_CALL.sub("", text).strip()
    elif stripped.startswith("{") and '"name"' in stripped:
        blocks, content = [stripped], ""
    else:
        return AssistantMessage(content=stripped)
    calls = []
    for i, block in enumerate(blocks):
        try:
            obj = json.loads(block)
        except json.JSONDecodeError as e:
            calls.append(ToolCall(id=f"{call_prefix}{i}", name="", raw=block, parse_error=f"invalid JSON: {e.msg}"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            calls.append(ToolCall(id=f"{call_prefix}{i}", name="", raw=block,
                                  parse_error="a tool call is an object with a string `name`"))
            continue
        args: Any = obj.get("arguments", obj.get("parameters", {}))
        err = None
        if isinstance(args, str):
            args, err = parse_json_arguments(args)
        calls.append(ToolCall(id=f"{call_prefix}{i}", name=obj["name"],
                              arguments=args if isinstance(args, dict) else {"input": args}, raw=block,
                              parse_error=err))
    return AssistantMessage(content=content, tool_calls=calls)


class NativeProtocol(TextProtocol):
    """The template's own tools and tool calls (structured messages go to the template)."""

    name = "native"
    structured = True
    stops = ("<tool_response>",)

    def render(self, traj: Trajectory, key: str = "") -> list[Message]:
        return list(traj.messages)

    def parse(self, text: str, traj: Trajectory, key: str = "") -> Action:
        return from_message(parse_tool_call_text(text), traj)


# ---- react / json with a stated format (FormatSpec) -------------------------------------------------------

def _react_action(spec: FormatSpec, thought: str, name: str, args: Any, final_tool: str | None,
                  flags: list[str]) -> Action:
    if not isinstance(args, dict):
        args = {"input": args}
    if name.strip().lower() == spec.final_action.lower() or (final_tool and name == final_tool):
        value = args.get(spec.answer_key, args.get("final_answer", args.get("answer")))
        if value is None and args.get("return_type") == "give_up_and_restart":
            value = GIVE_UP_ANSWER
        if value is None:
            value = json.dumps(args, ensure_ascii=False) if args else ""
        return Action("answer", thought=thought, answer=value if isinstance(value, str) else
                      json.dumps(value, ensure_ascii=False), flags=flags)
    return Action("call", thought=thought, calls=[ToolCall(id="call_0", name=name.strip(), arguments=args)], flags=flags)


def parse_react_reply(spec: FormatSpec, text: str, final_tool: str | None = None) -> Action:
    """Read a reply in `spec` (the inverse of `agent_text.render_step`, tolerant of surrounding
    whitespace and of text after the arguments, which is flagged `extra_text`)."""
    flags: list[str] = []
    text = text.strip()
    if spec.style == "json":
        start = text.find("{")
        if start < 0:
            return Action("unparseable", error="the reply is not the JSON object the format asks for")
        try:
            obj, end = json.JSONDecoder().raw_decode(text, start)
        except json.JSONDecodeError as e:
            return Action("unparseable", error=f"the reply's JSON is invalid: {e.msg}")
        if not isinstance(obj, dict) or not isinstance(obj.get(spec.action_key), str):
            return Action("unparseable", error=f"the reply's JSON object lacks the {spec.action_key!r} key")
        if text[:start].strip() or text[end:].strip():
            flags.append("extra_text")
        thought = obj.get(spec.thought_key, "")
        return _react_action(spec, str(thought), obj[spec.action_key], obj.get(spec.input_key, {}), final_tool,
                             flags)
    action = re.search(rf"(?m)^{re.escape(spec.action_key)}: ?(.*)$", text)
    if action is None:
        return Action("unparseable", error=f"the reply has no '{spec.action_key}:' line")
    head = text[: action.start()].strip()
    thought = re.sub(rf"^{re.escape(spec.thought_key)}: ?", "", head)
    rest = text[action.end():].lstrip("\n")
    prefix = f"{spec.input_key}:"
    if not rest.startswith(prefix):
        if not rest.strip() and action.group(1).strip().lower() == spec.final_action.lower():
            return _react_action(spec, thought, action.group(1), {}, final_tool, flags)
        return Action("unparseable", thought=thought, error=f"'{spec.action_key}:' is not followed by '{prefix}'")
    raw = rest[len(prefix):].strip()
    try:
        args, end = json.JSONDecoder().raw_decode(raw)
    except json.JSONDecodeError as e:
        return Action("unparseable", thought=thought, error=f"{spec.input_key} is not valid JSON: {e.msg}")
    if raw[end:].strip():
        flags.append("extra_text")
    return _react_action(spec, thought, action.group(1), args, final_tool, flags)


class ReactProtocol(TextProtocol):
    """ReAct lines or a JSON object in a stated format; `spec=None` draws the format from the key
    (Agent-FLAN's randomized format instructions)."""

    reply_style = "react"

    def __init__(self, spec: FormatSpec | None = TOOLLLAMA_SPEC, styles: tuple[str, ...] = ("react",)) -> None:
        self.spec = spec
        self.styles = styles
        style = spec.style if spec is not None else styles[0]
        self.name = style if spec is not None else f"{style}:random"
        if spec is not None and spec not in (TOOLLLAMA_SPEC, JSON_SPEC):
            self.name = f"{style}:{json.dumps(spec.to_dict(), sort_keys=True)}"
        self.stops = (f"\n{OBSERVATION_KEY}:",)

    def spec_for(self, key: str) -> FormatSpec:
        if self.spec is not None:
            return self.spec
        return random_spec(text_rng(key), self.styles)

    def render(self, traj: Trajectory, key: str = "") -> list[Message]:
        return render_with_spec(neutral_view(traj), self.spec_for(key))

    def tag(self, key: str) -> str:
        return f"{self.spec_for(key).style}:random" if self.spec is None else self.name

    def apply(self, traj: Trajectory, key: str) -> Trajectory:
        out = super().apply(traj, key)
        out.metadata["format_spec"] = self.spec_for(key).to_dict()
        return out

    def parse(self, text: str, traj: Trajectory, key: str = "") -> Action:
        return parse_react_reply(self.spec_for(key), text, traj.tags.get("final_tool"))


JSON_SPEC = FormatSpec(style="json")


# ---- the source formats: ToolBench's ToolLLaMA, FireAct, AgentInstruct dialects -------------------------------

def text_turns(messages: list[Message], step: Callable[[str, ToolCall | None], str],
               observation: Callable[[str], str]) -> list[Message]:
    """Messages with one-action-per-turn text: each assistant turn as `step(thought, first call)`
    (loss and capability kept), each tool result as the user turn `observation(content)`."""
    out: list[Message] = []
    for m in messages:
        if isinstance(m, AssistantMessage):
            text = step(m.content, m.tool_calls[0] if m.tool_calls else None)
            out.append(AssistantMessage(content=text, loss=m.loss, capability=m.capability))
        elif isinstance(m, ToolMessage):
            out.append(UserMessage(content=observation(m.content)))
        else:
            out.append(type(m)(content=m.content))
    return out


def _observation(content: str) -> str:
    return f"{OBSERVATION_PREFIX} {content}"


class ToolLlamaProtocol(TextProtocol):
    """ToolBench's own prompt: the API list after "Specifically, you have access to the following
    APIs:", ToolLLaMA ReAct turns, the terminal tool (`Finish`) called like any other tool."""

    name = "toolllama"
    stops = (f"\n{OBSERVATION_KEY}:",)
    reply_style = "react"
    renders_negatives = False

    def render(self, traj: Trajectory, key: str = "") -> list[Message]:
        out: list[Message] = []
        msgs = list(traj.messages)
        if traj.tools:
            tools = json.dumps([{"name": t.name, "description": t.description, "parameters": t.parameters}
                                for t in traj.tools], ensure_ascii=False)
            api = f"{API_LIST_MARKER} {tools}"
            head = msgs.pop(0).content if msgs and isinstance(msgs[0], SystemMessage) else None
            out.append(SystemMessage(content=f"{head}\n{api}" if head is not None else api))
        return out + text_turns(
            msgs, lambda thought, c: render_toolllama(thought, c.name, c.arguments).lstrip("\n") if c else thought,
            _observation)

    def parse(self, text: str, traj: Trajectory, key: str = "") -> Action:
        return parse_react_reply(TOOLLLAMA_SPEC, text, traj.tags.get("final_tool") or "Finish")


class FireActProtocol(TextProtocol):
    """HotpotQA ReAct as FireAct wrote it: `Action: search[...]`, `Observation: ...`."""

    name = "fireact"
    plays_envs = False  # HotpotQA's one-argument actions fit no environment here
    stops = (f"\n{OBSERVATION_KEY}:",)
    renders_negatives = False

    def render(self, traj: Trajectory, key: str = "") -> list[Message]:
        return text_turns(traj.messages, lambda thought, c: render_bracket(thought, c.name if c else None,
                                                                           c.arguments if c else {}), _observation)

    def parse(self, text: str, traj: Trajectory, key: str = "") -> Action:
        try:
            step = parse_bracket(text.strip())
        except ParseError as e:
            return Action("unparseable", error=e.message)
        if step.name is None:
            return Action("unparseable", error="the reply has no 'Action: name[argument]' line")
        final_tool = traj.tags.get("final_tool", "finish")
        if step.name == final_tool:
            return Action("answer", thought=step.thought, answer=str(step.arguments.get(
                DEFAULT_BRACKET_ARGS.get(final_tool, "input"), next(iter(step.arguments.values()), ""))))
        return Action("call", thought=step.thought, calls=[ToolCall(id="call_0", name=step.name,
                                                                     arguments=step.arguments)])


TASK_PROMPTS = {"db": AGENTBENCH_DB_PROMPT}
ACK = "Ok."


class DialectProtocol(TextProtocol):
    """An AgentInstruct/AgentBench task's own conversation: its instruction as the first user turn,
    acknowledged ("Ok.", untrained), then actions in the task's dialect and raw results."""

    task: str
    reply_style = "react"
    renders_negatives = False

    def __init__(self, task: str) -> None:
        if task not in DIALECTS:
            raise ConfigError(f"unknown AgentInstruct task {task!r} (known: {', '.join(DIALECTS)})")
        self.task = task
        self.dialect = DIALECTS[task]
        self.name = f"agentinstruct:{task}"

    def render(self, traj: Trajectory, key: str = "") -> list[Message]:
        out: list[Message] = []
        msgs = list(traj.messages)
        if msgs and isinstance(msgs[0], SystemMessage):
            # an environment's own system prompt: the task states itself as AgentBench does
            first = msgs.pop(0)
            out += [UserMessage(content=TASK_PROMPTS.get(self.task, first.content)),
                    AssistantMessage(content=ACK, loss=False)]
        return out + text_turns(msgs, lambda thought, c: self.dialect.render(thought, c.name if c else None,
                                                                             c.arguments if c else {}), str)

    def parse(self, text: str, traj: Trajectory, key: str = "") -> Action:
        if self.task == "db":
            return parse_agentbench_db(text)
        try:
            step = self.dialect.parse(text.strip())
        except ParseError as e:
            return Action("unparseable", error=e.message)
        if step.name is None:
            return Action("unparseable", error=f"the reply has no {self.task} action")
        if step.name in self.dialect.terminal:
            value = step.arguments.get("answer", "")
            return Action("answer", thought=step.thought,
                          answer=value if isinstance(value, str) else json.dumps(value, ensure_ascii=False))
        return Action("call", thought=step.thought, calls=[ToolCall(id="call_0", name=step.name,
                                                                     arguments=step.arguments)])


def parse_agentbench_db(text: str) -> Action:
    """A DB reply read by AgentBench's own rules: the first `Action: X` line decides; `Operation`
    runs the first ```sql block (newlines joined); anything else must carry `Final Answer:`."""
    action = re.search(r"Action: (.*?)\n", text + "\n")
    head = text[: action.start()].strip() if action else text.strip()
    if action and action.group(1).strip() == "Operation":
        sql = re.search(r"```sql\n([\s\S]*?)\n```", text)
        if not sql:
            return Action("unparseable", thought=head, error="'Action: Operation' without a ```sql block")
        flags = ["extra_text"] if text[sql.end():].strip() else []
        return Action("call", thought=head, flags=flags, calls=[ToolCall(
            id="call_0", name="operation", arguments={"sql": sql.group(1).strip().replace("\n", " ")})])
    answer = re.search(r"\nFinal Answer:(.*)", "\n" + text)
    if not answer:
        return Action("unparseable", thought=head, error="neither 'Action: Operation' nor 'Final Answer:'")
    return Action("answer", thought=head, answer=answer.group(1).strip())


class SourceProtocol(Protocol):
    """Each trajectory in its source's own format (the AgentTuning arm): an AgentInstruct task's
    dialect, FireAct's brackets, or ToolBench's ToolLLaMA. Resolves per trajectory (`for_traj`)."""

    name = "source"
    plays_envs = False
    renders_negatives = False

    def for_traj(self, traj: Trajectory) -> TextProtocol:
        task = traj.tags.get("task")
        if task in DIALECTS:
            return DialectProtocol(task)
        if traj.source.format == "react":
            return FireActProtocol()
        return ToolLlamaProtocol()

    def render(self, traj: Trajectory, key: str = "") -> list[Message]:
        return self.for_traj(traj).render(traj, key)

    def apply(self, traj: Trajectory, key: str) -> Trajectory:
        return self.for_traj(traj).apply(traj, key)

    def act(self, traj: Trajectory, key: str = "") -> Act:
        return (yield from self.for_traj(traj).act(traj, key))


# ---- T-FLAN: the aligned chat, with the harness playing the elicit turns -----------------------------------

class TFlanProtocol(Protocol):
    """The T-FLAN conversation of `agentflan.formats.tflan`, played turn by turn.

    Decomposed (`tflan`, `tflan:nocot`): [the model's thought] -> tool elicit -> the model names a
    tool (then: argument elicit -> the arguments -> the call) or says none is needed (then: answer
    elicit -> the final answer). Inline (`tflan:inline`): the model's turn holds a call (a tool in
    backticks and a JSON block) or not; when not, the answer elicit follows and the reply is the
    answer. Only the first call of a step is executed (T-FLAN's parallel-call turns are data only).
    """

    def __init__(self, options: AlignOptions | None = None) -> None:
        self.options = options = options or AlignOptions()
        self.name = "tflan" + ("" if options.decompose else ":inline") + ("" if options.cot else ":nocot")

    def render(self, traj: Trajectory, key: str = "") -> list[Message]:
        return align(neutral_view(traj), key, self.options).messages

    def apply(self, traj: Trajectory, key: str) -> Trajectory:
        out = align(neutral_view(traj), key, self.options)
        return out.model_copy(update={"tags": {**out.tags, "protocol": self.name},
                                      "metadata": {**out.metadata, "protocol_key": key}})

    def act(self, traj: Trajectory, key: str = "") -> Act:
        out = self.render(traj, key)
        names = [t.name for t in traj.tools if t.name != traj.tags.get("final_tool")]
        action = Action("unparseable")

        def turn(text: str) -> str:
            action.texts.append(text)
            reply = text.strip()
            out.append(AssistantMessage(content=reply))
            return reply

        def elicit(pool: tuple[str, ...]) -> None:
            out.append(UserMessage(content=pick(pool, key, len(out))))

        if not self.options.decompose:
            first = turn((yield self.prompt(list(out), traj)).text)
            try:
                thought, calls = parse_inline(first)
            except ParseError as e:
                action.error = e.message
                return action
            if calls:
                name, args = calls[0]
                action.kind, action.thought = "call", thought
                action.calls = [ToolCall(id="call_0", name=name, arguments=args)]
                return action
            elicit(ELICIT_FINAL)
            action.kind, action.thought = "answer", first
            action.answer = turn((yield self.prompt(list(out), traj)).text)
            return action
        if self.options.cot:
            action.thought = turn((yield self.prompt(list(out), traj)).text)
        elicit(ELICIT_TOOL)
        kind, value = parse_retrieval(turn((yield self.prompt(list(out), traj)).text), names)
        if kind == "unparseable":
            action.error = str(value)
            return action
        if kind == "none":
            elicit(ELICIT_FINAL)
            action.kind = "answer"
            action.answer = turn((yield self.prompt(list(out), traj)).text)
            return action
        if value not in names:
            action.flags.append("unknown_tool")
        elicit(ELICIT_ARGS)
        try:
            args = parse_args_turn(turn((yield self.prompt(list(out), traj)).text))
        except ParseError as e:
            action.error = e.message
            return action
        action.kind = "call"
        action.calls = [ToolCall(id="call_0", name=str(value), arguments=args)]
        return action


# ---- instruct: one step, the next call only (T-Eval style) --------------------------------------------------

JSON_NAME_KEYS = ("name", "tool", "function", "api", "action")
JSON_ARGS_KEYS = ("arguments", "parameters", "args", "action_input", "input")


@dataclass(frozen=True)
class InstructFormat:
    """The output format an instruct sample requires: a JSON object with a name key and an
    arguments key, or two lines `<action key>: name` / `<input key>: {json}`."""

    style: Literal["json", "string"]
    name_key: str
    args_key: str

    def instruction(self) -> str:
        if self.style == "json":
            shape = f'{{"{self.name_key}": "<tool name>", "{self.args_key}": {{<arguments>}}}}'
            return f"Answer with the next tool call only, as one JSON object of the form {shape}, and nothing else."
        return (f"Answer with the next tool call only, in exactly two lines:\n{self.name_key}: <tool name>\n"
                f"{self.args_key}: <arguments as a JSON object>")

    def reply(self, name: str, arguments: dict[str, Any]) -> str:
        if self.style == "json":
            return json.dumps({self.name_key: name, self.args_key: arguments}, ensure_ascii=False)
        return f"{self.name_key}: {name}\n{self.args_key}: {json.dumps(arguments, ensure_ascii=False)}"


INSTRUCT_FORMATS = {"json": InstructFormat("json", "name", "arguments"),
                    "string": InstructFormat("string", "Action", "Action Input")}


def random_instruct_format(style: Literal["json", "string"], key: str) -> InstructFormat:
    """The format a `:random` instruct protocol draws for `key` (the release varies key names)."""
    rng = text_rng(f"instruct\x1f{key}")
    if style == "json":
        return InstructFormat("json", rng.choice(JSON_NAME_KEYS), rng.choice(JSON_ARGS_KEYS))
    action = rng.choice(ACTION_KEYS)
    return InstructFormat("string", action, rng.choice([k for k in INPUT_KEYS if k.lower() != action.lower()]))


class InstructProtocol(TextProtocol):
    """Agent-FLAN's instruction-following samples: the tools, a required output format, the query
    and the steps so far in one user turn; the reply is the next call only. Rendering a trajectory
    that ends in an assistant call gives the training sample for that call. `randomized` draws the
    format's key names from the key (`instruct:json:random`), as the release varies them."""

    episodic = False

    def __init__(self, style: Literal["json", "string"], max_observation_chars: int = 300,
                 randomized: bool = False) -> None:
        self.style = style
        self.randomized = randomized
        self.name = f"instruct:{style}" + (":random" if randomized else "")
        self.max_observation_chars = max_observation_chars

    def format_for(self, key: str) -> InstructFormat:
        return random_instruct_format(self.style, key) if self.randomized else INSTRUCT_FORMATS[self.style]

    def apply(self, traj: Trajectory, key: str) -> Trajectory:
        out = super().apply(traj, key)
        out.metadata["instruct_format"] = dataclasses.asdict(self.format_for(key))
        return out

    def render(self, traj: Trajectory, key: str = "") -> list[Message]:
        final_tool = traj.tags.get("final_tool")
        fmt = self.format_for(key)
        msgs = list(neutral_view(traj).messages)
        target = msgs.pop() if msgs and isinstance(msgs[-1], AssistantMessage) and msgs[-1].tool_calls else None
        shown = traj.model_copy(update={"messages": msgs})
        query = request_of(shown) or ""
        results = {m.tool_call_id: m.content for m in msgs if isinstance(m, ToolMessage)}
        history: list[str] = []
        for m in msgs:
            if isinstance(m, AssistantMessage):
                for c in m.tool_calls:
                    res = results.get(c.id, "")[: self.max_observation_chars]
                    history.append(f"{len(history) + 1}. {c.name}({json.dumps(c.arguments, ensure_ascii=False)})"
                                   f" -> {res}")
        tools = [t for t in traj.tools if t.name != final_tool]
        system = f"{tools_prompt(tools)}\n\n{fmt.instruction()}"
        user = query if not history else f"{query}\n\nSteps so far:\n" + "\n".join(history)
        out: list[Message] = [SystemMessage(content=system), UserMessage(content=user)]
        if isinstance(target, AssistantMessage):
            call = target.tool_calls[0]
            out.append(AssistantMessage(content=fmt.reply(call.name, call.arguments),
                                        capability="instruction_following", loss=target.loss))
        return out

    def parse(self, text: str, traj: Trajectory, key: str = "") -> Action:
        text = text.strip()
        fmt = self.format_for(key)
        if self.style == "json":
            try:
                obj, end = json.JSONDecoder().raw_decode(text)
            except json.JSONDecodeError as e:
                return Action("unparseable", error=f"not one JSON object: {e.msg}")
            if not isinstance(obj, dict) or not isinstance(obj.get(fmt.name_key), str):
                return Action("unparseable", error=f"the JSON object lacks a string {fmt.name_key!r}")
            args = obj.get(fmt.args_key, {})
            flags = ["extra_text"] if text[end:].strip() else []
            return Action("call", flags=flags, calls=[ToolCall(id="call_0", name=obj[fmt.name_key], arguments=args
                                                               if isinstance(args, dict) else {"input": args})])
        action = parse_react_reply(FormatSpec(action_key=fmt.name_key, input_key=fmt.args_key), text)
        if action.thought:
            action.flags.append("extra_text")
        if action.kind == "answer":  # the string format has no final action: a 'Finish' is a call
            return Action("unparseable", error="the reply is not a tool call")
        return action


def instruct_reply(style: str, name: str, arguments: dict[str, Any]) -> str:
    """The one trained turn of an instruct sample in the fixed format of `style`."""
    return INSTRUCT_FORMATS[style].reply(name, arguments)


class BFCLProtocol(TextProtocol):
    """BFCL's prompting format (see the module docstring): single-step, several calls per reply."""

    name = "bfcl"
    episodic = False

    def render(self, traj: Trajectory, key: str = "") -> list[Message]:
        system = SYSTEM_PROMPT.replace("{functions}", function_docs(traj.tools))
        msgs = list(traj.messages)
        if msgs and isinstance(msgs[0], SystemMessage):
            system = f"{system}\n\n{msgs.pop(0).content}"
        out: list[Message] = [SystemMessage(content=system)]
        for m in msgs:
            if isinstance(m, AssistantMessage):
                calls = [c for c in m.tool_calls if c.name != traj.tags.get("final_tool")]
                out.append(AssistantMessage(content=render_calls(calls) if calls else m.content, loss=m.loss))
            elif isinstance(m, ToolMessage):
                out.append(UserMessage(content=m.content))
            else:
                out.append(type(m)(content=m.content))
        return out

    def parse(self, text: str, traj: Trajectory, key: str = "") -> Action:
        try:
            decoded = decode_calls(text)
        except ParseError as e:
            # a reply BFCL's decoder reads (as a call) is unparseable here, never a plain answer
            if attempts_call(text) or bfcl_decodes(text):
                return Action("unparseable", error=e.message)
            return Action("answer", answer=text.strip())
        if not decoded:
            return Action("answer", answer=text.strip())
        calls = []
        for i, d in enumerate(decoded):
            (name, args), = d.items()
            calls.append(ToolCall(id=f"call_{i}", name=name, arguments=args))
        return Action("call", calls=calls)


# ---- the registry ---------------------------------------------------------------------------------------

def _is_protocol(obj: Any) -> str | None:
    return None if callable(obj) else f"it names {obj!r}, neither a Protocol class nor a function that makes one"


PROTOCOLS: Registry[Callable[[], Protocol]] = Registry("protocol", check=_is_protocol)
"""Protocols by name: each entry makes the protocol (a `Protocol` subclass, or a function without
arguments). Plugins register in the entry point group `agentflan.protocols`."""
_BUILT_IN: list[tuple[str, Callable[[], Protocol], str]] = [
    ("native", NativeProtocol, "the chat template's own tool calls (react for a template without them)"),
    ("react", partial(ReactProtocol, TOOLLLAMA_SPEC), "ReAct lines in ToolLLaMA's format"),
    ("json", partial(ReactProtocol, JSON_SPEC), "one JSON object per action"),
    ("react:random", partial(ReactProtocol, None, ("react",)), "ReAct with the format drawn from the key"),
    ("json:random", partial(ReactProtocol, None, ("json",)), "JSON with the key names drawn from the key"),
    ("toolllama", ToolLlamaProtocol, "ToolBench's prompt and ToolLLaMA ReAct"),
    ("fireact", FireActProtocol, "HotpotQA's Action: search[...]"),
    ("tflan", partial(TFlanProtocol, AlignOptions(cot=True, decompose=True)), "T-FLAN chat, elicit turns"),
    ("tflan:nocot", partial(TFlanProtocol, AlignOptions(cot=False, decompose=True)), "T-FLAN without thoughts"),
    ("tflan:inline", partial(TFlanProtocol, AlignOptions(cot=True, decompose=False)), "T-FLAN, call inline"),
    ("instruct:json", partial(InstructProtocol, "json"), "the next call only, as JSON"),
    ("instruct:string", partial(InstructProtocol, "string"), "the next call only, as two lines"),
    ("instruct:json:random", partial(InstructProtocol, "json", randomized=True), "instruct:json, drawn keys"),
    ("instruct:string:random", partial(InstructProtocol, "string", randomized=True), "instruct:string, drawn keys"),
    ("source", SourceProtocol, "each trajectory in its source's own format"),
    *((f"agentinstruct:{_t}", partial(DialectProtocol, _t), f"AgentInstruct's {_t} dialect") for _t in DIALECTS),
]
for _name, _make, _doc in _BUILT_IN:
    PROTOCOLS.register(_name, _make, _doc)
PROTOCOLS.register("bfcl", BFCLProtocol, "BFCL's Python-call prompt (single step)")


def protocol_names() -> list[str]:
    return PROTOCOLS.names()


def get_protocol(name: str, template: Any = None) -> Protocol:
    """A protocol by name (`react`, `json:random`, `tflan:inline`, `agentinstruct:db`, ...), or a
    ReAct/JSON format given as `react:{"action_key": "Tool", ...}`. With `template`, a
    `structured` protocol (`native`) resolves to `react` when the template cannot render tools."""
    style, _, rest = name.partition(":")
    if style in ("react", "json") and rest.startswith("{"):
        try:
            spec = FormatSpec(**{**json.loads(rest), "style": style})
        except (json.JSONDecodeError, TypeError) as e:
            raise ConfigError(f"protocol {name!r}: the format must be a JSON object of FormatSpec keys ({e})") from e
        return ReactProtocol(spec)
    proto = PROTOCOLS.get(name)()
    if not isinstance(proto, Protocol):
        raise ConfigError(f"protocol {name!r} ({PROTOCOLS.origin(name) or 'built in'}) made {proto!r}, "
                          "not an agentflan.formats.protocols.Protocol")
    if proto.name != name:  # data is tagged with `name`, and training and eval look the tag up again
        raise ConfigError(f"protocol {name!r} ({PROTOCOLS.origin(name) or 'built in'}) calls itself "
                          f"{proto.name!r}: its `name` must be the name it is registered under")
    if proto.structured and template is not None:
        from agentflan.formats.templates import renders_tools

        if not renders_tools(template):
            return ReactProtocol(TOOLLLAMA_SPEC)
    return proto


TEXT_FORMATS = frozenset({"tflan", "react", "json", "source", "instruct"})
"""`format` tags of trajectories that data steps already rendered as text (before protocol tags)."""


def rendered_protocol(traj: Trajectory) -> str | None:
    """The protocol a trajectory was rendered with, when it is already text (None: structured)."""
    if "protocol" in traj.tags:
        return traj.tags["protocol"]
    fmt = traj.tags.get("format")
    return fmt if fmt in TEXT_FORMATS else None


def training_view(traj: Trajectory, template: Any = None) -> tuple[list[Message], list[ToolSpec] | None, str]:
    """How training shows a trajectory to `template`: (messages, tools for the template, protocol).

    Text a data step rendered (tagged `protocol`, or a T-FLAN/ReAct/instruct `format`) is shown as
    it is. A structured conversation with tools goes through `native`: the template's own tool
    rendering when it has one, else `react` (tools in the system prompt, stated once, from the
    first turn on). A conversation without tools is plain chat.
    """
    done = rendered_protocol(traj)
    if done is not None:
        return list(traj.messages), (traj.tools or None) if done == "native" else None, done
    from agentflan.formats.templates import is_structured

    if not traj.tools and not is_structured(traj.messages):
        return list(traj.messages), None, "chat"
    proto = _native(template)
    return proto.render(traj, traj.id), proto.template_tools(traj), proto.name


def _native(template: Any) -> Protocol:
    cached: Protocol | None = getattr(template, "_native_protocol", None)
    if cached is None:
        cached = get_protocol("native", template)
        if template is not None:
            template._native_protocol = cached
    return cached


def training_texts(trajs: Any, limit: int = 2000) -> list[str]:
    """The text of every turn of (at most `limit`) trajectories as training shows it to a text
    template: what a tokenizer built from the data (`tiny`) must cover."""
    from agentflan.formats.templates import AgentFlanTemplate

    template = AgentFlanTemplate()
    return [m.content for t in list(trajs)[:limit] for m in training_view(t, template)[0]]
