"""Chat templates that render a trajectory into text *segments*, each marked trained or not.

Training masks come from these segments (character spans -> token labels), and the same
rendering produces prompts at serving time, so what is trained is what is served.

* `agentflan`: the released Agent-FLAN model's Lagent meta-template, exactly: user and system turns
  begin `<|Human|>` + U+0D46 and end newline + space; assistant turns begin `<|Assistant|>` +
  U+0D46 and end U+0D3F + newline + space. U+0D3F is the stop marker and is trained.
* `llama2`: Llama-2-chat (`<s>[INST] <<SYS>>...<</SYS>> user [/INST] answer </s>`); consecutive
  user-side turns (observations, elicits) are joined, `</s>` is trained.
* `hf`: any model's own Hugging Face chat template, with tools passed through. Per-message spans
  come from rendering prefixes (messages[:i] with the generation prompt, then messages[:i+1]);
  that is valid only for prefix-preserving templates, checked on every sample
  (`TemplateError` otherwise).

Templates are chat markup only. How tools, calls and results become text is a *protocol*'s job
(`agentflan.formats.protocols`): training and serving render a conversation with its protocol
first, then with the template. Only an HF template that renders tools itself (`renders_tools`)
receives structured messages and the tool list (the `native` protocol); the fixed templates
receive text turns and refuse structured ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from agentflan.errors import AgentflanError
from agentflan.formats.openai import openai_messages, openai_tools
from agentflan.registry import Registry, subclass_of
from agentflan.schema import AssistantMessage, Message, SystemMessage, ToolCall, ToolMessage, ToolSpec, UserMessage

Segment = tuple[str, bool]
"""A piece of rendered text and whether it is trained."""


class TemplateError(AgentflanError):
    pass


def _text_only(messages: list[Message], template: str) -> None:
    for i, m in enumerate(messages):
        if isinstance(m, ToolMessage) or (isinstance(m, AssistantMessage) and m.tool_calls):
            raise TemplateError(f"template {template!r} renders text turns only, but message {i} holds a structured "
                                "tool call or result: render the conversation with a protocol first "
                                "(agentflan.formats.protocols)")


class ChatTemplate(ABC):
    name: ClassVar[str]
    stop: ClassVar[tuple[str, ...]] = ()
    """Text that ends an assistant turn (for generation)."""
    add_bos: ClassVar[bool] = True
    tool_aware: ClassVar[bool] = False
    """Whether the template may render tools and tool calls itself (then `renders_tools` probes
    whether it does); a template that is chat markup only receives text turns from a protocol."""
    jinja: ClassVar[str | None] = None
    """The same template in Jinja, saved with a trained tokenizer so that serving stacks render
    prompts as training did (None: the tokenizer keeps its own chat template)."""

    @classmethod
    def create(cls, tokenizer: Any = None) -> ChatTemplate:
        """The template for a model's `tokenizer` (fixed templates need none)."""
        return cls()

    @abstractmethod
    def render(self, messages: list[Message], tools: list[ToolSpec] | None = None, *,
               add_generation_prompt: bool = False) -> list[Segment]:
        """Segments of the conversation, trained ones marked."""

    def text(self, messages: list[Message], tools: list[ToolSpec] | None = None, *,
             add_generation_prompt: bool = False) -> str:
        return "".join(s for s, _ in self.render(messages, tools, add_generation_prompt=add_generation_prompt))


# ---- the fixed templates in Jinja (saved with trained tokenizers: `ChatTemplate.jinja`) ----------------------
# Literal text goes through expressions: transformers renders with trim_blocks and lstrip_blocks,
# which would eat the newline + space that end every turn if they stood next to a block tag.
AGENTFLAN_JINJA = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}{{ '<|Assistant|>\u0d46' + m['content'] + '\u0d3f\\n ' }}"
    "{% else %}{{ '<|Human|>\u0d46' + m['content'] + '\\n ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|Assistant|>\u0d46' }}{% endif %}"
)

