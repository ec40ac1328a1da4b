"""`react`: render trajectories as text in an agent format stated by the system prompt.

* `style: random` (default): each trajectory gets its own randomly drawn format (ReAct lines or
  a JSON object; key names Action/action/Tool/API/Command, Action Input/Parameters/Arguments/
  action_input/Args, a final action give_answer/finish/Finish/final_answer), and the system prompt
  states that exact format (Agent-FLAN's randomized format instructions).
* `style: toolllama`: ToolBench's own Thought/Action/Action Input with a Finish action.
* `style: source`: each trajectory in its source's format (AgentInstruct dialects, FireAct
  brackets, ToolLLaMA), which is the AgentTuning baseline arm.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from agentflan.formats.agent_text import TOOLLLAMA_SPEC, random_spec, render_source, render_with_spec
from agentflan.pipeline.base import MapStep, StepConfig, StepContext, rng_for
from agentflan.schema import AssistantMessage, Trajectory


class ReactConfig(StepConfig):
    style: Literal["random", "toolllama", "source"] = "random"
    formats: tuple[Literal["react", "json"], ...] = ("react", "json")
    """For `random`: the styles to draw from."""
    require_tool_calls: bool = True


class ReactFormatStep(MapStep):
    name: ClassVar[str] = "react"
    Config = ReactConfig

    def apply(self, traj: Trajectory, ctx: StepContext) -> Trajectory | str:
        cfg = self.config
        assert isinstance(cfg, ReactConfig)
        if cfg.require_tool_calls and not any(isinstance(m, AssistantMessage) and m.tool_calls for m in traj.messages):
            return "no_tool_calls"
        meta = dict(traj.metadata)
        if cfg.style == "source":
            messages = render_source(traj)
            fmt = "source"
        else:
            spec = random_spec(rng_for(ctx.seed, self.name, traj.id), tuple(cfg.formats)) \
                if cfg.style == "random" else TOOLLLAMA_SPEC
            messages = render_with_spec(traj, spec)
            meta["format_spec"] = spec.to_dict()
            fmt = spec.style
            ctx.stats.inc(f"format:{spec.style}")
            ctx.stats.inc(f"action_key:{spec.action_key}")
        return traj.model_copy(update={"messages": messages, "metadata": meta,
                                       "tags": {**traj.tags, "format": fmt}})

    def label(self) -> str:
        cfg = self.config
        assert isinstance(cfg, ReactConfig)
        return f"react:{cfg.style}"
