"""`balance`: thin supervision per capability (Agent-FLAN's second fix).

Every trained assistant turn labelled with a capability listed in `ratios` keeps `loss=true` with
that capability's ratio as probability; the sample itself is kept, so the context stays intact
and only the supervision is thinned. Presets: `paper` (reasoning : retrieval : understanding =
1 : 0.25 : 0.75, the paper's choice) and `release` (1 : 0.5 : 0.75, what the release's
`r10r5u7` file name suggests).

Exact quotas (ours): independent coin flips have a standard error of sqrt(p(1-p)/n), 4 points
for 100 retrieval turns, so the realized ratio can miss the request badly on small data. This
step takes two passes instead: each turn gets a uniform number from a hash of (seed, trajectory
id, turn index), and the `round(p * n)` turns with the smallest numbers keep their loss. Every
turn still keeps its loss with probability p, the realized ratio is exact to one turn, and the
choice does not depend on order or sharding. Memory: one float per balanced turn; the stream is
spooled to a temporary file between the passes.

`mode: sample` is the alternative of whole-sample subsampling: each trajectory is kept with
probability `sample_rate`, untouched (the ablation "same budget, no decomposition").
"""

from __future__ import annotations

import json
import math
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from agentflan.pipeline.base import Step, StepConfig, StepContext, unit
from agentflan.schema import AssistantMessage, Capability, Trajectory
from agentflan.tokens import approx_tokens

PRESETS: dict[str, dict[str, float]] = {
    "paper": {"reasoning": 1.0, "retrieval": 0.25, "understanding": 0.75},
    "release": {"reasoning": 1.0, "retrieval": 0.5, "understanding": 0.75},
}


class BalanceConfig(StepConfig):
    ratios: dict[Capability, float] | Literal["paper", "release"] = "paper"
    mode: Literal["loss", "sample"] = "loss"
    sample_rate: float | None = Field(None, gt=0.0, le=1.0)
    drop_untrained: bool = True
    """Drop trajectories left with no trained turn (`no_trained_turns`): nothing to learn."""

    @model_validator(mode="after")
    def _check(self) -> BalanceConfig:
        if self.mode == "sample" and self.sample_rate is None:
            raise ValueError("mode: sample needs sample_rate")
        if isinstance(self.ratios, dict) and any(not 0.0 <= v <= 1.0 for v in self.ratios.values()):
            raise ValueError("ratios are keep probabilities in [0, 1]")
        return self

    def resolved(self) -> dict[str, float]:
        if isinstance(self.ratios, str):
            return dict(PRESETS[self.ratios])
        return {str(k): v for k, v in self.ratios.items()}


