"""From rendered segments to `input_ids` and `labels` (-100 everywhere but the trained spans).

The tokenizer's offsets map every token to its characters; a token is trained when any of its
characters lies in a trained segment, so stop markers glued to the last word are trained too. A
sample left with no trained token after truncation is never passed on silently: it raises
`NoTrainableTokens` (the caller counts it as a drop).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from agentflan.errors import AgentflanError
from agentflan.formats.templates import ChatTemplate, Segment, with_tools_in_system
from agentflan.schema import Trajectory

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


def encode_segments(segments: list[Segment], tokenizer: Any, *, max_length: int | None = None,
                    add_bos: bool = False) -> Encoded:
    """Tokenize `segments` as one text; label exactly the tokens inside trained segments."""
    text = "".join(s for s, _ in segments)
    starts, trained = [], []
    pos = 0
    for s, t in segments:
        starts.append(pos)
        trained.append(t)
        pos += len(s)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels: list[int] = []
    for tid, (a, b) in zip(ids, enc["offset_mapping"], strict=True):
        hit = False
        if b > a:
            k = bisect_right(starts, a) - 1
            while k < len(starts) and starts[k] < b:
                if trained[k] and starts[k] + len(segments[k][0]) > a:
                    hit = True
                    break
                k += 1
        labels.append(tid if hit else IGNORE)
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
    """Render and tokenize one trajectory with its loss mask."""
    messages = traj.messages if template.name == "hf" else with_tools_in_system(traj.messages, traj.tools)
    segments = template.render(messages, traj.tools or None)
    return encode_segments(segments, tokenizer, max_length=max_length, add_bos=template.add_bos)


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
