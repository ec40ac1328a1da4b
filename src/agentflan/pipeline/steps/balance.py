"""`balance`: balance the capabilities (Agent-FLAN's second fix), by masking or by removing data.

Presets: `paper` (reasoning : retrieval : understanding = 1 : 0.25 : 0.75, the paper's choice) and
`release` (1 : 0.5 : 0.75, what the release's `r10r5u7` file name suggests).

`mode: mask` (the default): every trained assistant turn labelled with a capability listed in
`ratios` keeps `loss=true` with that capability's ratio as probability; the sample itself is
kept, so the context stays intact and only the supervision is thinned. Trained tokens fall;
processed tokens do not.

`mode: drop` removes data, as the paper did (its training tokens fell from 37.3M to 18.1M). A
T-FLAN conversation interleaves the capabilities: a retrieval or understanding turn names a call
whose result later turns read, so it cannot go on its own without leaving a conversation that
refers to what it never saw. So (ours): each *sample* draws one number, and a capability is
trained in the samples whose number falls under its ratio (times `scale`), with an exact quota
over turns; a sample therefore trains either all or none of a capability's turns, and the
capabilities nest (a sample that trains retrieval trains understanding and reasoning). A turn
that is not trained is then removed where the conversation stays whole without it (a thought
before a tool elicit: the step becomes `tflan:nocot`-shaped) and masked where it cannot (the
call's turns); each sample is cut after its last trained turn; a sample left with nothing trained
is removed. With `scale < 1` whole samples go: `scale: 0.5` keeps the ratios among the
capabilities and halves the data. The counters record processed and trained tokens before and
after, so the report shows what each mode saves.

Exact quotas (ours): independent coin flips have a standard error of sqrt(p(1-p)/n), 4 points
for 100 retrieval turns, so the realized ratio can miss the request badly on small data. This
step takes two passes instead: each turn gets a uniform number from a hash of (seed, trajectory
id, turn index), and the `round(p * n)` turns with the smallest numbers keep their loss. Every
turn still keeps its loss with probability p, the realized ratio is exact to one turn, and the
choice does not depend on order or sharding. Memory: one float per balanced turn; the stream is
spooled to a temporary file between the passes.

`mode: sample` is whole-sample subsampling: each trajectory is kept with probability
`sample_rate`, untouched (the ablation "same budget, no decomposition").
"""

from __future__ import annotations

import json
import math
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from typing import Any, ClassVar, Literal

from pydantic import Field, model_validator

from agentflan.formats.tflan import ELICIT_NEXT_TOOL, ELICIT_TOOL
from agentflan.pipeline.base import Step, StepConfig, StepContext
from agentflan.schema import AssistantMessage, Capability, Message, Trajectory, UserMessage
from agentflan.seeds import unit
from agentflan.tokens import approx_tokens

PRESETS: dict[str, dict[str, float]] = {
    "paper": {"reasoning": 1.0, "retrieval": 0.25, "understanding": 0.75},
    "release": {"reasoning": 1.0, "retrieval": 0.5, "understanding": 0.75},
}


class BalanceConfig(StepConfig):
    ratios: dict[Capability, float] | Literal["paper", "release"] = "paper"
    mode: Literal["mask", "drop", "sample", "loss"] = "mask"
    """`mask`: thin the loss per turn; `drop`: remove data (see the module doc); `sample`: keep
    whole samples with `sample_rate`. `loss` is the old name of `mask`."""
    scale: float = Field(1.0, gt=0.0, le=1.0)
    """`drop` only: every ratio times this (the ratios among capabilities stay; less data)."""
    sample_rate: float | None = Field(None, gt=0.0, le=1.0)
    drop_untrained: bool = True
    """Drop trajectories left with no trained turn (`no_trained_turns`): nothing to learn."""

    @model_validator(mode="after")
    def _check(self) -> BalanceConfig:
        if self.mode == "loss":
            self.mode = "mask"
        if self.scale != 1.0 and self.mode != "drop":
            raise ValueError("scale applies to mode: drop only")
        if self.mode == "sample" and self.sample_rate is None:
            raise ValueError("mode: sample needs sample_rate")
        if isinstance(self.ratios, dict) and any(not 0.0 <= v <= 1.0 for v in self.ratios.values()):
            raise ValueError("ratios are keep probabilities in [0, 1]")
        return self

    def resolved(self) -> dict[str, float]:
        if isinstance(self.ratios, str):
            return dict(PRESETS[self.ratios])
        return {str(k): v for k, v in self.ratios.items()}