class BalanceStep(Step):
    name: ClassVar[str] = "balance"
    Config = BalanceConfig
    two_pass: ClassVar[bool] = True

    def run(self, data: Iterable[Trajectory], ctx: StepContext) -> Iterator[Trajectory]:
        cfg = self.config
        assert isinstance(cfg, BalanceConfig)
        if cfg.mode == "sample":
            yield from self._sample(data, ctx, cfg)
            return
        ratios = cfg.resolved()
        draws: dict[str, array[float]] = {cap: array("d") for cap in ratios}
        with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
            for traj in data:  # pass 1: spool, and draw a number for every balanced turn
                for cap, u in self.summary(traj, ctx):
                    draws[cap].append(u)
                spool.write(json.dumps(traj.to_json_dict(), ensure_ascii=False) + "\n")
            thresholds = self._thresholds(draws, ctx)
            del draws
            spool.seek(0)
            # pass 2: apply the thresholds
            yield from self.apply_planned((Trajectory.model_validate_json(line) for line in spool), thresholds, ctx)

    # planned on shards: the summary of a trajectory is its balanced turns' draws, the plan the
    # thresholds (the same for every shard)

    def plannable(self) -> bool:
        cfg = self.config
        assert isinstance(cfg, BalanceConfig)
        return cfg.mode == "loss"

    def summary(self, traj: Trajectory, ctx: StepContext) -> list[tuple[str, float]]:
        ctx.stats.inc("in")
        ratios = self._ratios
        return [(m.capability, unit(ctx.seed, self.name, traj.id, i)) for i, m in enumerate(traj.messages)
                if isinstance(m, AssistantMessage) and m.loss and m.capability in ratios]

    def pack_summaries(self, summaries: list[Any]) -> dict[str, array[float]]:
        """A shard's draws per capability: 8 bytes a balanced turn, like `run`'s."""
        draws: dict[str, array[float]] = {cap: array("d") for cap in self._ratios}
        for turns in summaries:
            for cap, u in turns:
                draws[cap].append(u)
        return draws

    def plan(self, shards: list[Any], ctx: StepContext) -> list[Any]:
        draws: dict[str, array[float]] = {cap: array("d") for cap in self._ratios}
        for shard in shards:
            for cap, values in shard.items():
                draws[cap].extend(values)
        thresholds = self._thresholds(draws, ctx)
        return [thresholds] * len(shards)

    def apply_planned(self, data: Iterable[Trajectory], plan: Any, ctx: StepContext) -> Iterator[Trajectory]:
        cfg = self.config
        assert isinstance(cfg, BalanceConfig)
        thresholds: dict[str, float] = plan
        for traj in data:  # trajectories read back from a spool or a shard file: ours to change
            trained = 0
            for i, m in enumerate(traj.messages):
                if not isinstance(m, AssistantMessage) or not m.loss:
                    continue
                cap = m.capability or ""
                if cap in thresholds:
                    tokens = approx_tokens(m.content)
                    ctx.stats.inc(f"turns_before:{cap}")
                    ctx.stats.inc(f"approx_tokens_before:{cap}", tokens)
                    if unit(ctx.seed, self.name, traj.id, i) < thresholds[cap]:
                        ctx.stats.inc(f"turns_after:{cap}")
                        ctx.stats.inc(f"approx_tokens_after:{cap}", tokens)
                    else:
                        m.loss = False
                trained += m.loss
            if trained == 0 and cfg.drop_untrained:
                ctx.stats.inc("dropped:no_trained_turns")
                continue
            ctx.stats.inc("out")
            yield self.stamp(traj)

    @property
    def _ratios(self) -> dict[str, float]:
        cfg = self.config
        assert isinstance(cfg, BalanceConfig)
        return cfg.resolved()

    def _thresholds(self, draws: dict[str, array[float]], ctx: StepContext) -> dict[str, float]:
        ratios = self._ratios
        for cap, p in ratios.items():
            ctx.stats.inc(f"requested_permille:{cap}", round(p * 1000))
        return {cap: _threshold(values, ratios[cap]) for cap, values in draws.items()}

    def _sample(self, data: Iterable[Trajectory], ctx: StepContext, cfg: BalanceConfig) -> Iterator[Trajectory]:
        rate = cfg.sample_rate or 1.0
        for traj in data:
            ctx.stats.inc("in")
            if unit(ctx.seed, self.name, "sample", traj.id) >= rate:
                ctx.stats.inc("dropped:subsampled")
                continue
            ctx.stats.inc("out")
            yield self.stamp(traj)

    def label(self) -> str:
        cfg = self.config
        assert isinstance(cfg, BalanceConfig)
        if cfg.mode == "sample":
            return f"balance:sample={cfg.sample_rate:g}"
        ratios = cfg.ratios if isinstance(cfg.ratios, str) else ",".join(
            f"{k}={v:g}" for k, v in sorted(cfg.ratios.items()))
        return f"balance:{ratios}"


def _threshold(values: array[float], p: float) -> float:
    """Keep the `round(p * n)` smallest values: return the cut (keep if value < cut)."""
    k = math.floor(p * len(values) + 0.5)  # half up, not Python's half-to-even
    if k >= len(values):
        return math.inf
    if k <= 0:
        return -math.inf
    return sorted(values)[k]
