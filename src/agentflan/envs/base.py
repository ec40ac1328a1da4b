"""Executable environments: a task, tools that really run, and a check of success.

An `Environment` is reset with a `Task`, executes tool calls (`step`) and says whether the episode
succeeded (`verify`). A `Policy` produces the assistant's next message from the conversation so far:
a scripted expert, a replay of recorded actions, a random baseline, or a model behind an
OpenAI-compatible endpoint. `run_episode` plays one policy in one environment and returns the
episode as a `Trajectory` (with the verdict in its metadata), so expert episodes flow through the
same writers and readers as anyone's data.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentflan.schema import (
    AssistantMessage,
    Message,
    Source,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    Trajectory,
    UserMessage,
)

TaskKind = Literal["single", "multi", "dependent", "stateful", "no_tool", "unserviceable", "select", "insert",
                   "update"]
FINISH = "Finish"
FINISH_SPEC = ToolSpec(
    name=FINISH,
    description="Give the final answer to the user. Call it at the end of the task with return_type "
                "give_answer and the answer in final_answer.",
    parameters={"type": "object", "properties": {
        "return_type": {"type": "string", "enum": ["give_answer", "give_up_and_restart"]},
        "final_answer": {"type": "string"}}, "required": ["return_type"]})


class Task(BaseModel):
    """One verifiable task of an environment."""

    model_config = ConfigDict(extra="forbid")

    id: str
    env: str
    split: Literal["train", "heldout", "dev"] = "train"
    kind: str
    query: str
    tools: list[ToolSpec] = Field(default_factory=list)
    expected: dict[str, Any] = Field(default_factory=dict)
    """What `verify` checks (answer values, table hash, ...)."""
    data: dict[str, Any] = Field(default_factory=dict)
    """What `reset` needs (a table, an initial inventory, ...)."""
    template: str = ""


@dataclass
class Verdict:
    success: bool
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


class Environment(ABC):
    """The environment contract. Subclasses are deterministic given the task."""

    name: ClassVar[str]
    final_tool: ClassVar[str] = FINISH
    max_observation_chars: ClassVar[int] = 2000

    @abstractmethod
    def reset(self, task: Task) -> list[Message]:
        """Start an episode: the system prompt and the user's request."""

    @abstractmethod
    def step(self, call: ToolCall) -> ToolMessage:
        """Execute one call; errors come back as observations, never as exceptions."""

    @abstractmethod
    def verify(self, task: Task, final_answer: str | None, transcript: list[Message]) -> Verdict:
        """Did the episode solve the task?"""

    def tools(self, task: Task) -> list[ToolSpec]:
        return [*task.tools, FINISH_SPEC]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (databases, ...)."""

    @staticmethod
    def observation(call: ToolCall, payload: dict[str, Any], limit: int) -> ToolMessage:
        text = json.dumps(payload, ensure_ascii=False)
        if len(text) > limit:
            text = text[:limit] + f"... [truncated {len(text) - limit} characters]"
        return ToolMessage(content=text, name=call.name, tool_call_id=call.id)


class Policy(ABC):
    name: ClassVar[str]

    @abstractmethod
    def act(self, messages: list[Message], tools: list[ToolSpec]) -> AssistantMessage:
        """The next assistant message."""


Expert = Generator[AssistantMessage, ToolMessage | None, None]
"""A scripted expert: yields assistant messages, receives the observation of each call."""


class ExpertPolicy(Policy):
    """Runs a task's scripted expert (a generator that sees the real observations)."""

    name: ClassVar[str] = "expert"

    def __init__(self, expert: Expert) -> None:
        self.expert = expert
        self.started = False

    def act(self, messages: list[Message], tools: list[ToolSpec]) -> AssistantMessage:
        last = messages[-1] if messages else None
        obs = last if isinstance(last, ToolMessage) else None
        if not self.started:
            self.started = True
            return next(self.expert)
        return self.expert.send(obs)


