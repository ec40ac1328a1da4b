"""Exact loss masks: every packaged template, token by token, against expectations written by hand.

One multi-turn tool conversation: a system prompt, a request, a tool call (trained), its result, a
second call that is *not* trained (`loss: false`, as `balance` leaves thinned turns), its result,
the answer (trained), a follow-up and a second answer (trained). The expected renderings below
were derived by hand from each template's definition (docs/training.md), with the trained text in
⟦...⟧. A template or mask that trains only the first turn, only the last turn, or every turn
regardless of its loss flag fails here; `test_mutants_are_caught` proves it for the first two.
"""

from __future__ import annotations

import json

import pytest

from agentflan.formats.agent_text import TOOLLLAMA_SPEC, format_instructions
from agentflan.formats.protocols import get_protocol, training_view
from agentflan.formats.templates import (
    AgentFlanTemplate,
    ChatTemplate,
    HFTemplate,
    Llama2Template,
    Segment,
)
from agentflan.schema import ToolSpec, Trajectory
from agentflan.training.masking import IGNORE, encode

SYSTEM = "You are helpful."
TOOLS = [{"name": "weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]
CONVERSATION = Trajectory.model_validate({
    "id": "tool-conv", "source": {"format": "native"}, "tools": TOOLS,
    "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {"role": "assistant", "content": "Paris first.",
         "tool_calls": [{"id": "c0", "name": "weather", "arguments": {"city": "Paris"}}]},
        {"role": "tool", "tool_call_id": "c0", "name": "weather", "content": "sunny"},
        {"role": "assistant", "content": "Now Rome.", "loss": False,
         "tool_calls": [{"id": "c1", "name": "weather", "arguments": {"city": "Rome"}}]},
        {"role": "tool", "tool_call_id": "c1", "name": "weather", "content": "rain"},
        {"role": "assistant", "content": "Paris is sunny, Rome is rainy."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": "You are welcome."},
    ]})

# the two fixed templates have no tool role: the conversation goes through the `react` protocol
# (docs/eval.md): the tools and the reply format in the system prompt, calls in ReAct text, results
# as `Observation:` user turns
LISTING = SYSTEM + "\n\n" + format_instructions(TOOLLLAMA_SPEC, [ToolSpec(**t) for t in TOOLS])
OBS1, OBS2 = "Observation: sunny", "Observation: rain"
CALL1 = 'Thought: Paris first.\nAction: weather\nAction Input: {"city": "Paris"}'
CALL2 = 'Thought: Now Rome.\nAction: weather\nAction Input: {"city": "Rome"}'
ANSWER1, ANSWER2 = "Paris is sunny, Rome is rainy.", "You are welcome."
H, A, S = "<|Human|>\u0d46", "<|Assistant|>\u0d46", "\u0d3f"

EXPECTED_AGENTFLAN = (
    f"{H}{LISTING}\n {H}Weather in Paris and Rome?\n "
    f"{A}⟦{CALL1}{S}⟧\n {H}{OBS1}\n "
    f"{A}{CALL2}{S}\n {H}{OBS2}\n "  # loss: false, so context only
    f"{A}⟦{ANSWER1}{S}⟧\n {H}Thanks!\n "
    f"{A}⟦{ANSWER2}{S}⟧\n ")

EXPECTED_LLAMA2 = (
    f"<s>[INST] <<SYS>>\n{LISTING}\n<</SYS>>\n\nWeather in Paris and Rome? [/INST] ⟦{CALL1} </s>⟧"
    f"<s>[INST] {OBS1} [/INST] {CALL2} </s>"
    f"<s>[INST] {OBS2} [/INST] ⟦{ANSWER1} </s>⟧"
    f"<s>[INST] Thanks! [/INST] ⟦{ANSWER2} </s>⟧")

# A tool-aware template in the style of Qwen/Hermes, as a model would ship it: structured calls
# and the tool role go through `apply_chat_template`; the span of a message is what the template
# adds for it (after the generation prompt), end token included, trailing newline not.
TOOL_TEMPLATE = (
    "{%- if tools -%}{{ '<tools>' + (tools | tojson) + '</tools>\\n' }}{%- endif -%}"
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] }}"
    "{%- if m.get('tool_calls') -%}{%- for c in m['tool_calls'] -%}"
    "{{ '<tool_call>' + c['function']['name'] + ' ' + c['function']['arguments'] | tojson + '</tool_call>' }}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}")
