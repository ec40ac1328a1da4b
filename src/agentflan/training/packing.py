"""Packing tokenized samples into fixed-size rows without attention across samples.

Best-fit-decreasing puts each sample (longest first) into the row with the least room that still
fits it. Each row keeps `seq_lengths`, and `position_ids` restart at 0 for every sample; the
collator turns `seq_lengths` into a block-diagonal causal mask, so a token never attends to
another sample (on CPU and with SDPA/eager attention; flash-attention paths use the position ids).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any


@dataclass
class PackStats:
    samples: int
    rows: int
    tokens: int
    max_length: int

    @property
    def efficiency(self) -> float:
        """Share of row capacity that holds real tokens (1 - padding waste)."""
        return self.tokens / (self.rows * self.max_length) if self.rows else 0.0


def pack(samples: list[dict[str, Any]], max_length: int) -> tuple[list[dict[str, Any]], PackStats]:
    """Pack samples (`input_ids`, `labels`) into rows of at most `max_length` tokens.

    Examples:
        >>> rows, st = pack([{"input_ids": [1] * 3, "labels": [1] * 3}, {"input_ids": [2] * 5, "labels": [2] * 5},
        ...                  {"input_ids": [3] * 2, "labels": [3] * 2}], 8)
        >>> [r["seq_lengths"] for r in rows], st.rows
        ([[5, 3], [2]], 2)
    """
    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i]["input_ids"]), i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row index), sorted
    for i in order:
        n = len(samples[i]["input_ids"])
        if n > max_length:
            raise ValueError(f"sample {i} has {n} tokens, more than max_length {max_length}: truncate first")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, r = free.pop(k)
            rows[r].append(i)
            bisect.insort(free, (room - n, r))
        else:
            rows.append([i])
            bisect.insort(free, (max_length - n, len(rows) - 1))
    out = []
    extra = [k for k in (samples[0] if samples else {}) if k not in ("input_ids", "labels")]
    for members in rows:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        lengths = []
        columns: dict[str, list[Any]] = {c: [] for c in extra}  # per-token columns (e.g. capabilities) follow
        for i in members:
            s = samples[i]
            ids += s["input_ids"]
            # the first token of a sample is never a target: the previous sample's last token must not
            # learn to predict it (it is a prompt token in every template; enforced here)
            labels += [-100, *s["labels"][1:]]
            pos += list(range(len(s["input_ids"])))
            lengths.append(len(s["input_ids"]))
            for c in extra:
                columns[c] += s[c]
        out.append({"input_ids": ids, "labels": labels, "position_ids": pos, "seq_lengths": lengths, **columns})
    stats = PackStats(len(samples), len(rows), sum(len(s["input_ids"]) for s in samples), max_length)
    return out, stats


def unpacked_stats(samples: list[dict[str, Any]], batch_size: int) -> PackStats:
    """Padding waste without packing: each batch padded to its longest sample."""
    lengths = [len(s["input_ids"]) for s in samples]
    capacity = sum(max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size])
                   for i in range(0, len(lengths), batch_size))
    longest = max(lengths) if lengths else 1
    # expressed as rows of `longest` tokens holding the same capacity
    return PackStats(len(samples), max(1, round(capacity / longest)), sum(lengths), longest)
