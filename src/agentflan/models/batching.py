"""Continuous batching for a local transformers model: generations join and leave the running batch
between decoding steps (what `agentflan serve` runs on).

`ContinuousDecoder` keeps one batched key/value cache for every running `Row`. Each `step` feeds
the running rows their last sampled token (one decoding step), then prefills the rows that joined
since the last step and merges their states into the batch (left padding along the sequence
axis; every row has its own position ids and attention mask, so padding changes nothing it
computes), and finally drops the rows that finished (their cache rows are cut out, and columns
that only padding uses are trimmed). A short request therefore leaves as soon as it is done and a
new one starts at the next step, instead of waiting for the longest reply of a static batch.

Each row has its own sampling (greedy, or temperature/top-p from its own seeded generator, so a
seeded request draws the same tokens whatever else is in the batch), its own token limit and its
own stop strings, and may stream its text: `on_text` receives every new piece as soon as it can no
longer be the start of a stop string (and is not half a UTF-8 character).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentflan.client import ContextLimitError
from agentflan.formats.protocols import Prompt


@dataclass
class Sampling:
    """How one row draws its tokens."""

    max_tokens: int
    temperature: float = 0.0
    """0: greedy."""
    top_p: float = 1.0
    seed: int | None = None
    """Seeds the row's own generator (None: a fresh random seed, stored here when the row joins)."""


