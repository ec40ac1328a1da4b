"""From rendered segments to `input_ids` and `labels` (-100 everywhere but the trained spans).

Every segment a template renders is tokenized on its own and the pieces are concatenated, so no
token ever straddles a segment boundary. Two things follow: a token is trained exactly when its
segment is, and a serving prompt (the segments up to the generation prompt, `prompt_ids`) is
token for token a prefix of what training showed, ending exactly where the trained reply begins.
Tokenizing whole texts instead, SmolLM2's BPE merges `[/INST]`'s trailing space into the reply's
first word and `\n ` across turns: the model would learn to start its reply with a token that the
serving prompt splits differently. Segment boundaries never depend on loss flags. A sample left with no trained
token after truncation is never passed on silently: it raises `NoTrainableTokens` (the caller
counts it as a drop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentflan.errors import AgentflanError
from agentflan.formats.protocols import training_view
from agentflan.formats.templates import ChatTemplate, Segment
from agentflan.schema import Message, ToolSpec, Trajectory

IGNORE = -100


class NoTrainableTokens(AgentflanError):
    pass


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def trained(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def tokenize_segments(segments: list[Segment], tokenizer: Any) -> tuple[list[int], list[bool]]:
    """Token ids of the segments, each tokenized on its own, and whether each token is trained."""
    pieces = [(text, trained) for text, trained in segments if text]
    if not pieces:
        return [], []
    batch = tokenizer([text for text, _ in pieces], add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    flags: list[bool] = []
    for piece, (_, trained) in zip(batch, pieces, strict=True):
        ids += piece
        flags += [trained] * len(piece)
    return ids, flags


def encode_segments(segments: list[Segment], tokenizer: Any, *, max_length: int | None = None,
                    add_bos: bool = False) -> Encoded:
    """Tokenize `segments` (see the module docstring); label exactly the tokens of trained segments."""
    ids, flags = tokenize_segments(segments, tokenizer)
    labels = [tid if trained else IGNORE for tid, trained in zip(ids, flags, strict=True)]
    if add_bos and tokenizer.bos_token_id is not None:
        ids, labels = [tokenizer.bos_token_id, *ids], [IGNORE, *labels]
    truncated = False
    if max_length is not None and len(ids) > max_length:
        ids, labels, truncated = ids[:max_length], labels[:max_length], True
    out = Encoded(ids, labels, truncated)
    if out.trained == 0:
        why = "after truncation to max_length" if truncated else "(no message has loss=true)"
        raise NoTrainableTokens(f"no trained token {why}")
    return out


def encode(traj: Trajectory, template: ChatTemplate, tokenizer: Any, *, max_length: int | None = None) -> Encoded:
    """Render (protocol, then template: `protocols.training_view`) and tokenize one trajectory
    with its loss mask."""
    messages, tools, _ = training_view(traj, template)
    segments = template.render(messages, tools)
    return encode_segments(segments, tokenizer, max_length=max_length, add_bos=template.add_bos)


def prompt_ids(template: ChatTemplate, tokenizer: Any, messages: list[Message], tools: list[ToolSpec] | None = None) -> list[int]:
    """The token ids of a generation prompt, tokenized exactly as `encode` tokenizes training data
    (so that serving prompts are token-for-token prefixes of what training showed)."""
    ids, _ = tokenize_segments(template.render(messages, tools, add_generation_prompt=True), tokenizer)
    if template.add_bos and tokenizer.bos_token_id is not None:
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def token_runs(encoded: Encoded) -> list[tuple[list[int], bool]]:
    """Consecutive tokens grouped by whether they are trained."""
    runs: list[tuple[list[int], bool]] = []
    for tid, label in zip(encoded.input_ids, encoded.labels, strict=True):
        trained = label != IGNORE
        if runs and runs[-1][1] == trained:
            runs[-1][0].append(tid)
        else:
            runs.append(([tid], trained))
    return runs


def show_trained(encoded: Encoded, tokenizer: Any, open_mark: str = "⟦", close_mark: str = "⟧") -> str:
    """The decoded sample with trained token runs wrapped in markers (for `data inspect --tokenizer`)."""
    return "".join(f"{open_mark}{tokenizer.decode(ids)}{close_mark}" if trained else tokenizer.decode(ids)
                   for ids, trained in token_runs(encoded))
