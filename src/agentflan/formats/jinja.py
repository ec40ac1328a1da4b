"""Jinja versions of the fixed templates, saved with trained tokenizers so that serving stacks
(`transformers`, vLLM, `transformers serve`) render prompts exactly as training did. Each template
carries its own (`ChatTemplate.jinja`, beside its Python rendering in `agentflan.formats.templates`);
tests check that each renders the same text."""

from __future__ import annotations

from agentflan.formats.templates import AGENTFLAN_JINJA, LLAMA2_JINJA, TEMPLATES

__all__ = ["AGENTFLAN_JINJA", "LLAMA2_JINJA", "jinja_for"]


def jinja_for(template: str) -> str | None:
    """The Jinja template to save for the template named `template` (its `jinja` attribute; None:
    the tokenizer keeps its own)."""
    return TEMPLATES.get(template).jinja