@dataclass
class Row:
    """One generation: a prompt, how to sample it, and (filled in as it runs) what it generated."""

    prompt: Prompt
    sampling: Sampling
    stops: tuple[str, ...] = ()
    """Strings that end the text (the protocol's and the request's; the template's end of turn is added)."""
    on_text: Callable[[str], None] | None = None
    owner: Any = None
    ids: list[int] = field(default_factory=list)
    new: list[int] = field(default_factory=list)
    tokens: int = 0
    """Tokens generated (the end-of-turn token not counted)."""
    text: str = ""
    finish: str | None = None
    """`stop` (end of turn or a stop string) or `length` (cut at `max_tokens`); None while running."""
    stop: str | None = None
    """The stop string of `stops` that ended the text, if one did."""
    emitted: int = 0
    generator: Any = None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` must wait: the start of a stop string, or an
    incomplete character (the tokenizer decodes half a UTF-8 sequence as U+FFFD)."""
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    n = len(text) - hold
    while n > 0 and text[n - 1] == "\ufffd":
        n -= 1
    return len(text) - n


class ContinuousDecoder:
    """Rows join (`add`) and leave (`remove`, or by finishing) between `step`s of one running batch.

    Args:
        model: A transformers causal LM (in eval mode).
        tokenizer: Its tokenizer (decodes the generated tokens).
        encode: `Prompt -> token ids` (the trained template's rendering).
        pad_id: Fills padding slots (masked out).
        stop_ids: Tokens that end a row (end of turn, EOS); they are not part of its text.
        end_stops: Strings that end every row (end-of-turn markup that is several tokens).
        context: The model's context length (None: unchecked).
    """

    def __init__(self, model: Any, tokenizer: Any, *, encode: Callable[[Prompt], list[int]], pad_id: int,
                 stop_ids: set[int], end_stops: tuple[str, ...], device: str = "cpu",
                 context: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.encode = encode
        self.pad_id = pad_id
        self.stop_ids = stop_ids
        self.end_stops = end_stops
        self.device = device
        self.context = context
        self.rows: list[Row] = []
        self.joining: list[Row] = []
        self.cache: Any = None
        self.mask: Any = None
        self.steps = 0
        self.tokens_generated = 0
        from agentflan.models.decode import _forward_kwargs

        self._cache_kw = _forward_kwargs(model)

    def __len__(self) -> int:
        return len(self.rows) + len(self.joining)

    def add(self, row: Row) -> None:
        """Tokenize `row`'s prompt and queue it to join at the next step. Raises what tokenizing
        raises, or `ContextLimitError` when the prompt leaves no room to generate; `max_tokens` is
        lowered to the room left in the context."""
        import torch

        ids = self.encode(row.prompt)
        if not ids:
            raise ValueError("the prompt renders to no tokens")
        if self.context is not None:
            room = self.context - len(ids)
            if room < 1:
                raise ContextLimitError(f"the prompt has {len(ids)} tokens; the model's context is {self.context}",
                                        url="local", status=400)
            row.sampling.max_tokens = min(row.sampling.max_tokens, room)
        row.ids = ids
        if row.sampling.temperature > 0:
            if row.sampling.seed is None:  # drawn once and kept: the row restarted after a fault draws the same
                row.sampling.seed = int.from_bytes(os.urandom(8), "little")
            row.generator = torch.Generator().manual_seed(row.sampling.seed % 2**63)
        self.joining.append(row)

    def remove(self, row: Row) -> None:
        """Take `row` out (a cancelled request); nothing more is generated for it."""
        if row in self.joining:
            self.joining.remove(row)
        elif row in self.rows:
            row.finish = row.finish or "cancelled"
            self._drop()

    def step(self) -> list[Row]:
        """One decoding step for the running rows, then the joining rows' prefill (their first
        token); the rows that finished in it, which have left the batch."""
        import torch

        finished: list[Row] = []
        with torch.no_grad():
            if self.rows:
                b = len(self.rows)
                inp = torch.tensor([[r.new[-1]] for r in self.rows], dtype=torch.long)
                pos = torch.tensor([[len(r.ids) + len(r.new) - 1] for r in self.rows], dtype=torch.long)
                self.mask = torch.cat([self.mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
                out = self.model(input_ids=inp.to(self.device), attention_mask=self.mask.to(self.device),
                                 position_ids=pos.to(self.device), use_cache=True, logits_to_keep=1,
                                 **{self._cache_kw: self.cache})  # the cache is updated in place
                finished += [r for r, t in zip(self.rows, self._sample(out.logits[:, -1, :], self.rows), strict=True)
                             if self._accept(r, t)]
            if self.joining:
                finished += self._prefill()
        self.steps += 1
        if finished:
            self._drop()
        return finished

    def _prefill(self) -> list[Row]:
        import torch
        from transformers import DynamicCache

        rows, self.joining = self.joining, []
        width = max(len(r.ids) for r in rows)
        inp = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            n = len(r.ids)
            inp[i, width - n:] = torch.tensor(r.ids, dtype=torch.long)
            mask[i, width - n:] = 1
            pos[i, width - n:] = torch.arange(n)
        cache = DynamicCache(config=self.model.config)
        out = self.model(input_ids=inp.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=pos.to(self.device), use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
        tokens = self._sample(out.logits[:, -1, :], rows)
        self._merge(rows, cache, mask)
        return [r for r, t in zip(rows, tokens, strict=True) if self._accept(r, t)]

    def _merge(self, rows: list[Row], cache: Any, mask: Any) -> None:
        """Append `rows` (with their states `cache` and `mask`) to the running batch."""
        import torch
        from transformers import DynamicCache

        if self.cache is None:
            self.rows, self.cache, self.mask = list(rows), cache, mask
            return
        width = max(self.mask.shape[1], mask.shape[1])

        def left(t: Any, axis_from_end: int) -> Any:
            pad = width - t.shape[-axis_from_end]
            return torch.nn.functional.pad(t, (0, 0) * (axis_from_end - 1) + (pad, 0)) if pad else t

        merged = DynamicCache(config=self.model.config)
        for i, (old, new) in enumerate(zip(self.cache.layers, cache.layers, strict=True)):
            merged.update(torch.cat([left(old.keys, 2), left(new.keys, 2)]),
                          torch.cat([left(old.values, 2), left(new.values, 2)]), i)
        self.cache = merged
        self.mask = torch.cat([left(self.mask, 1), left(mask, 1)])
        self.rows += rows

    def _drop(self) -> None:
        """Cut finished rows out of the batch (and the padding columns no row uses any more)."""
        import torch
        from transformers import DynamicCache

        keep = [i for i, r in enumerate(self.rows) if r.finish is None]
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache, self.mask = [], None, None
            return
        idx = torch.tensor(keep, dtype=torch.long)
        mask = self.mask[idx]
        first = int(mask.any(0).nonzero()[0])
        kept = DynamicCache(config=self.model.config)
        for i, layer in enumerate(self.cache.layers):
            at = idx.to(layer.keys.device)
            kept.update(layer.keys[at, :, first:], layer.values[at, :, first:], i)
        self.cache, self.mask = kept, mask[:, first:]
        self.rows = [self.rows[i] for i in keep]

    def _sample(self, logits: Any, rows: list[Row]) -> list[int]:
        import torch

        tokens = logits.argmax(-1).tolist()
        for i, r in enumerate(rows):
            s = r.sampling
            if s.temperature <= 0:
                continue
            scores = logits[i].float().cpu() / s.temperature
            probs = torch.softmax(scores, -1)
            if s.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                outside = sorted_p.cumsum(-1) - sorted_p >= s.top_p  # keep the smallest set reaching top_p
                sorted_p[outside] = 0.0
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            tokens[i] = int(torch.multinomial(probs, 1, generator=r.generator))
        return [int(t) for t in tokens]

    def _accept(self, row: Row, token: int) -> bool:
        """Add `token` to `row`; True when the row is done."""
        from agentflan.models.decode import cut_at_stops

        if token in self.stop_ids:
            row.finish = "stop"
        else:
            row.new.append(token)
            row.tokens += 1
            self.tokens_generated += 1
            text = self.tokenizer.decode(row.new, skip_special_tokens=False)
            cut, which = cut_at_stops(text, row.stops, self.end_stops)
            if len(cut) < len(text) or which is not None:
                row.text, row.stop, row.finish = cut, which, "stop"
            else:
                row.text = text
                if len(row.new) >= row.sampling.max_tokens:
                    row.finish = "length"
        if row.on_text is not None:
            end = len(row.text) if row.finish else len(row.text) - _held_back(row.text, (*row.stops, *self.end_stops))
            if end > row.emitted:
                row.on_text(row.text[row.emitted:end])
                row.emitted = end
        return row.finish is not None
