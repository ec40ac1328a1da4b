"""The step contract: a step maps a stream of trajectories to a stream of trajectories.

Randomness never comes from global state or stream position: steps draw with
`agentflan.seeds.unit(seed, *keys)` and `rng_for`, which hash the recipe seed with stable keys
(step name, trajectory id, turn index). Decisions therefore do not depend on how the data is
sharded or ordered, which is what makes a multi-process build byte-identical to a single-process one.

Each step counts what it keeps, changes and drops (`StepStats`); drops carry a reason.
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar, cast

from pydantic import BaseModel, ConfigDict, SerializeAsAny, model_serializer, model_validator

from agentflan.errors import ConfigError
from agentflan.registry import Registry, subclass_of
from agentflan.schema import Trajectory


def render_key(seed: int, traj_id: str) -> str:
    """The protocol key (phrasing, drawn formats) of a record rendered by a data step."""
    return f"{seed}:{traj_id}"


class StepConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


@dataclass
class StepStats:
    """Counters of one step: `in`, `out`, `changed`, `dropped:<reason>`, and step-specific ones."""

    counts: Counter[str] = field(default_factory=Counter)

    def inc(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def to_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))


@dataclass
class StepContext:
    seed: int
    stats: StepStats = field(default_factory=StepStats)
    resources: dict[str, Any] = field(default_factory=dict)
    """Shared inputs prepared by the build (e.g. a tool pool for negatives)."""


C = TypeVar("C", bound=StepConfig)


class Step(ABC, Generic[C]):
    """A pipeline step with a typed config. Subclasses set `name` and `Config` and name the
    config type as the parameter (`class SplitStep(MapStep[SplitConfig])`), so `self.config`
    is typed without a check."""

    name: ClassVar[str]
    Config: ClassVar[type[StepConfig]] = StepConfig
    parallel_safe: ClassVar[bool] = False
    """True when each trajectory is processed on its own (no state across trajectories), so the
    executor may run the step on shards in several processes."""

    def __init__(self, config: C | None = None) -> None:
        # `Config` is the class `C` names (a ClassVar cannot be generic, hence the cast)
        self.config: C = config if config is not None else cast(C, self.Config())

    @abstractmethod
    def run(self, data: Iterable[Trajectory], ctx: StepContext) -> Iterator[Trajectory]:
        """Transform the stream; count with `ctx.stats`."""

    # A step that needs the whole stream (exact balancing, exact deduplication) can still run on
    # shards in parallel when its decision only needs a small summary of each trajectory: the
    # executor computes `summary` where each trajectory is, `plan` once over every summary in
    # stream order, and `apply_planned` on each shard with that shard's plan. The result and
    # the counters must equal `run`'s.

    def plannable(self) -> bool:
        """True when the step implements `summary`, `plan` and `apply_planned`."""
        return False

    def summary(self, traj: Trajectory, ctx: StepContext) -> Any:
        """What the plan needs to know about `traj` (small and picklable)."""
        raise NotImplementedError(f"step {self.name} cannot be planned")

    def pack_summaries(self, summaries: list[Any]) -> Any:
        """A shard's summaries as they travel to the plan (a step may pack them smaller)."""
        return summaries

    def plan(self, shards: list[Any], ctx: StepContext) -> list[Any]:
        """One plan per shard, from every shard's packed summaries (shards in stream order)."""
        raise NotImplementedError(f"step {self.name} cannot be planned")

    def apply_planned(self, data: Iterable[Trajectory], plan: Any, ctx: StepContext) -> Iterator[Trajectory]:
        """The step on one shard, given that shard's plan."""
        raise NotImplementedError(f"step {self.name} cannot be planned")

    def label(self) -> str:
        """What the step records in `Trajectory.lineage` (its name, plus key options)."""
        return self.name

    def stamp(self, traj: Trajectory) -> Trajectory:
        """A shallow copy of `traj` with this step appended to its lineage (inputs are never mutated)."""
        return traj.model_copy(update={"lineage": [*traj.lineage, self.label()]})


class MapStep(Step[C]):
    """One trajectory in, one (or none, with a reason) out."""

    parallel_safe: ClassVar[bool] = True

    @abstractmethod
    def apply(self, traj: Trajectory, ctx: StepContext) -> Trajectory | str:
        """The new trajectory, or a drop reason."""

    def run(self, data: Iterable[Trajectory], ctx: StepContext) -> Iterator[Trajectory]:
        for traj in data:
            ctx.stats.inc("in")
            result = self.apply(traj, ctx)
            if isinstance(result, str):
                ctx.stats.inc(f"dropped:{result}")
                continue
            ctx.stats.inc("out")
            yield self.stamp(result)


