"""Executable environments: a task, tools that really run, and a check of success.

An `Environment` is reset with a `Task`, executes tool calls (`step`) and says whether the episode
succeeded (`verify`). The assistant is either a scripted `Policy` (an expert, a replay of recorded
actions, a random baseline) or a model playing a *protocol* (`agentflan.formats.protocols`):
`play` is the one episode loop for both, a generator that yields the protocol's `Prompt`s and
receives `Completion`s, so one driver can step many episodes in lockstep (`agentflan.eval`).
`run_episode` plays a scripted policy. The episode comes back as a `Trajectory` (verdict in its
metadata), so expert episodes flow through the same writers and readers as anyone's data.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentflan.formats.finish import FINISH, FINISH_SPEC, give_answer
from agentflan.formats.neutral import TOOL_SYSTEM
from agentflan.formats.protocols import Action, Completion, Prompt, Protocol, conversation_key
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

    def final_call(self, answer: str, call_id: str) -> ToolCall:
        """The terminal call that gives `answer` (how a protocol's plain answer enters the transcript)."""
        return give_answer(answer, call_id)

    def tags(self, task: Task) -> dict[str, str]:
        """Tags of this environment's conversations (protocols read `final_tool`, `task`)."""
        return {"env": self.name, "final_tool": self.final_tool}

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (databases, ...)."""

    @staticmethod
    def observation(call: ToolCall, payload: dict[str, Any], limit: int) -> ToolMessage:
        text = json.dumps(payload, ensure_ascii=False)
        if len(text) > limit:
            text = text[:limit] + f"... [truncated {len(text) - limit} characters]"
        return ToolMessage(content=text, name=call.name, tool_call_id=call.id,
                           metadata={"error": True} if payload.get("error") else {})


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
        return AssistantMessage(tool_calls=[give_answer(answer, "call_rfinal")])

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
    verdict: Verdict | None
    """None when the episode ended in an error (a failed request): it has no verdict."""
    steps: int
    actions: list[dict[str, Any]] = field(default_factory=list)
    """Per model action: kind (call/answer/unparseable), error, flags, the generated texts."""
    error: str | None = None


def final_answer_of(msg: AssistantMessage, final_tool: str) -> str | None:
    """The answer a message gives: its terminal call's answer, or its text when it calls nothing."""
    for call in msg.tool_calls:
        if call.name == final_tool:
            value = call.arguments.get("final_answer", call.arguments.get("answer", ""))
            return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    if not msg.tool_calls:
        return msg.content
    return None


Agent = Policy | Protocol
"""A scripted policy, or a protocol that a model plays (through the `Prompt`s `play` yields)."""


def action_message(action: Action, env: Environment, n_calls: int) -> AssistantMessage:
    """The transcript message of a model's action (calls get ids unique in the episode; an answer
    becomes the environment's terminal call; an unparseable reply is kept raw)."""
    raw = {"raw": action.texts} if action.texts else {}
    if action.kind == "call":
        calls = [c.model_copy(update={"id": f"call_{n_calls + k}"}) for k, c in enumerate(action.calls)]
        return AssistantMessage(content=action.thought, tool_calls=calls, metadata=raw)
    if action.kind == "answer":
        return AssistantMessage(content=action.thought, tool_calls=[env.final_call(action.answer or "", f"call_{n_calls}")],
                                metadata=raw)
    return AssistantMessage(content="\n".join(action.texts), metadata={**raw, "unparseable": action.error or "?"})


def play(env: Environment, task: Task, agent: Agent, *, max_steps: int = 12, key: str | None = None,
         source_format: str = "env") -> Generator[Prompt, Completion, Episode]:
    """One episode: reset, then let `agent` act until it answers, fails to be read, or `max_steps`
    assistant actions pass; then verify. A model's failed request arrives as an exception thrown
    into this generator (`gen.throw`): the episode ends with `error` and no verdict."""
    from agentflan.client import ContextLimitError, RequestError

    messages = env.reset(task)
    tools = env.tools(task)
    tags = env.tags(task)
    answer: str | None = None
    steps = 0
    actions: list[dict[str, Any]] = []
    error: str | None = None
    n_calls = 0
    try:
        while steps < max_steps:
            steps += 1
            if isinstance(agent, Policy):
                try:
                    msg = agent.act(list(messages), tools)
                except StopIteration:
                    break
            else:
                traj = Trajectory(id=task.id, messages=list(messages), tools=tools, tags=tags,
                                  source=Source(format=source_format))
                try:
                    action = yield from agent.act(traj, key if key is not None else conversation_key(traj))
                except ContextLimitError as e:  # the model ran out of room: the episode fails, as in AgentBench
                    actions.append({"kind": "context_limit", "error": str(e), "flags": [], "texts": []})
                    break
                except RequestError as e:
                    error = str(e)
                    break
                actions.append({"kind": action.kind, "error": action.error, "flags": action.flags,
                                "texts": action.texts})
                msg = action_message(action, env, n_calls)
                if action.kind == "unparseable":
                    messages.append(msg)
                    break
            messages.append(msg)
            answer = final_answer_of(msg, env.final_tool)
            for call in msg.tool_calls:
                n_calls += 1
                if call.name == env.final_tool:
                    continue
                messages.append(env.step(call))
            if answer is not None:
                break
        verdict = env.verify(task, answer, messages) if error is None else None
    finally:
        env.close()
    name = agent.name
    traj = Trajectory(
        id=task.id, messages=messages, tools=tools,
        source=Source(format=source_format, dataset=f"env:{env.name}", original_id=task.id),
        lineage=[f"env:{env.name}", f"policy:{name}" if isinstance(agent, Policy) else f"protocol:{name}"],
        tags={**tags, "split": task.split, "task_kind": task.kind,
              **({"success": str(verdict.success).lower()} if verdict else {})},
        metadata={"verdict": verdict.reason if verdict else None, "expected": task.expected,
                  "template": task.template, **({"error": error} if error else {})})
    return Episode(traj, verdict, steps, actions, error)


def run_episode(env: Environment, task: Task, policy: Policy, *, max_steps: int = 12,
                source_format: str = "env") -> Episode:
    """Play a scripted `policy` on `task` (see `play`)."""
    gen = play(env, task, policy, max_steps=max_steps, source_format=source_format)
    try:
        prompt = next(gen)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    gen.close()
    raise TypeError(f"a scripted policy never prompts a model (got {prompt!r})")


def system_prompt() -> SystemMessage:
    """The Tool-API system prompt. It states no reply format: each protocol states its own."""
    return SystemMessage(content=TOOL_SYSTEM)


def user(query: str) -> UserMessage:
    return UserMessage(content=query)

