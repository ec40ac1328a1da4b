"""Batches with a block-diagonal causal mask built from `seq_lengths` (packed or not)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentflan.training.masking import IGNORE


@dataclass
class BlockCausalCollator:
    """Pads a batch so that a token attends only to earlier tokens of its own sample.

    Default (`block_mask=False`): position ids restart at 0 for every sample and no 2D mask is
    passed, so transformers builds the block-diagonal causal mask itself from the position ids
    (SDPA and eager on CPU) or uses the variable-length kernels (flash attention on GPU): the
    padding-free path, with no quadratic mask in memory. `block_mask=True` passes an explicit 4D
    boolean mask instead, for models that do not read packed position ids. Padding positions attend
    to themselves only and are never trained. Rows without `seq_lengths` are one sample.

    Eager attention adds the mask to the attention scores (a boolean mask would add 1 to the allowed
    positions and mask nothing), so with `mask_dtype` set the 4D mask is additive instead: 0 where
    attention is allowed, the dtype's minimum elsewhere, in the model's dtype.
    """

    pad_token_id: int
    block_mask: bool = False
    mask_dtype: Any = None
    """A torch float dtype: give the 4D mask as additive floats (for eager attention)."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        n = len(features)
        ids = torch.full((n, width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((n, width), IGNORE, dtype=torch.long)
        pos = torch.zeros((n, width), dtype=torch.long)
        caps = torch.zeros((n, width), dtype=torch.long) if "capabilities" in features[0] else None
        mask = torch.zeros((n, 1, width, width), dtype=torch.bool) if self.block_mask else None
        causal = torch.ones((width, width), dtype=torch.bool).tril() if self.block_mask else None
        for r, f in enumerate(features):
            length = len(f["input_ids"])
            ids[r, :length] = torch.tensor(f["input_ids"])
            labels[r, :length] = torch.tensor(f["labels"])
            if caps is not None:  # each token's capability (training/capability_loss.py), padded like labels
                caps[r, :length] = torch.tensor(f["capabilities"])
            lengths = f.get("seq_lengths") or [length]
            start = 0
            for sl in lengths:
                if mask is not None and causal is not None:
                    mask[r, 0, start:start + sl, start:start + sl] = causal[:sl, :sl]
                pos[r, start:start + sl] = torch.arange(sl)
                start += sl
            if mask is not None:
                idx = torch.arange(length, width)
                mask[r, 0, idx, idx] = True
        batch = {"input_ids": ids, "labels": labels, "position_ids": pos}
        if caps is not None:
            batch["capabilities"] = caps
        if mask is not None and self.mask_dtype is not None:
            additive = torch.zeros(mask.shape, dtype=self.mask_dtype)
            batch["attention_mask"] = additive.masked_fill(~mask, torch.finfo(self.mask_dtype).min)
        elif mask is not None:
            batch["attention_mask"] = mask
        return batch