LLAMA2_JINJA = (
    "{% set ns = namespace(out='', sys='', side='', first=true, user='', bot=[]) %}"
    "{% if messages and messages[0]['role'] == 'system' %}{% set ns.sys = messages[0]['content'] %}"
    "{% set msgs = messages[1:] %}{% else %}{% set msgs = messages %}{% endif %}"
    "{% for m in msgs %}"
    "{% set side = 'assistant' if m['role'] == 'assistant' else 'user' %}"
    "{% if side != ns.side and ns.side != '' %}"
    "{% if ns.side == 'user' %}"
    "{% set u = ns.user %}{% if ns.first and ns.sys %}{% set u = '<<SYS>>\n' + ns.sys + '\n<</SYS>>\n\n' + u %}{% endif %}"
    "{% set ns.out = ns.out + '<s>[INST] ' + u | trim + ' [/INST]' %}{% set ns.first = false %}"
    "{% else %}{% if not ns.out %}{% set ns.out = '<s>[INST]  [/INST]' %}{% endif %}"
    "{% set ns.out = ns.out + ' ' + ns.bot | join('\n\n') + ' </s>' %}{% set ns.first = false %}{% endif %}"
    "{% set ns.user = '' %}{% set ns.bot = [] %}{% endif %}"
    "{% if side == 'user' %}{% set ns.user = ns.user + ('\n\n' if ns.user else '') + m['content'] %}"
    "{% else %}{% set ns.bot = ns.bot + [m['content'] | trim] %}{% endif %}"
    "{% set ns.side = side %}"
    "{% endfor %}"
    "{% if ns.side == 'user' %}"
    "{% set u = ns.user %}{% if ns.first and ns.sys %}{% set u = '<<SYS>>\n' + ns.sys + '\n<</SYS>>\n\n' + u %}{% endif %}"
    "{% set ns.out = ns.out + '<s>[INST] ' + u | trim + ' [/INST]' %}"
    "{% elif ns.side == 'assistant' %}{% if not ns.out %}{% set ns.out = '<s>[INST]  [/INST]' %}{% endif %}"
    "{% set ns.out = ns.out + ' ' + ns.bot | join('\n\n') + ' </s>' %}{% endif %}"
    "{{ ns.out }}"
    "{% if add_generation_prompt and ns.side == 'user' %}{{ ' ' }}{% endif %}"
)


HUMAN_BEGIN, HUMAN_END = "<|Human|>\u0d46", "\n "
BOT_BEGIN, BOT_END, STOP = "<|Assistant|>\u0d46", "\n ", "\u0d3f"


class AgentFlanTemplate(ChatTemplate):
    name: ClassVar[str] = "agentflan"
    stop: ClassVar[tuple[str, ...]] = (STOP,)
    jinja: ClassVar[str | None] = AGENTFLAN_JINJA

    def render(self, messages: list[Message], tools: list[ToolSpec] | None = None, *,
               add_generation_prompt: bool = False) -> list[Segment]:
        _text_only(messages, self.name)
        segs: list[Segment] = []
        for m in messages:
            if isinstance(m, AssistantMessage):
                segs += [(BOT_BEGIN, False), (m.content + STOP, m.loss), (BOT_END, False)]
            else:
                segs.append((f"{HUMAN_BEGIN}{m.content}{HUMAN_END}", False))
        if add_generation_prompt:
            segs.append((BOT_BEGIN, False))
        return segs


