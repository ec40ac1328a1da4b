"""`instruct`: single-turn instruction-following samples (Agent-FLAN's `toolbench_instruct_j1s1`).

From each trajectory one step is chosen at random (seeded by id); the sample asks for exactly that
call given the query and the steps so far, in a required output format: a JSON object
(`{"name": ..., "arguments": {...}}`) or a plain string (`Action: name` / `Action Input: {...}`),
about 1:1. The only trained turn is labelled `instruction_following`.
"""

from __future__ import annotations

import json
from typing import ClassVar

from agentflan.formats.tflan import tools_prompt
from agentflan.pipeline.base import MapStep, StepConfig, StepContext, first_query, rng_for, unit
from agentflan.schema import AssistantMessage, SystemMessage, ToolMessage, Trajectory, UserMessage

JSON_INSTRUCTION = ('Answer with the next tool call only, as one JSON object of the form '
                    '{"name": "<tool name>", "arguments": {<arguments>}}, and nothing else.')
STRING_INSTRUCTION = ("Answer with the next tool call only, in exactly two lines:\n"
                      "Action: <tool name>\nAction Input: <arguments as a JSON object>")


class InstructConfig(StepConfig):
    json_share: float = 0.5
    """Share of JSON-output samples (the rest are plain strings); the release is 1:1."""
    max_observation_chars: int = 300


class InstructStep(MapStep):
    name: ClassVar[str] = "instruct"
    Config = InstructConfig

    def apply(self, traj: Trajectory, ctx: StepContext) -> Trajectory | str:
        cfg = self.config
        assert isinstance(cfg, InstructConfig)
        final_tool = traj.tags.get("final_tool")
        steps = [(i, c) for i, m in enumerate(traj.messages) if isinstance(m, AssistantMessage)
                 for c in m.tool_calls if c.name != final_tool]
        query = first_query(traj)
        if not steps or query is None:
            return "no_tool_calls"
        index, call = rng_for(ctx.seed, self.name, traj.id).choice(steps)
        history: list[str] = []
        results = {m.tool_call_id: m.content for m in traj.messages[:index] if isinstance(m, ToolMessage)}
        for m in traj.messages[:index]:
            if isinstance(m, AssistantMessage):
                for c in m.tool_calls:
                    res = results.get(c.id, "")[: cfg.max_observation_chars]
                    history.append(f"{len(history) + 1}. {c.name}({json.dumps(c.arguments, ensure_ascii=False)})"
                                   f" -> {res}")
        as_json = unit(ctx.seed, self.name, "format", traj.id) < cfg.json_share
        tools = [t for t in traj.tools if t.name != final_tool]
        system = f"{tools_prompt(tools)}\n\n{JSON_INSTRUCTION if as_json else STRING_INSTRUCTION}"
        user = query if not history else f"{query}\n\nSteps so far:\n" + "\n".join(history)
        args = json.dumps(call.arguments, ensure_ascii=False)
        answer = (json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False) if as_json
                  else f"Action: {call.name}\nAction Input: {args}")
        ctx.stats.inc("output:json" if as_json else "output:string")
        return Trajectory(
            id=f"{traj.id}#instruct", source=traj.source, tools=traj.tools, lineage=list(traj.lineage),
            tags={**{k: v for k, v in traj.tags.items() if k != "final_tool"}, "format": "instruct",
                  "output_format": "json" if as_json else "string"},
            metadata={"parent": traj.id, "step": index},
            messages=[SystemMessage(content=system), UserMessage(content=user),
                      AssistantMessage(content=answer, capability="instruction_following")])
