"""`instruct`: single-turn format-following samples (Agent-FLAN's `toolbench_instruct_j1s1`).

From each trajectory one step is chosen at random (seeded by id); the sample asks for exactly that
call given the query and the steps so far, in a required output format: a JSON object
(`{"name": ..., "arguments": {...}}`) or a plain string (`Action: name` / `Action Input: {...}`),
about 1:1, with the key names drawn per sample as the release varies them (`random_keys`:
name/tool/function/api/action and arguments/parameters/args/action_input/input; Action/Tool/API/
Command and Action Input/Parameters/Arguments/action_input/Args). The only trained turn is
labelled `instruction_following`. Rendered by the protocols `instruct:json[:random]` /
`instruct:string[:random]` (`agentflan.formats.protocols`), which step-level evaluation uses to
ask the same question of a model.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from agentflan.formats.neutral import request_of
from agentflan.formats.protocols import InstructProtocol
from agentflan.pipeline.base import MapStep, StepConfig, StepContext, render_key
from agentflan.schema import AssistantMessage, Trajectory
from agentflan.seeds import rng_for, unit


class InstructConfig(StepConfig):
    json_share: float = 0.5
    """Share of JSON-output samples (the rest are plain strings); the release is 1:1."""
    max_observation_chars: int = 300
    random_keys: bool = True
    """Draw the key names of the required format per sample (False: always name/arguments and
    Action/Action Input)."""


class InstructStep(MapStep[InstructConfig]):
    name: ClassVar[str] = "instruct"
    Config = InstructConfig

    def apply(self, traj: Trajectory, ctx: StepContext) -> Trajectory | str:
        cfg = self.config
        final_tool = traj.tags.get("final_tool")
        # trained calls only: an AgentInstruct one-shot demonstration is context, not the task
        steps = [(i, c) for i, m in enumerate(traj.messages) if isinstance(m, AssistantMessage) and m.loss
                 for c in m.tool_calls if c.name != final_tool]
        if not steps or request_of(traj) is None:
            return "no_tool_calls"
        index, call = rng_for(ctx.seed, self.name, traj.id).choice(steps)
        as_json = unit(ctx.seed, self.name, "format", traj.id) < cfg.json_share
        protocol = InstructProtocol("json" if as_json else "string", cfg.max_observation_chars, cfg.random_keys)
        upto = traj.model_copy(update={"messages": [*traj.messages[:index], AssistantMessage(tool_calls=[call])]})
        ctx.stats.inc("output:json" if as_json else "output:string")
        return Trajectory(
            id=f"{traj.id}#instruct", source=traj.source, tools=traj.tools, lineage=list(traj.lineage),
            tags={**{k: v for k, v in traj.tags.items() if k != "final_tool"}, "format": "instruct",
                  "output_format": "json" if as_json else "string", "protocol": protocol.name},
            metadata={"parent": traj.id, "step": index, "protocol_key": render_key(ctx.seed, traj.id),
                      "instruct_format": dataclasses.asdict(protocol.format_for(render_key(ctx.seed, traj.id)))},
            messages=protocol.render(upto, render_key(ctx.seed, traj.id)))