class ReplayPolicy(Policy):
    """Replays the assistant messages of a recorded trajectory, in order."""

    name: ClassVar[str] = "replay"

    def __init__(self, trajectory: Trajectory) -> None:
        self.queue = [m for m in trajectory.messages if isinstance(m, AssistantMessage)]

    def act(self, messages: list[Message], tools: list[ToolSpec]) -> AssistantMessage:
        if not self.queue:
            return AssistantMessage(content="(replay exhausted)")
        return self.queue.pop(0)


class RandomPolicy(Policy):
    """A baseline that calls random offered tools with random arguments, then answers at random."""

    name: ClassVar[str] = "random"

    def __init__(self, seed: int = 0, max_calls: int = 3) -> None:
        self.rng = random.Random(seed)
        self.calls = 0
        self.max_calls = max_calls

    def act(self, messages: list[Message], tools: list[ToolSpec]) -> AssistantMessage:
        usable = [t for t in tools if t.name != FINISH]
        if usable and self.calls < self.max_calls and self.rng.random() < 0.7:
            tool = self.rng.choice(usable)
            props = tool.parameters.get("properties", {})
            args = {k: self._value(v) for k, v in props.items()}
            self.calls += 1
            return AssistantMessage(content="Let me try this.", tool_calls=[
                ToolCall(id=f"call_r{self.calls}", name=tool.name, arguments=args)])
        answer = self.rng.choice(["I don't know.", "42", "Done.", "Yes", "The answer is 7."])
        return AssistantMessage(tool_calls=[ToolCall(id="call_rfinal", name=FINISH, arguments={
            "return_type": "give_answer", "final_answer": answer})])

    def _value(self, schema: dict[str, Any]) -> Any:
        kind = schema.get("type")
        if kind in ("number", "integer"):
            return self.rng.randint(-5, 100)
        if kind == "array":
            return [self.rng.randint(0, 9) for _ in range(3)]
        return self.rng.choice(["x", "Paris", "apple", "SELECT 1", "2024-01-01"])


@dataclass
class Episode:
    trajectory: Trajectory
    verdict: Verdict
    steps: int


def final_answer_of(msg: AssistantMessage, final_tool: str) -> str | None:
    """The answer a message gives: its terminal call's answer, or its text when it calls nothing."""
    for call in msg.tool_calls:
        if call.name == final_tool:
            value = call.arguments.get("final_answer", call.arguments.get("answer", ""))
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if not msg.tool_calls:
        return msg.content
    return None


def run_episode(env: Environment, task: Task, policy: Policy, *, max_steps: int = 12,
                source_format: str = "env") -> Episode:
    """Play `policy` on `task` until it answers or `max_steps` assistant turns pass."""
    messages = env.reset(task)
    tools = env.tools(task)
    answer: str | None = None
    steps = 0
    try:
        while steps < max_steps:
            steps += 1
            try:
                msg = policy.act(list(messages), tools)
            except StopIteration:
                break
            messages.append(msg)
            answer = final_answer_of(msg, env.final_tool)
            for call in msg.tool_calls:
                if call.name == env.final_tool:
                    continue
                messages.append(env.step(call))
            if answer is not None:
                break
        verdict = env.verify(task, answer, messages)
    finally:
        env.close()
    traj = Trajectory(
        id=task.id, messages=messages, tools=tools,
        source=Source(format=source_format, dataset=f"env:{env.name}", original_id=task.id),
        lineage=[f"env:{env.name}", f"policy:{policy.name}"],
        tags={"env": env.name, "split": task.split, "task_kind": task.kind, "final_tool": env.final_tool,
              "success": str(verdict.success).lower()},
        metadata={"verdict": verdict.reason, "expected": task.expected, "template": task.template})
    return Episode(traj, verdict, steps)


def system_prompt() -> SystemMessage:
    return SystemMessage(content=(
        "You are a helpful assistant that can call tools. Call a tool only when the request needs it; "
        f"when you know the answer, call {FINISH} with return_type give_answer and the answer in final_answer. "
        "If no offered tool can do what is asked, say so and answer without calling tools."))


def user(query: str) -> UserMessage:
    return UserMessage(content=query)

