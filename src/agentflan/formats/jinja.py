"""Jinja versions of the fixed templates, saved with trained tokenizers so that serving stacks
(`transformers`, vLLM, `transformers serve`) render prompts exactly as training did. Tests check
that each renders the same text as `agentflan.formats.templates`."""

from __future__ import annotations

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


def jinja_for(template: str) -> str | None:
    """The Jinja template to save for the template named `template` (its `jinja` attribute; None:
    the tokenizer keeps its own)."""
    from agentflan.formats.templates import TEMPLATES  # it imports this module's texts

    return TEMPLATES.get(template).jinja