class Llama2Template(ChatTemplate):
    name: ClassVar[str] = "llama2"
    stop: ClassVar[tuple[str, ...]] = ("</s>",)
    jinja: ClassVar[str | None] = LLAMA2_JINJA
    add_bos: ClassVar[bool] = False  # "<s>" is written in the text

    def render(self, messages: list[Message], tools: list[ToolSpec] | None = None, *,
               add_generation_prompt: bool = False) -> list[Segment]:
        _text_only(messages, self.name)
        msgs = list(messages)
        system = msgs.pop(0).content if msgs and isinstance(msgs[0], SystemMessage) else None
        groups: list[tuple[str, list[Message]]] = []
        for m in msgs:
            side = "assistant" if isinstance(m, AssistantMessage) else "user"
            if groups and groups[-1][0] == side:
                groups[-1][1].append(m)
            else:
                groups.append((side, [m]))
        segs: list[Segment] = []
        first = True
        for side, group in groups:
            if side == "user":
                text = "\n\n".join(m.content for m in group)
                if first and system is not None:
                    text = f"<<SYS>>\n{system}\n<</SYS>>\n\n{text}"
                segs.append((f"<s>[INST] {text.strip()} [/INST]", False))
            else:
                if not segs:  # an assistant turn first: an empty instruction keeps the format valid
                    segs.append(("<s>[INST]  [/INST]", False))
                segs.append((" ", False))
                for k, m in enumerate(group):
                    assert isinstance(m, AssistantMessage)
                    if k:
                        segs.append(("\n\n", False))
                    segs.append((m.content.strip(), m.loss))
                last = group[-1]
                assert isinstance(last, AssistantMessage)
                segs.append((" </s>", last.loss))
            first = False
        if add_generation_prompt and groups and groups[-1][0] == "user":
            segs.append((" ", False))  # the space after [/INST] is markup: the reply starts after it
        return segs


def hf_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Our messages as the dicts `apply_chat_template` expects (tool calls with dict arguments)."""
    return openai_messages(messages, "object")


def hf_tools(tools: list[ToolSpec] | None) -> list[dict[str, Any]] | None:
    return openai_tools(tools)


class HFTemplate(ChatTemplate):
    """A tokenizer's own chat template; spans by prefix rendering (checked prefix-preserving)."""

    name: ClassVar[str] = "hf"
    add_bos: ClassVar[bool] = False  # a template that wants BOS writes it
    tool_aware: ClassVar[bool] = True

    @classmethod
    def create(cls, tokenizer: Any = None) -> ChatTemplate:
        return cls(tokenizer)

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
                                "choose template: agentflan or llama2, or set tokenizer.chat_template")
        self.tokenizer = tokenizer
        eos = getattr(tokenizer, "eos_token", None)
        self.stop = stop or tuple(dict.fromkeys(s for s in (self._end_of_turn(), eos) if s))  # type: ignore[misc]

    def _end_of_turn(self) -> str | None:
        """The marker the template writes after an assistant turn's text (`<|im_end|>`, `<|eot_id|>`,
        ...): generation stops there, whether or not it is the tokenizer's EOS."""
        probe = "agentflan_probe_reply"
        try:
            text = self._render([UserMessage(content="u"), AssistantMessage(content=probe)], None, False)
        except TemplateError:
            return None
        after = text[text.find(probe) + len(probe):].strip() if probe in text else ""
        return after.split()[0] if after else None

    def _render(self, messages: list[Message], tools: list[ToolSpec] | None, add_generation_prompt: bool) -> str:
        if not messages and not add_generation_prompt:
            return ""
        try:
            return str(self.tokenizer.apply_chat_template(
                hf_messages(messages), tools=hf_tools(tools), tokenize=False,
                add_generation_prompt=add_generation_prompt))
        except Exception as e:  # jinja errors of any kind: say which template and where
            raise TemplateError(f"the chat template failed on {len(messages)} message(s): {e}") from e

    def render(self, messages: list[Message], tools: list[ToolSpec] | None = None, *,
               add_generation_prompt: bool = False) -> list[Segment]:
        segs: list[Segment] = []
        done = ""
        for i, m in enumerate(messages):
            is_bot = isinstance(m, AssistantMessage)
            before = self._render(messages[:i], tools, add_generation_prompt=is_bot) if (i or is_bot) else ""
            after = self._render(messages[: i + 1], tools, add_generation_prompt=False)
            if i and not before.startswith(done):
                raise TemplateError(self._not_prefix(i))
            if not after.startswith(before):
                raise TemplateError(self._not_prefix(i))
            if before != done:
                segs.append((before[len(done):], False))
            piece = after[len(before):]
            if is_bot:  # the same boundaries whatever the loss: tokenization must not depend on it
                body = piece.rstrip()
                segs += [(body, m.loss), (piece[len(body):], False)]
            else:
                segs.append((piece, False))
            done = after
        if add_generation_prompt:
            full = self._render(messages, tools, add_generation_prompt=True)
            if not full.startswith(done):
                raise TemplateError(self._not_prefix(len(messages)))
            segs.append((full[len(done):], False))
        return [s for s in segs if s[0]]

    def _not_prefix(self, i: int) -> str:
        return (f"chat template of {getattr(self.tokenizer, 'name_or_path', '?')!r} is not prefix-preserving at "
                f"message {i}: rendering the first {i} messages is not a prefix of rendering {i + 1} (templates "
                "that rewrite earlier turns, e.g. dropping past reasoning, cannot give per-message loss spans); "
                "use template: agentflan or llama2, or a training template that preserves prefixes")


