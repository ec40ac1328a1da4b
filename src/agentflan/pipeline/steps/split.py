"""`split`: keep the trajectories whose id hashes into `[start, end)`.

Splits made with the same `salt` partition the data exactly: ranges [0, 0.6), [0.6, 0.9) and
[0.9, 1) give Agent-FLAN's 60/30/10 split of ToolBench, each trajectory in exactly one of them,
independently of order, sharding or the other splits.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from agentflan.pipeline.base import MapStep, StepConfig, StepContext
from agentflan.schema import Trajectory
from agentflan.seeds import unit


class SplitConfig(StepConfig):
    start: float = Field(0.0, ge=0.0, le=1.0)
    end: float = Field(1.0, ge=0.0, le=1.0)
    salt: str = "split"
    """Splits that must partition the same data share a salt."""

    @model_validator(mode="after")
    def _order(self) -> SplitConfig:
        if self.start > self.end:
            raise ValueError(f"start ({self.start}) must not exceed end ({self.end})")
        return self


class SplitStep(MapStep[SplitConfig]):
    name: ClassVar[str] = "split"
    Config = SplitConfig

    def apply(self, traj: Trajectory, ctx: StepContext) -> Trajectory | str:
        cfg = self.config
        u = unit(ctx.seed, cfg.salt, traj.id)
        return traj if cfg.start <= u < cfg.end else "outside_split"

    def label(self) -> str:
        cfg = self.config
        return f"split[{cfg.start:g},{cfg.end:g})"
