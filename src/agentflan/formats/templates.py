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

Tool calls that are still structured are passed to HF templates as `tool_calls`; the two fixed
templates have no tool role, so they write calls in ToolLLaMA text and tool results as user turns.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from agentflan.errors import AgentflanError
from agentflan.formats.react import render_toolllama
from agentflan.schema import AssistantMessage, Message, SystemMessage, ToolMessage, ToolSpec

Segment = tuple[str, bool]
"""A piece of rendered text and whether it is trained."""


class TemplateError(AgentflanError):
    pass


def assistant_text(m: AssistantMessage) -> str:
    """An assistant turn as plain text: its content, then its calls in ToolLLaMA format."""
    if not m.tool_calls:
        return m.content
    calls = "\n".join(render_toolllama(m.content if k == 0 else "", c.name, c.arguments).lstrip("\n")
                      for k, c in enumerate(m.tool_calls))
    return calls


class ChatTemplate(ABC):
    name: ClassVar[str]
    stop: ClassVar[tuple[str, ...]] = ()
    """Text that ends an assistant turn (for generation)."""
    add_bos: ClassVar[bool] = True

    @abstractmethod
    def render(self, messages: list[Message], tools: list[ToolSpec] | None = None, *,
               add_generation_prompt: bool = False) -> list[Segment]:
        """Segments of the conversation, trained ones marked."""

    def text(self, messages: list[Message], tools: list[ToolSpec] | None = None, *,
             add_generation_prompt: bool = False) -> str:
        return "".join(s for s, _ in self.render(messages, tools, add_generation_prompt=add_generation_prompt))


HUMAN_BEGIN, HUMAN_END = "<|Human|>\u0d46", "\n "
BOT_BEGIN, BOT_END, STOP = "<|Assistant|>\u0d46", "\n ", "\u0d3f"


class AgentFlanTemplate(ChatTemplate):
    name: ClassVar[str] = "agentflan"
    stop: ClassVar[tuple[str, ...]] = (STOP,)

    def render(self, messages: list[Message], tools: list[ToolSpec] | None = None, *,
               add_generation_prompt: bool = False) -> list[Segment]:
        segs: list[Segment] = []
        for m in messages:
            if isinstance(m, AssistantMessage):
                segs += [(BOT_BEGIN, False), (assistant_text(m) + STOP, m.loss), (BOT_END, False)]
            else:
                segs.append((f"{HUMAN_BEGIN}{m.content}{HUMAN_END}", False))
        if add_generation_prompt:
            segs.append((BOT_BEGIN, False))
        return segs


class Llama2Template(ChatTemplate):
    name: ClassVar[str] = "llama2"
    stop: ClassVar[tuple[str, ...]] = ("</s>",)
    add_bos: ClassVar[bool] = False  # "<s>" is written in the text

    def render(self, messages: list[Message], tools: list[ToolSpec] | None = None, *,
               add_generation_prompt: bool = False) -> list[Segment]:
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
                    segs.append((assistant_text(m).strip(), m.loss))
                last = group[-1]
                assert isinstance(last, AssistantMessage)
                segs.append((" </s>", last.loss))
            first = False
        return segs


def hf_messages(messages: list[Message]) -> list[dict[str, Any]]:
    """Our messages as the dicts `apply_chat_template` expects (tool calls with dict arguments)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, AssistantMessage):
            d: dict[str, Any] = {"role": "assistant", "content": m.content}
            if m.tool_calls:
                d["tool_calls"] = [{"id": c.id, "type": "function",
                                    "function": {"name": c.name, "arguments": c.arguments}} for c in m.tool_calls]
            out.append(d)
        elif isinstance(m, ToolMessage):
            d = {"role": "tool", "content": m.content}
            if m.name:
                d["name"] = m.name
            if m.tool_call_id:
                d["tool_call_id"] = m.tool_call_id
            out.append(d)
        else:
            out.append({"role": m.role, "content": m.content})
    return out


def hf_tools(tools: list[ToolSpec] | None) -> list[dict[str, Any]] | None:
    if not tools:
        return None
    return [{"type": "function", "function": {"name": t.name, "description": t.description,
                                              "parameters": t.parameters}} for t in tools]


class HFTemplate(ChatTemplate):
    """A tokenizer's own chat template; spans by prefix rendering (checked prefix-preserving)."""

    name: ClassVar[str] = "hf"
    add_bos: ClassVar[bool] = False  # a template that wants BOS writes it

    def __init__(self, tokenizer: Any, stop: tuple[str, ...] | None = None) -> None:
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(f"tokenizer {getattr(tokenizer, 'name_or_path', '?')!r} has no chat template; "
                                "choose template: agentflan or llama2, or set tokenizer.chat_template")
        self.tokenizer = tokenizer
        eos = getattr(tokenizer, "eos_token", None)
        self.stop = stop or ((eos,) if eos else ())  # type: ignore[misc]

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
            if is_bot and m.loss:
                body = piece.rstrip()
                segs += [(body, True), (piece[len(body):], False)] if body != piece else [(piece, True)]
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


def get_template(name: str, tokenizer: Any = None) -> ChatTemplate:
    if name == "agentflan":
        return AgentFlanTemplate()
    if name == "llama2":
        return Llama2Template()
    if name == "hf":
        return HFTemplate(tokenizer)
    raise TemplateError(f"unknown template {name!r} (agentflan, llama2, hf)")


TOOLS_HEADER = "You can use the following tools:"


def is_structured(messages: list[Message]) -> bool:
    """Do the messages still hold structured tool calls or results (not yet rendered as text)?"""
    return any(isinstance(m, ToolMessage) or (isinstance(m, AssistantMessage) and m.tool_calls) for m in messages)


def with_tools_in_system(messages: list[Message], tools: list[ToolSpec]) -> list[Message]:
    """For templates without a tool role: list the offered tools in the system prompt.

    Only when calls are still structured: text renderings (T-FLAN, ReAct) state their tools already.
    """
    if not tools or not is_structured(messages):
        return list(messages)
    listing = TOOLS_HEADER + "\n" + json.dumps(
        [{"name": t.name, "description": t.description, "parameters": t.parameters, **t.metadata} for t in tools],
        ensure_ascii=False)
    if messages and isinstance(messages[0], SystemMessage):
        first = messages[0]
        return [first.model_copy(update={"content": f"{first.content}\n{listing}"}), *messages[1:]]
    return [SystemMessage(content=listing), *messages]