IM = "<|im_start|>"
TOOLS_BLOCK = "<tools>" + json.dumps([{"type": "function", "function": t} for t in TOOLS]) + "</tools>\n"
EXPECTED_HF_TOOLS = (
    f"{TOOLS_BLOCK}{IM}system\n{SYSTEM}<|im_end|>\n{IM}user\nWeather in Paris and Rome?<|im_end|>\n"
    f'{IM}assistant\n⟦Paris first.<tool_call>weather {{"city": "Paris"}}</tool_call><|im_end|>⟧\n'
    f"{IM}tool\nsunny<|im_end|>\n"
    f'{IM}assistant\nNow Rome.<tool_call>weather {{"city": "Rome"}}</tool_call><|im_end|>\n'
    f"{IM}tool\nrain<|im_end|>\n"
    f"{IM}assistant\n⟦{ANSWER1}<|im_end|>⟧\n{IM}user\nThanks!<|im_end|>\n"
    f"{IM}assistant\n⟦{ANSWER2}<|im_end|>⟧\n")


def text_conversation(traj: Trajectory) -> Trajectory:
    """The conversation as the `react` protocol renders it (text turns, no tools left to render)."""
    return traj.model_copy(update={"messages": get_protocol("react").render(traj), "tools": []})


# the packaged tiny tokenizer's ChatML and the packaged Jinja versions of the fixed templates (saved
# with every trained model), on the text conversation
EXPECTED_HF_CHATML = (
    f"{IM}system\n{LISTING}<|im_end|>\n{IM}user\nWeather in Paris and Rome?<|im_end|>\n"
    f"{IM}assistant\n⟦{CALL1}<|im_end|>⟧\n{IM}user\n{OBS1}<|im_end|>\n"
    f"{IM}assistant\n{CALL2}<|im_end|>\n{IM}user\n{OBS2}<|im_end|>\n"
    f"{IM}assistant\n⟦{ANSWER1}<|im_end|>⟧\n{IM}user\nThanks!<|im_end|>\n"
    f"{IM}assistant\n⟦{ANSWER2}<|im_end|>⟧\n")
EXPECTED_HF_AGENTFLAN_JINJA = (
    f"{H}{LISTING}\n {H}Weather in Paris and Rome?\n {A}⟦{CALL1}{S}⟧\n {H}{OBS1}\n "
    f"{A}{CALL2}{S}\n {H}{OBS2}\n {A}⟦{ANSWER1}{S}⟧\n {H}Thanks!\n {A}⟦{ANSWER2}{S}⟧\n ")
EXPECTED_HF_LLAMA2_JINJA = (  # the generation prompt ends after [/INST]'s space: the span starts after it
    f"<s>[INST] <<SYS>>\n{LISTING}\n<</SYS>>\n\nWeather in Paris and Rome? [/INST] ⟦{CALL1} </s>⟧"
    f"<s>[INST] {OBS1} [/INST] {CALL2} </s>"
    f"<s>[INST] {OBS2} [/INST] ⟦{ANSWER1} </s>⟧"
    f"<s>[INST] Thanks! [/INST] ⟦{ANSWER2} </s>⟧")


# consecutive assistant messages (a reply in parts, as AgentInstruct and some ShareGPT data hold
# them): llama2 puts them in one [/INST] answer, each part trained as its own flag says
CONSECUTIVE = Trajectory.model_validate({
    "id": "parts", "source": {"format": "native"},
    "messages": [
        {"role": "user", "content": "Q?"},
        {"role": "assistant", "content": "Part one."},
        {"role": "assistant", "content": "Part two."},
        {"role": "assistant", "content": "Part three."},
        {"role": "user", "content": "More?"},
        {"role": "assistant", "content": "Not trained.", "loss": False},
        {"role": "assistant", "content": "Trained again."},
    ]})
EXPECTED_LLAMA2_CONSECUTIVE = (
    "<s>[INST] Q? [/INST] ⟦Part one.⟧\n\n⟦Part two.⟧\n\n⟦Part three. </s>⟧"
    "<s>[INST] More? [/INST] Not trained.\n\n⟦Trained again. </s>⟧")


def unmark(expected: str) -> tuple[str, list[bool]]:
    """Plain text and a per-character trained flag from a ⟦...⟧-marked string."""
    text, flags, on = [], [], False
    for ch in expected:
        if ch in "⟦⟧":
            on = ch == "⟦"
            continue
        text.append(ch)
        flags.append(on)
    return "".join(text), flags


class CharTokenizer:
    """One token per character (id = code point + 1, 0 is BOS): labels can be checked exactly."""

    bos_token_id = 0

    def __call__(self, text: str | list[str], add_special_tokens: bool = False,
                 return_offsets_mapping: bool = False) -> dict:
        if isinstance(text, list):
            return {"input_ids": [self(t)["input_ids"] for t in text]}
        return {"input_ids": [ord(c) + 1 for c in text], "offset_mapping": [(i, i + 1) for i in range(len(text))]}

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i - 1) for i in ids)


def _hf_tokenizer(chat_template: str):
    from agentflan.training.models import tiny_tokenizer

    tok = tiny_tokenizer([SYSTEM, ANSWER1, ANSWER2, CALL1, CALL2, LISTING] * 20, vocab_size=400)
    tok.chat_template = chat_template
    return tok


