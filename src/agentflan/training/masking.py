"""From rendered segments to `input_ids` and `labels` (-100 everywhere but the trained spans).

The tokenizer's offsets map every token to its characters; a token is trained when any of its
characters lies in a trained segment, so stop markers glued to the last word are trained too. A
sample left with no trained token after truncation is never passed on silently: it raises
`NoTrainableTokens` (the caller counts it as a drop).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter, lt
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
    out = encode_segments_batch([segments], tokenizer, max_length=max_length, add_bos=add_bos)[0]
    if isinstance(out, NoTrainableTokens):
        raise out
    return out


def encode_segments_batch(batch: list[list[Segment]], tokenizer: Any, *, max_length: int | None = None,
                          add_bos: bool = False) -> list[Encoded | NoTrainableTokens]:
    """`encode_segments` of many samples at once: one call of the tokenizer's batch API (parallel
    in its Rust core), labels from the character offsets of the tokens. A sample without a
    trained token comes back as its `NoTrainableTokens` error, in its place."""
    texts = ["".join(s for s, _ in segments) for segments in batch]
    bos = tokenizer.bos_token_id if add_bos else None
    out: list[Encoded | NoTrainableTokens] = []
    for segments, (ids, offsets) in zip(batch, _tokenize(tokenizer, texts), strict=True):
        token_ids = list(ids)
        labels = _labels(segments, token_ids, offsets)
        if bos is not None:
            token_ids, labels = [bos, *token_ids], [IGNORE, *labels]
        truncated = False
        if max_length is not None and len(token_ids) > max_length:
            token_ids, labels, truncated = token_ids[:max_length], labels[:max_length], True
        if labels.count(IGNORE) == len(labels):
            why = "after truncation to max_length" if truncated else "(no message has loss=true)"
            out.append(NoTrainableTokens(f"no trained token {why}"))
        else:
            out.append(Encoded(token_ids, labels, truncated))
    return out


def _labels(segments: list[Segment], ids: list[int], offsets: list[tuple[int, int]]) -> list[int]:
    """The label of each token: its id when it has characters (end > start) and a trained segment
    [s, e) overlaps them (s < end and e > start: it holds one of its characters, or is an empty
    segment strictly inside it), else IGNORE.

    Token offsets come in text order in practice: then the tokens a segment overlaps are one
    slice, found by bisection, and the labels are a few slice copies. Otherwise (any order),
    token by token with arrays.
    """
    starts = list(map(itemgetter(0), offsets))
    ends = list(map(itemgetter(1), offsets))
    if starts != sorted(starts) or ends != sorted(ends):
        return _labels_any_order(segments, ids, starts, ends)
    labels = [IGNORE] * len(ids)
    pos = 0
    for text, trained in segments:
        end = pos + len(text)
        if trained:
            first, stop = bisect_right(ends, pos), bisect_left(starts, end)  # end > s, start < e
            labels[first:stop] = ids[first:stop]
        pos = end
    if not all(map(lt, starts, ends)):  # a token without characters is never trained
        for j, (a, b) in enumerate(offsets):
            if b <= a:
                labels[j] = IGNORE
    return labels


def _labels_any_order(segments: list[Segment], ids: list[int], starts: list[int], ends: list[int]) -> list[int]:
    import numpy as np

    lengths = np.fromiter((len(s) for s, _ in segments), dtype=np.int64, count=len(segments))
    trained = np.fromiter((t for _, t in segments), dtype=bool, count=len(segments))
    seg_starts = np.cumsum(lengths) - lengths
    before = np.concatenate(([0], np.cumsum(trained)))  # trained segments before index k
    a, b = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    first = np.searchsorted(seg_starts, a, side="right") - 1  # the segment holding character a
    last = np.searchsorted(seg_starts, b, side="left") - 1  # the last segment starting before b
    first_c = np.clip(first, 0, None)
    hit = trained[first_c] & (seg_starts[first_c] + lengths[first_c] > a) & (first >= 0)
    hit |= before[last + 1] - before[first_c + 1] > 0
    hit &= b > a
    labels: list[int] = np.where(hit, np.asarray(ids, dtype=np.int64), IGNORE).tolist()
    return labels


CHUNK = 64
"""Texts per tokenizer call: the next chunk is tokenized while this one is labelled."""


def _tokenize(tokenizer: Any, texts: list[str]) -> Iterator[tuple[list[int], list[tuple[int, int]]]]:
    """Ids and character offsets of each text, without special tokens, in order.

    A fast tokenizer's Rust core is called directly when that is exactly what `tokenizer(...)`
    would do (no truncation or padding configured on it, special tokens split as it says,
    checked once per tokenizer against its own call): building `BatchEncoding` costs as much as
    the labels. Otherwise, the tokenizer's call. Chunk by chunk, the next one tokenized on a
    thread (the Rust core releases the GIL) while the caller labels the current one.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if texts and backend is not None and _direct_ok(tokenizer, backend, texts[0]):
        def encode(chunk: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
            encs = backend.encode_batch(chunk, add_special_tokens=False)
            return [(e.ids, e.offsets) for e in encs]
    else:
        def encode(chunk: list[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
            enc = tokenizer(chunk, add_special_tokens=False, return_offsets_mapping=True)
            return list(zip(enc["input_ids"], enc["offset_mapping"], strict=True))
    chunks = [texts[i:i + CHUNK] for i in range(0, len(texts), CHUNK)]
    if len(chunks) <= 1:
        yield from (encode(chunks[0]) if chunks else [])
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        ahead = pool.submit(encode, chunks[0])
        for k in range(len(chunks)):
            done = ahead.result()
            if k + 1 < len(chunks):
                ahead = pool.submit(encode, chunks[k + 1])
            yield from done


_DIRECT: dict[int, tuple[Any, bool]] = {}


def _direct_ok(tokenizer: Any, backend: Any, probe: str) -> bool:
    if backend.truncation is not None or backend.padding is not None:
        return False
    if getattr(backend, "encode_special_tokens", False) != bool(getattr(tokenizer, "split_special_tokens", False)):
        return False
    known = _DIRECT.get(id(tokenizer))
    if known is None or known[0] is not tokenizer:
        theirs = tokenizer(probe, add_special_tokens=False, return_offsets_mapping=True)
        ours = backend.encode(probe, add_special_tokens=False)
        same = list(theirs["input_ids"]) == ours.ids and [tuple(o) for o in theirs["offset_mapping"]] == ours.offsets
        _DIRECT.clear()  # one tokenizer at a time in practice; never a stale id
        _DIRECT[id(tokenizer)] = known = (tokenizer, same)
    return known[1]


def render(traj: Trajectory, template: ChatTemplate) -> list[Segment]:
    """The trained / untrained segments of `traj` as `encode` renders them."""
    messages = traj.messages if template.name == "hf" else with_tools_in_system(traj.messages, traj.tools)
    return template.render(messages, traj.tools or None)


def encode(traj: Trajectory, template: ChatTemplate, tokenizer: Any, *, max_length: int | None = None) -> Encoded:
    """Render and tokenize one trajectory with its loss mask."""
    return encode_segments(render(traj, template), tokenizer, max_length=max_length, add_bos=template.add_bos)


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