T = TypeVar("T")


class SmallestN(Generic[T]):
    """Keeps the `n` items (trajectories, or where they are) with the smallest keys: bounded
    memory, independent of order.

    Ties are broken by id, then by arrival, so the items themselves are never compared.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.heap: list[tuple[float, str, int, T]] = []  # max-heap of the n smallest, by -key
        self._seq = 0

    def admits(self, key: float, tid: str) -> bool:
        """Whether `offer(key, tid, ...)` would keep it (ask before building a costly item)."""
        if len(self.heap) < self.n:
            return True
        return self.n > 0 and (-key, tid) > self.heap[0][:2]

    def offer(self, key: float, tid: str, traj: T) -> None:
        if self.n <= 0:
            return
        self._seq += 1
        item = (-key, tid, -self._seq, traj)
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, item)
        elif item > self.heap[0]:
            heapq.heapreplace(self.heap, item)

    def items(self) -> list[T]:
        """The kept items, smallest key first."""
        return [t for *_, t in sorted(self.heap, key=lambda x: (-x[0], x[1], -x[2]))]


class StepSpec(BaseModel):
    """One step of a recipe, typed: its registered name and its validated `Config`.

    A recipe writes it `{type: <name>, ...config}` and it dumps the same way; it is what the
    recipe holds and what a build task carries to its worker (pickled as is: no JSON, no second
    validation), where `make` builds the step.
    """

    model_config = ConfigDict(frozen=True)

    type: str
    config: SerializeAsAny[StepConfig]

    @model_validator(mode="before")
    @classmethod
    def _entry(cls, data: Any) -> Any:
        """`{type: <name>, ...config}` (a recipe's entry) into `{type, config: <name>.Config}`."""
        if isinstance(data, dict) and "type" in data and "config" not in data:
            try:
                spec = cls.of(data)
            except ConfigError as e:  # an unknown step: pydantic reports a ValueError at the entry's path
                raise ValueError(str(e)) from e
            return {"type": spec.type, "config": spec.config}
        return data

    @classmethod
    def of(cls, entry: dict[str, Any]) -> StepSpec:
        """The spec of a recipe entry `{type: <name>, ...config}`.

        Raises:
            ConfigError: No step has that name.
            ValidationError: The config does not validate against the step's `Config`.
        """
        args = dict(entry)
        name = str(args.pop("type"))
        return cls(type=name, config=STEPS.get(name).Config.model_validate(args))

    @model_serializer(mode="wrap")
    def _flat(self, handler: Any, info: Any) -> dict[str, Any]:
        return {"type": self.type, **handler(self)["config"]}

    def make(self) -> Step[Any]:
        """The step this entry names, with its config."""
        return STEPS.get(self.type)(self.config)


def make_steps(entries: Iterable[StepSpec | dict[str, Any]]) -> list[Step[Any]]:
    """Steps from typed specs, or from recipe entries `{type: <name>, ...config}` (validated here)."""
    return [(e if isinstance(e, StepSpec) else StepSpec.of(e)).make() for e in entries]


STEPS: Registry[type[Step[Any]]] = Registry("step", check=subclass_of("agentflan.pipeline.base:Step"))
_S = "agentflan.pipeline.steps"
for _name, _target, _doc in [
    ("split", f"{_S}.split:SplitStep", "keep a hash range of trajectories by id (e.g. 60/30/10)"),
    ("align", f"{_S}.align:AlignStep", "T-FLAN: agent trajectory -> natural multi-turn chat"),
    ("react", f"{_S}.react:ReactFormatStep", "render in ReAct/JSON with randomized format instructions"),
    ("instruct", f"{_S}.instruct:InstructStep", "single-turn format-following samples (JSON and string 1:1)"),
    ("capabilities", f"{_S}.capabilities:CapabilitiesStep", "label every trained assistant turn"),
    ("balance", f"{_S}.balance:BalanceStep", "balance capabilities by ratio: mask their turns, or drop data"),
    ("filter", f"{_S}.filter:FilterStep", "schema validity, token length, exact and near duplicates"),
    ("sample", f"{_S}.filter:SampleStep", "keep at most N trajectories (hash order)"),
    ("decontaminate", f"{_S}.decontaminate:DecontaminateStep", "drop records whose request overlaps an evaluation set"),
]:
    STEPS.register(_name, _target, _doc)