def cases() -> list[tuple[str, str]]:
    return ["agentflan", "llama2", "llama2-consecutive", "hf-tools", "hf-chatml", "hf-agentflan-jinja",
            "hf-llama2-jinja"]


def template_and_expectation(case: str) -> tuple[ChatTemplate, Trajectory, str, object]:
    """The template, the trajectory it renders, the hand-derived expectation and the tokenizer."""
    if case == "agentflan":
        return AgentFlanTemplate(), CONVERSATION, EXPECTED_AGENTFLAN, CharTokenizer()
    if case == "llama2":
        return Llama2Template(), CONVERSATION, EXPECTED_LLAMA2, CharTokenizer()
    if case == "llama2-consecutive":
        return Llama2Template(), CONSECUTIVE, EXPECTED_LLAMA2_CONSECUTIVE, CharTokenizer()
    pytest.importorskip("transformers")
    from agentflan.formats.jinja import AGENTFLAN_JINJA, LLAMA2_JINJA
    from agentflan.training.models import CHATML

    text_traj = text_conversation(CONVERSATION)
    chat_template, traj, expected = {
        "hf-tools": (TOOL_TEMPLATE, CONVERSATION, EXPECTED_HF_TOOLS),
        "hf-chatml": (CHATML, text_traj, EXPECTED_HF_CHATML),
        "hf-agentflan-jinja": (AGENTFLAN_JINJA, text_traj, EXPECTED_HF_AGENTFLAN_JINJA),
        "hf-llama2-jinja": (LLAMA2_JINJA, text_traj, EXPECTED_HF_LLAMA2_JINJA),
    }[case]
    tok = _hf_tokenizer(chat_template)
    return HFTemplate(tok), traj, expected, tok


def check_exact(template: ChatTemplate, traj: Trajectory, expected: str, tokenizer: object) -> None:
    """The rendering, its trained characters and every token's label equal the expectation."""
    text, flags = unmark(expected)
    encoded = encode(traj, template, tokenizer)
    msgs, tools, _ = training_view(traj, template)
    rendered = "".join(s for s, _ in template.render(msgs, tools))
    assert rendered == text
    ids = list(encoded.input_ids)
    if template.add_bos and getattr(tokenizer, "bos_token_id", None) is not None:
        assert ids[0] == tokenizer.bos_token_id and encoded.labels[0] == IGNORE  # type: ignore[attr-defined]
        ids = ids[1:]
    labels = encoded.labels[len(encoded.labels) - len(ids):]
    pieces = [tokenizer.decode([i]) for i in ids]  # type: ignore[attr-defined]
    assert "".join(pieces) == text
    at = 0
    for k, (tid, piece, got) in enumerate(zip(ids, pieces, labels, strict=True)):
        span = flags[at:at + len(piece)]
        # no token straddles trained and untrained text, and a token is trained exactly when its text is
        assert all(span) or not any(span), f"token {k} {piece!r} straddles a trained span"
        assert got == (tid if any(span) else IGNORE), f"token {k} ({text[at:][:30]!r}...): label {got}"
        at += len(piece)


@pytest.mark.parametrize("case", cases())
def test_masks_are_exact_token_by_token(case):
    check_exact(*template_and_expectation(case))


@pytest.mark.parametrize("case", ["agentflan", "llama2"])
def test_fixed_templates_exact_with_a_real_tokenizer(case):
    """The same expectation, through a trained BPE tokenizer whose tokens span several characters."""
    pytest.importorskip("transformers")
    from agentflan.formats.jinja import AGENTFLAN_JINJA

    template, traj, expected, _ = template_and_expectation(case)
    check_exact(template, traj, expected, _hf_tokenizer(AGENTFLAN_JINJA))


class _Mutant(ChatTemplate):
    """A template that trains only one of the trained turns (the first or the last)."""

    def __init__(self, real: ChatTemplate, keep: str) -> None:
        self.real, self.keep = real, keep
        self.name = real.name  # type: ignore[misc]
        self.add_bos = real.add_bos  # type: ignore[misc]

    def render(self, messages, tools=None, *, add_generation_prompt=False) -> list[Segment]:
        segs = self.real.render(messages, tools, add_generation_prompt=add_generation_prompt)
        runs: list[int] = []  # index of the trained run each segment belongs to (-1: untrained)
        run = -1
        for k, (_, trained) in enumerate(segs):
            if trained and (k == 0 or not segs[k - 1][1]):
                run += 1
            runs.append(run if trained else -1)
        chosen = 0 if self.keep == "first" else run
        return [(s, t and r == chosen) for (s, t), r in zip(segs, runs, strict=True)]


@pytest.mark.parametrize("keep", ["first", "last"])
@pytest.mark.parametrize("case", cases())
def test_mutants_are_caught(case, keep):
    """A template that trains only the first (or only the last) assistant turn fails the check."""
    template, traj, expected, tok = template_and_expectation(case)
    with pytest.raises(AssertionError):
        check_exact(_Mutant(template, keep), traj, expected, tok)
