"""`filter` (validity, length, exact and near duplicates) and `sample` (at most N, by hash)."""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Literal

from pydantic import Field

from agentflan.pipeline.base import SmallestN, Step, StepConfig, StepContext
from agentflan.schema import AssistantMessage, Trajectory, check, errors
from agentflan.seeds import unit
from agentflan.tokens import token_counter


class FilterConfig(StepConfig):
    valid: bool = True
    """Drop trajectories with structural errors (`invalid:<code>`)."""
    max_tokens: int | None = Field(None, gt=0)
    """Drop trajectories longer than this (`too_long`); counted with `tokenizer` if set."""
    tokenizer: str | None = None
    """A Hugging Face tokenizer name or path; approximate counts when unset."""
    min_trained_turns: int = 1
    dedup: Literal["none", "exact", "near"] = "exact"
    near_threshold: float = Field(0.85, gt=0.0, le=1.0)
    """Estimated Jaccard similarity of word 5-gram shingles above which a record is a near duplicate."""


class FilterStep(Step[FilterConfig]):
    name: ClassVar[str] = "filter"
    Config = FilterConfig
    _count: Any = None

    def run(self, data: Iterable[Trajectory], ctx: StepContext) -> Iterator[Trajectory]:
        cfg = self.config
        count = token_counter(cfg.tokenizer) if cfg.max_tokens else None
        seen: set[bytes] = set()
        lsh = _MinHashLSH(cfg.near_threshold) if cfg.dedup == "near" else None
        for traj in data:
            ctx.stats.inc("in")
            reason = self._reason(traj, cfg, count, seen, lsh)
            if reason:
                ctx.stats.inc(f"dropped:{reason}")
                continue
            ctx.stats.inc("out")
            yield self.stamp(traj)

    def _reason(self, traj: Trajectory, cfg: FilterConfig, count: object, seen: set[bytes],
                lsh: _MinHashLSH | None) -> str | None:
        reason = self._static_reason(traj, cfg, count)
        if reason or cfg.dedup == "none":
            return reason
        text = _content(traj)
        key = hashlib.blake2b(text.encode(), digest_size=16).digest()
        if key in seen:
            return "duplicate"
        seen.add(key)
        if lsh is not None and lsh.seen_similar(text):
            return "near_duplicate"
        return None

    def _static_reason(self, traj: Trajectory, cfg: FilterConfig, count: object) -> str | None:
        """A reason to drop `traj` that does not depend on the other trajectories."""
        if cfg.valid:
            bad = errors(check(traj, allow_parse_errors=True))
            if bad:
                return f"invalid:{bad[0].code}"
        trained = sum(isinstance(m, AssistantMessage) and m.loss for m in traj.messages)
        if trained < cfg.min_trained_turns:
            return "too_few_trained_turns"
        if count is not None and cfg.max_tokens is not None:
            total = sum(count(m.content) for m in traj.messages)  # type: ignore[operator]
            if total > cfg.max_tokens:
                return "too_long"
        return None

    # planned on shards (exact or no deduplication): a trajectory's summary is its own drop reason
    # or its content hash; the plan walks the hashes in stream order, as `run` does. Near
    # duplicates need every earlier signature, so `dedup: near` runs in one process.

    def plannable(self) -> bool:
        cfg = self.config
        return cfg.dedup != "near"

    def summary(self, traj: Trajectory, ctx: StepContext) -> tuple[str | None, bytes | None]:
        cfg = self.config
        if self._count is None and cfg.max_tokens:
            self._count = token_counter(cfg.tokenizer)
        reason = self._static_reason(traj, cfg, self._count)
        if reason or cfg.dedup == "none":
            return reason, None
        return None, hashlib.blake2b(_content(traj).encode(), digest_size=16).digest()

    def plan(self, shards: list[Any], ctx: StepContext) -> list[Any]:
        seen: set[bytes] = set()
        plans = []
        for summaries in shards:
            decisions: list[str | None] = []
            for reason, key in summaries:
                if key is not None:
                    reason = "duplicate" if key in seen else None
                    seen.add(key)
                decisions.append(reason)
            plans.append(decisions)
        return plans

    def apply_planned(self, data: Iterable[Trajectory], plan: Any, ctx: StepContext) -> Iterator[Trajectory]:
        for traj, reason in zip(data, plan, strict=True):
            ctx.stats.inc("in")
            if reason:
                ctx.stats.inc(f"dropped:{reason}")
                continue
            ctx.stats.inc("out")
            yield self.stamp(traj)


def _content(traj: Trajectory) -> str:
    parts = []
    for m in traj.messages:
        parts.append(f"{m.role}\x00{' '.join(m.content.split())}")
        if isinstance(m, AssistantMessage):
            parts.extend(f"{c.name}\x00{json.dumps(c.arguments, sort_keys=True)}" for c in m.tool_calls)
    return "\x01".join(parts)


class _MinHashLSH:
    """MinHash (64 permutations) with LSH banding (16 bands x 4 rows) over word 5-gram shingles."""

    PERMS, BANDS = 64, 16

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.buckets: list[dict[bytes, list[tuple[int, ...]]]] = [{} for _ in range(self.BANDS)]

    def _signature(self, text: str) -> tuple[int, ...]:
        words = re.findall(r"\w+", text.lower())
        shingles = {" ".join(words[i:i + 5]) for i in range(max(1, len(words) - 4))}
        hashes = [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "big") for s in shingles]
        mask = (1 << 61) - 1
        return tuple(min(((h * (2 * k + 1) + k * 0x9E3779B97F4A7C15) & mask) for h in hashes)
                     for k in range(self.PERMS))

    def seen_similar(self, text: str) -> bool:
        sig = self._signature(text)
        rows = self.PERMS // self.BANDS
        candidates: list[tuple[int, ...]] = []
        keys = []
        for b in range(self.BANDS):
            key = hashlib.blake2b(repr(sig[b * rows:(b + 1) * rows]).encode(), digest_size=8).digest()
            keys.append(key)
            candidates.extend(self.buckets[b].get(key, []))
        for other in candidates:
            if sum(a == o for a, o in zip(sig, other, strict=True)) / self.PERMS >= self.threshold:
                return True
        for b, key in enumerate(keys):
            self.buckets[b].setdefault(key, []).append(sig)
        return False


class SampleConfig(StepConfig):
    n: int = Field(gt=0)
    """Keep at most this many trajectories: those with the smallest hash of (seed, id)."""


class SampleStep(Step[SampleConfig]):
    name: ClassVar[str] = "sample"
    Config = SampleConfig

    def run(self, data: Iterable[Trajectory], ctx: StepContext) -> Iterator[Trajectory]:
        cfg = self.config
        # the candidates wait in a spool file, the heap holds where they are: n agent trajectories
        # with their tool lists can take hundreds of MB in memory
        keep: SmallestN[tuple[int, int]] = SmallestN(cfg.n)
        with tempfile.TemporaryFile("w+b") as spool:
            for traj in data:
                ctx.stats.inc("in")
                key = unit(ctx.seed, self.name, traj.id)
                if keep.admits(key, traj.id):
                    line = json.dumps(traj.to_json_dict(), ensure_ascii=False).encode()
                    keep.offer(key, traj.id, (spool.tell(), len(line)))
                    spool.write(line)
            kept = keep.items()
            ctx.stats.inc("dropped:over_n", ctx.stats.counts["in"] - len(kept))
            for offset, size in kept:
                spool.seek(offset)
                ctx.stats.inc("out")
                yield self.stamp(Trajectory.model_validate_json(spool.read(size)))

    def label(self) -> str:
        cfg = self.config
        return f"sample:{cfg.n}"
