"""`capabilities`: make sure every trained assistant turn carries a capability label.

`align` and `instruct` label their turns as they create them. For anything else: a trained turn
without tool calls is `reasoning` (a plain answer or thought); a turn that still holds a tool call
or agent-format text mixes all capabilities and is labelled `unlabelled:mixed` in statistics (it
cannot be decomposed without `align`, and `balance` leaves it alone); so does an inline T-FLAN
step (`align` with `decompose: false`), which holds thought, tool and arguments in one turn.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import ClassVar

from agentflan.pipeline.base import Step, StepConfig, StepContext
from agentflan.schema import AssistantMessage, Trajectory
from agentflan.tokens import approx_tokens


class CapabilitiesStep(Step[StepConfig]):
    name: ClassVar[str] = "capabilities"
    parallel_safe: ClassVar[bool] = True

    def run(self, data: Iterable[Trajectory], ctx: StepContext) -> Iterator[Trajectory]:
        for traj in data:
            ctx.stats.inc("in")
            agent_text = traj.tags.get("format") in ("react", "json", "source")
            messages = []
            for m in traj.messages:
                if isinstance(m, AssistantMessage) and m.loss:
                    if m.capability is None and not m.tool_calls and not agent_text \
                            and not m.metadata.get("inline_call"):
                        m = m.model_copy(update={"capability": "reasoning"})
                        ctx.stats.inc("labelled")
                    label = m.capability or "unlabelled:mixed"
                    ctx.stats.inc(f"turns:{label}")
                    ctx.stats.inc(f"approx_tokens:{label}", approx_tokens(m.content))
                messages.append(m)
            ctx.stats.inc("out")
            yield self.stamp(traj.model_copy(update={"messages": messages}))
