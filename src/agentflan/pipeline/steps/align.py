"""`align`: T-FLAN chat alignment (Agent-FLAN's first fix), rendered by the `tflan` protocol
(`agentflan.formats.protocols`, which `eval` and `serve` play back exactly). See
`agentflan.formats.tflan`."""

from __future__ import annotations

from typing import ClassVar

from agentflan.formats.protocols import TFlanProtocol
from agentflan.formats.tflan import AlignOptions
from agentflan.pipeline.base import MapStep, StepConfig, StepContext, render_key
from agentflan.schema import AssistantMessage, Trajectory


class AlignConfig(StepConfig):
    cot: bool = True
    """Keep thoughts as reasoning turns ("cot"); False keeps only tool choice, arguments and answers."""
    decompose: bool = True
    """Separate elicited turns for thought, tool and arguments (capability-labelled). False keeps
    each step in one assistant turn (natural chat with inline chain of thought)."""
    require_tool_calls: bool = True
    """Drop trajectories without any tool call (`no_tool_calls`): there is nothing to align."""


class AlignStep(MapStep[AlignConfig]):
    name: ClassVar[str] = "align"
    Config = AlignConfig

    def apply(self, traj: Trajectory, ctx: StepContext) -> Trajectory | str:
        cfg = self.config
        if traj.tags.get("format") == "tflan":
            return "already_aligned"
        has_calls = any(isinstance(m, AssistantMessage) and m.tool_calls for m in traj.messages)
        if cfg.require_tool_calls and not has_calls:
            return "no_tool_calls"
        protocol = TFlanProtocol(AlignOptions(cot=cfg.cot, decompose=cfg.decompose))
        out = protocol.apply(traj, render_key(ctx.seed, traj.id))
        ctx.stats.inc("turns_in", len(traj.messages))
        ctx.stats.inc("turns_out", len(out.messages))
        return out

    def label(self) -> str:
        cfg = self.config
        return "align" + (":cot" if cfg.cot else "") + ("" if cfg.decompose else ":inline")
