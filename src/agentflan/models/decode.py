"""Batched greedy decoding with a prefix cache: agent conversations are re-sent every turn.

An episode's prompt at turn k+1 starts with its prompt at turn k (and T-FLAN's elicit turns grow a
prompt by a few dozen tokens per generation), and every episode of a run starts with the same
system prompt. Recomputing those prefixes dominates CPU evaluation. `PrefixCache` keeps the
key/value states of finished sequences; `greedy` finds, for every prompt of a batch, the cached
sequence sharing its longest prefix, prefills only the rest, and decodes the whole batch in
lockstep:

    per sequence: [pad ... | cached prefix | pad ... | new prompt tokens ] + generated tokens

Padding slots are masked out, position ids are the sequence's own, so each sequence computes
exactly what it would compute alone (tests compare with `model.generate`). Memory is bounded by
`max_bytes`; the least recently used sequences are dropped first.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any


@dataclass
class _Entry:
    tokens: Any  # 1-D LongTensor
    kv: list[tuple[Any, Any]]  # per layer (keys, values): [heads, length, dim]
    nbytes: int


class PrefixCache:
    """Key/value states of recent sequences, looked up by longest common token prefix."""

    def __init__(self, max_bytes: int = 2 * 2**30) -> None:
        self.max_bytes = max_bytes
        self.entries: OrderedDict[int, _Entry] = OrderedDict()
        self.bytes = 0
        self._next = 0
        self.hits = 0
        self.reused_tokens = 0

    def lookup(self, ids: Any) -> tuple[_Entry | None, int]:
        """The entry sharing the longest prefix with `ids` and that prefix's length."""
        best, best_n, best_key = None, 0, -1
        for key, e in self.entries.items():
            m = min(len(e.tokens), len(ids))
            if m <= best_n or e.tokens[0] != ids[0]:
                continue
            diff = (e.tokens[:m] != ids[:m]).nonzero()
            n = int(diff[0]) if len(diff) else m
            if n > best_n:
                best, best_n, best_key = e, n, key
        if best is not None:
            self.entries.move_to_end(best_key)
            self.hits += 1
            self.reused_tokens += best_n
        return best, best_n

    def add(self, tokens: Any, kv: list[tuple[Any, Any]]) -> None:
        nbytes = sum(k.element_size() * k.nelement() + v.element_size() * v.nelement() for k, v in kv)
        # a sequence that extends a cached one replaces it
        for key, e in list(self.entries.items()):
            if len(e.tokens) <= len(tokens) and bool((tokens[: len(e.tokens)] == e.tokens).all()):
                self.bytes -= e.nbytes
                del self.entries[key]
        self.entries[self._next] = _Entry(tokens, kv, nbytes)
        self._next += 1
        self.bytes += nbytes
        while self.bytes > self.max_bytes and len(self.entries) > 1:
            _, old = self.entries.popitem(last=False)
            self.bytes -= old.nbytes


