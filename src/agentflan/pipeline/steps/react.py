"""`react`: render trajectories as text in an agent format stated by the system prompt, through
the protocols that `eval` and `serve` use (`agentflan.formats.protocols`).

* `style: random` (default): each trajectory gets its own randomly drawn format (ReAct lines or
  a JSON object; key names Action/action/Tool/API/Command, Action Input/Parameters/Arguments/
  action_input/Args, a final action give_answer/finish/Finish/final_answer), and the system prompt
  states that exact format (Agent-FLAN's randomized format instructions): protocols
  `react:random` / `json:random`, the format recorded in `metadata.format_spec`.
* `style: toolllama`: the stated format with ToolBench's keys (Thought/Action/Action Input,
  Finish): protocol `react`.
* `style: source`: each trajectory in its source's format (AgentInstruct dialects, FireAct
  brackets, ToolBench's own ToolLLaMA prompt), which is the AgentTuning baseline arm: protocols
  `agentinstruct:<task>`, `fireact`, `toolllama`.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from agentflan.formats.agent_text import TOOLLLAMA_SPEC
from agentflan.formats.protocols import Protocol, ReactProtocol, SourceProtocol
from agentflan.pipeline.base import MapStep, StepConfig, StepContext, render_key
from agentflan.schema import AssistantMessage, Trajectory


class ReactConfig(StepConfig):
    style: Literal["random", "toolllama", "source"] = "random"
    formats: tuple[Literal["react", "json"], ...] = ("react", "json")
    """For `random`: the styles to draw from."""
    require_tool_calls: bool = True


class ReactFormatStep(MapStep[ReactConfig]):
    name: ClassVar[str] = "react"
    Config = ReactConfig

    def protocol(self) -> Protocol:
        cfg = self.config
        if cfg.style == "source":
            return SourceProtocol()
        if cfg.style == "toolllama":
            return ReactProtocol(TOOLLLAMA_SPEC)
        return ReactProtocol(None, tuple(cfg.formats))

    def apply(self, traj: Trajectory, ctx: StepContext) -> Trajectory | str:
        cfg = self.config
        if cfg.require_tool_calls and not any(isinstance(m, AssistantMessage) and m.tool_calls for m in traj.messages):
            return "no_tool_calls"
        out = self.protocol().apply(traj, render_key(ctx.seed, traj.id))
        spec = out.metadata.get("format_spec")
        fmt = spec["style"] if spec and cfg.style != "source" else "source"
        if spec:
            ctx.stats.inc(f"format:{spec['style']}")
            ctx.stats.inc(f"action_key:{spec['action_key']}")
        ctx.stats.inc(f"protocol:{out.tags['protocol']}")
        return out.model_copy(update={"tags": {**out.tags, "format": fmt}})

    def label(self) -> str:
        cfg = self.config
        return f"react:{cfg.style}"
