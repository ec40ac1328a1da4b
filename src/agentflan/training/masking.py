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
    ids: list[int] = []
    flags: list[bool] = []
    for piece, (_, trained) in zip(token_ids(tokenizer, [text for text, _ in pieces]), pieces, strict=True):
        ids += piece
        flags += [trained] * len(piece)
    return ids, flags


def encode_segments(segments: list[Segment], tokenizer: Any, *, max_length: int | None = None,
                    add_bos: bool = False) -> Encoded:
    """Tokenize `segments` (see the module docstring); label exactly the tokens of trained segments."""
    out = encode_segments_batch([segments], tokenizer, max_length=max_length, add_bos=add_bos)[0]
    if isinstance(out, NoTrainableTokens):
        raise out
    return out


def encode_segments_batch(batch: list[list[Segment]], tokenizer: Any, *, max_length: int | None = None,
                          add_bos: bool = False) -> list[Encoded | NoTrainableTokens]:
    """`encode_segments` of many samples: the segments of all of them (independent strings, each
    tokenized on its own as ever) in one call of the tokenizer's batch API, parallel in its Rust
    core. A sample without a trained token comes back as its `NoTrainableTokens`, in its place."""
    pieces = [[(text, trained) for text, trained in segments if text] for segments in batch]
    flat = token_ids(tokenizer, [text for p in pieces for text, _ in p])
    bos = tokenizer.bos_token_id if add_bos else None
    out: list[Encoded | NoTrainableTokens] = []
    k = 0
    for p in pieces:
        ids: list[int] = [] if bos is None else [bos]
        labels: list[int] = [] if bos is None else [IGNORE]
        trained = 0
        for _, is_trained in p:
            piece = flat[k]
            k += 1
            ids += piece
            if is_trained:
                labels += piece
                trained += len(piece)
            else:
                labels += [IGNORE] * len(piece)
        truncated = max_length is not None and len(ids) > max_length
        if truncated:
            ids, labels = ids[:max_length], labels[:max_length]
            trained = len(labels) - labels.count(IGNORE)
        if trained == 0:
            why = "after truncation to max_length" if truncated else "(no message has loss=true)"
            out.append(NoTrainableTokens(f"no trained token {why}"))
        else:
            out.append(Encoded(ids, labels, truncated))
    return out


def token_ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """`tokenizer(texts, add_special_tokens=False)["input_ids"]` (equal texts share one list: the
    caller copies, never changes it).

    Each distinct text is tokenized once: segments repeat across samples (template markers,
    system prompts with their tools, format instructions). A fast tokenizer's Rust core is
    called directly (without offsets, when it can) when that is exactly what the call would do
    (no truncation or padding configured on it, special tokens split as it says, checked once
    per tokenizer against its own call): building the `BatchEncoding` (attention masks and
    all) costs about as much as the tokenization.
    """
    if not texts:
        return []
    unique = list(dict.fromkeys(texts))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and _direct_ok(tokenizer, backend, unique[0]):
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        ids = [e.ids for e in encode(unique, add_special_tokens=False)]
    else:
        ids = list(tokenizer(unique, add_special_tokens=False)["input_ids"])
    if len(unique) == len(texts):
        return ids
    by_text = dict(zip(unique, ids, strict=True))
    return [by_text[t] for t in texts]


_DIRECT: dict[int, tuple[Any, bool]] = {}


def _direct_ok(tokenizer: Any, backend: Any, probe: str) -> bool:
    if backend.truncation is not None or backend.padding is not None:
        return False
    if getattr(backend, "encode_special_tokens", False) != bool(getattr(tokenizer, "split_special_tokens", False)):
        return False
    known = _DIRECT.get(id(tokenizer))
    if known is None or known[0] is not tokenizer:
        probe = f"{probe} <|im_end|></s>[/INST]"  # and a few special tokens, split or not
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        same = list(tokenizer([probe], add_special_tokens=False)["input_ids"][0]) == \
            encode([probe], add_special_tokens=False)[0].ids
        _DIRECT.clear()  # one tokenizer at a time in practice; never a stale id
        _DIRECT[id(tokenizer)] = known = (tokenizer, same)
    return known[1]


def render(traj: Trajectory, template: ChatTemplate) -> tuple[list[Segment], list[Message], str]:
    """The trained / untrained segments of `traj` as `encode` renders them, the messages they
    render (`protocols.training_view`) and the protocol."""
    messages, tools, protocol = training_view(traj, template)
    return template.render(messages, tools), messages, protocol


def encode(traj: Trajectory, template: ChatTemplate, tokenizer: Any, *, max_length: int | None = None) -> Encoded:
    """Render (protocol, then template: `protocols.training_view`) and tokenize one trajectory
    with its loss mask."""
    return encode_segments(render(traj, template)[0], tokenizer, max_length=max_length, add_bos=template.add_bos)


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