def _forward_kwargs(model: Any) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def greedy(model: Any, prompts: list[list[int]], *, max_new_tokens: int, pad_id: int, stop_ids: set[int],
           stopped: Any, cache: PrefixCache | None, device: str = "cpu") -> list[list[int]]:
    """Generate greedily for a batch of token-id prompts; returns the new tokens of each.

    Args:
        stop_ids: Tokens that end a sequence (end of turn, EOS); not included in the output.
        stopped: `stopped(i, new_tokens) -> bool`, called after each step (stop strings).
        cache: Prefix cache to read from and to fill (None: no reuse).
    """
    import torch
    from transformers import DynamicCache

    b = len(prompts)
    ids = [torch.tensor(p, dtype=torch.long) for p in prompts]
    found = [cache.lookup(t) if cache is not None else (None, 0) for t in ids]
    reuse = [min(n, len(t) - 1) for (_, n), t in zip(found, ids, strict=True)]  # always prefill >= 1 token
    past = max(reuse)
    suffix = max(len(t) - r for t, r in zip(ids, reuse, strict=True))
    kv_cache = DynamicCache(config=model.config)
    if past:
        layers = len(next(e for e, _ in found if e is not None).kv)
        for layer in range(layers):
            ks, vs = [], []
            for (entry, _), r in zip(found, reuse, strict=True):
                if entry is not None and r:
                    k, v = entry.kv[layer][0][:, :r], entry.kv[layer][1][:, :r]
                else:
                    ref = next(e for e, _ in found if e is not None).kv[layer][0]
                    k = v = ref.new_zeros((ref.shape[0], 0, ref.shape[2]))
                pad = past - k.shape[1]
                ks.append(torch.nn.functional.pad(k, (0, 0, pad, 0)))
                vs.append(torch.nn.functional.pad(v, (0, 0, pad, 0)))
            kv_cache.update(torch.stack(ks).to(device), torch.stack(vs).to(device), layer)
    inp = torch.full((b, suffix), pad_id, dtype=torch.long)
    mask = torch.zeros((b, past + suffix), dtype=torch.long)
    pos = torch.zeros((b, suffix), dtype=torch.long)
    for i, (t, r) in enumerate(zip(ids, reuse, strict=True)):
        s = len(t) - r
        inp[i, suffix - s:] = t[r:]
        mask[i, past - r: past] = 1
        mask[i, past + suffix - s:] = 1
        pos[i, suffix - s:] = torch.arange(r, len(t))
    name = _forward_kwargs(model)
    new: list[list[int]] = [[] for _ in range(b)]
    done = [False] * b
    lengths = [len(t) for t in ids]
    step_inp, step_pos = inp, pos
    with torch.no_grad():
        for _ in range(max_new_tokens):
            out = model(input_ids=step_inp.to(device), attention_mask=mask.to(device), position_ids=step_pos.to(device),
                        use_cache=True, logits_to_keep=1, **{name: kv_cache})
            nxt = out.logits[:, -1, :].argmax(-1).tolist()
            for i, tok in enumerate(nxt):
                if done[i]:
                    continue
                if tok in stop_ids:
                    done[i] = True
                    continue
                new[i].append(tok)
                if stopped(i, new[i]):
                    done[i] = True
            if all(done):
                break
            step_inp = torch.tensor([[tok if not d else pad_id] for tok, d in zip(nxt, done, strict=True)])
            step_pos = torch.tensor([[lengths[i] + len(new[i]) - (0 if done[i] else 1)] for i in range(b)])
            mask = torch.cat([mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
    if cache is not None:
        _store(cache, kv_cache, ids, reuse, new, past, suffix)
    return new


def _store(cache: PrefixCache, kv_cache: Any, ids: list[Any], reuse: list[int], new: list[list[int]], past: int,
           suffix: int) -> None:
    """Keep every sequence's states for the tokens it really fed (prompt and generated, pads cut out)."""
    import torch

    layers = kv_cache.layers if hasattr(kv_cache, "layers") else None
    if layers is None:
        return
    total = layers[0].keys.shape[2]
    for i, (t, r) in enumerate(zip(ids, reuse, strict=True)):
        s = len(t) - r
        fed_new = max(0, min(len(new[i]) - 1, total - past - suffix))  # the last token was never fed
        sel = torch.cat([torch.arange(past - r, past), torch.arange(past + suffix - s, past + suffix),
                         torch.arange(past + suffix, past + suffix + fed_new)])
        kv = [(layer.keys[i, :, sel].detach().clone(), layer.values[i, :, sel].detach().clone()) for layer in layers]
        tokens = torch.cat([t, torch.tensor(new[i][:fed_new], dtype=torch.long)])
        cache.add(tokens, kv)


def cut_at_stops(text: str, protocol_stops: tuple[str, ...], end_stops: tuple[str, ...]) -> tuple[str, str | None]:
    """`text` up to the first stop; the protocol stop that ended it, if one did.

    Examples:
        >>> cut_at_stops("Thought: x\\nObservation: made up<|im_end|>", ("\\nObservation:",), ("<|im_end|>",))
        ('Thought: x', '\\nObservation:')
    """
    best, which = len(text), None
    for stop in (*protocol_stops, *end_stops):
        if not stop:
            continue
        at = text.find(stop)
        if 0 <= at < best:
            best, which = at, stop
    return text[:best], which if which in protocol_stops else None