TEMPLATES: Registry[type[ChatTemplate]] = Registry("template", check=subclass_of(
    "agentflan.formats.templates:ChatTemplate"))
"""Chat templates by name (plugins: the entry point group `agentflan.templates`)."""
TEMPLATES.register("agentflan", AgentFlanTemplate, "the released Agent-FLAN model's Lagent meta-template")
TEMPLATES.register("llama2", Llama2Template, "Llama-2-chat ([INST] ... [/INST] answer </s>)")
TEMPLATES.register("hf", HFTemplate, "the model's own Hugging Face chat template (tools passed through)")


def get_template(name: str, tokenizer: Any = None) -> ChatTemplate:
    """The template `name` for a model's `tokenizer` (`ConfigError` for an unknown name)."""
    return TEMPLATES.get(name).create(tokenizer)


def turn_ends(template: ChatTemplate, tokenizer: Any) -> tuple[tuple[str, ...], set[int]]:
    """What ends a model's turn in `template`: the end strings (the template's own stops, the
    tokenizer's eos and, when it differs, its pad token) and the ids of those that are one token.
    Every generator (eval's engines, the server, RL rollouts) stops where the model was trained to."""
    pad = tokenizer.pad_token if tokenizer.pad_token != tokenizer.eos_token else None
    ends = tuple(dict.fromkeys(s for s in (*template.stop, tokenizer.eos_token, pad) if s))
    ids = {i for s in ends for i in [tokenizer.convert_tokens_to_ids(s)]
           if isinstance(i, int) and i != tokenizer.unk_token_id}
    return ends, ids


def is_structured(messages: list[Message]) -> bool:
    """Do the messages still hold structured tool calls or results (not yet rendered as text)?"""
    return any(isinstance(m, ToolMessage) or (isinstance(m, AssistantMessage) and m.tool_calls) for m in messages)


_PROBE_TOOL, _PROBE_CALL = "agentflan_probe_tool", "agentflan_probe_call"


def renders_tools(template: ChatTemplate) -> bool:
    """Does the template itself show the offered tools and the assistant's tool calls? (Probed once
    per template by rendering a conversation with a tool and a call: both names must appear.)"""
    if not template.tool_aware:
        return False
    cached: bool | None = getattr(template, "_renders_tools", None)
    if cached is None:
        probe: list[Message] = [SystemMessage(content="s"), UserMessage(content="u"), AssistantMessage(
            content="", tool_calls=[ToolCall(id="call_0", name=_PROBE_CALL, arguments={"x": 1})]),
            ToolMessage(content="r", tool_call_id="call_0", name=_PROBE_CALL)]
        tool = ToolSpec(name=_PROBE_TOOL, parameters={"type": "object", "properties": {"x": {"type": "integer"}}})
        try:
            # an HF template renders the whole conversation at once (its segments also check prefixes)
            text = (template._render(probe, [tool], add_generation_prompt=False) if isinstance(template, HFTemplate)
                    else template.text(probe, [tool]))
        except TemplateError:
            text = ""
        cached = _PROBE_TOOL in text and _PROBE_CALL in text
        template._renders_tools = cached  # type: ignore[attr-defined]
    return cached