class BalanceStep(Step[BalanceConfig]):
    name: ClassVar[str] = "balance"
    Config = BalanceConfig

    def run(self, data: Iterable[Trajectory], ctx: StepContext) -> Iterator[Trajectory]:
        cfg = self.config
        if cfg.mode == "sample":
            yield from self._sample(data, ctx, cfg)
            return
        if cfg.mode == "drop":
            yield from self._drop(data, ctx, cfg)
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
        return cfg.mode == "mask"

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
        return cfg.resolved()

    def _thresholds(self, draws: dict[str, array[float]], ctx: StepContext) -> dict[str, float]:
        ratios = self._ratios
        for cap, p in ratios.items():
            ctx.stats.inc(f"requested_permille:{cap}", round(p * 1000))
        return {cap: _threshold(values, ratios[cap]) for cap, values in draws.items()}

    def _drop(self, data: Iterable[Trajectory], ctx: StepContext, cfg: BalanceConfig) -> Iterator[Trajectory]:
        ratios = {cap: p * cfg.scale for cap, p in cfg.resolved().items()}
        for cap, p in ratios.items():
            ctx.stats.inc(f"requested_permille:{cap}", round(p * 1000))
        keys: array[float] = array("d")
        counts: dict[str, array[int]] = {cap: array("q") for cap in ratios}
        with tempfile.TemporaryFile("w+", encoding="utf-8") as spool:
            for traj in data:  # pass 1: spool; one number per sample and its turns per capability
                ctx.stats.inc("in")
                keys.append(unit(ctx.seed, self.name, "drop", traj.id))
                for cap in ratios:
                    counts[cap].append(sum(isinstance(m, AssistantMessage) and m.loss and m.capability == cap
                                           for m in traj.messages))
                spool.write(json.dumps(traj.to_json_dict(), ensure_ascii=False) + "\n")
            thresholds = {cap: _sample_threshold(keys, counts[cap], p) for cap, p in ratios.items()}
            del counts
            spool.seek(0)
            for k, line in enumerate(spool):  # pass 2: train, remove or mask each balanced turn
                traj = Trajectory.model_validate_json(line)
                u = keys[k]
                ctx.stats.inc("approx_tokens_processed_before", sum(approx_tokens(m.content) for m in traj.messages))
                out: list[Message] = []
                for i, m in enumerate(traj.messages):
                    cap = (m.capability or "") if isinstance(m, AssistantMessage) and m.loss else ""
                    if cap in thresholds:
                        assert isinstance(m, AssistantMessage)
                        tokens = approx_tokens(m.content)
                        ctx.stats.inc(f"turns_before:{cap}")
                        ctx.stats.inc(f"approx_tokens_before:{cap}", tokens)
                        if u < thresholds[cap]:
                            ctx.stats.inc(f"turns_after:{cap}")
                            ctx.stats.inc(f"approx_tokens_after:{cap}", tokens)
                        elif _removable(traj.messages, i):
                            ctx.stats.inc(f"turns_removed:{cap}")
                            continue
                        else:
                            ctx.stats.inc(f"turns_masked:{cap}")
                            m = m.model_copy(update={"loss": False})
                    out.append(m)
                last = max((i for i, m in enumerate(out) if isinstance(m, AssistantMessage) and m.loss), default=-1)
                if last < 0 and cfg.drop_untrained:
                    ctx.stats.inc("dropped:no_trained_turns")
                    continue
                if last >= 0 and last < len(out) - 1:
                    ctx.stats.inc("cut_after_last_trained_turn")
                    out = out[: last + 1]
                ctx.stats.inc("approx_tokens_processed_after", sum(approx_tokens(m.content) for m in out))
                ctx.stats.inc("out")
                yield self.stamp(traj.model_copy(update={"messages": out}))

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
        if cfg.mode == "sample":
            return f"balance:sample={cfg.sample_rate:g}"
        ratios = cfg.ratios if isinstance(cfg.ratios, str) else ",".join(
            f"{k}={v:g}" for k, v in sorted(cfg.ratios.items()))
        if cfg.mode == "drop":
            return f"balance:drop:{ratios}" + (f"x{cfg.scale:g}" if cfg.scale != 1.0 else "")
        return f"balance:{ratios}"


def _threshold(values: array[float], p: float) -> float:
    """Keep the `round(p * n)` smallest values: return the cut (keep if value < cut)."""
    k = math.floor(p * len(values) + 0.5)  # half up, not Python's half-to-even
    if k >= len(values):
        return math.inf
    if k <= 0:
        return -math.inf
    return sorted(values)[k]


def _sample_threshold(keys: array[float], counts: array[int], p: float) -> float:
    """Keep whole samples in order of their number until their turns come closest to `p` of all
    turns: return the cut (a sample keeps the capability if its number is below it)."""
    target = p * sum(counts)
    kept = 0
    for k in sorted(range(len(keys)), key=keys.__getitem__):
        if abs(kept + counts[k] - target) > abs(kept - target):
            return keys[k]
        kept += counts[k]
    return math.inf


def _removable(messages: list[Message], i: int) -> bool:
    """Can turn `i` go without leaving the conversation incoherent? Only a T-FLAN thought: a
    reasoning turn followed by the tool elicit (nothing refers back to a thought)."""
    m = messages[i]
    nxt = messages[i + 1] if i + 1 < len(messages) else None
    return isinstance(m, AssistantMessage) and m.capability == "reasoning" and isinstance(nxt, UserMessage) \
        and nxt.content in (*ELICIT_TOOL, *ELICIT_NEXT_TOOL)
