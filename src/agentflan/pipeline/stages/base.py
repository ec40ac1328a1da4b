"""The stage contract: what a stage of `agentflan data build` declares and what the driver does with it.

A stage builds *units* (a source, an output, the mix), each a resumable piece of the build
folder with a fingerprint of everything it depends on. The driver (`pipeline.build`) walks the
stages in their declared order (`pipeline.build.STAGES`) and, for each unit: computes its
fingerprint once the units it `needs` are done, skips it when the folder holds it with that
fingerprint, and otherwise lets the stage build it, then marks it done. A stage whose units are
one task each can `submit` a unit as soon as the units it needs are done, so it runs on a
worker beside the units still being built (the negatives beside the general chat output).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from agentflan.pipeline.executor import Executor
from agentflan.pipeline.recipe import DataRecipe

Echo = Callable[[str], None]
Started = Callable[[], dict[str, Any]]
"""A unit's task, submitted early: calling it waits for the task's result."""


@dataclass
class BuildState:
    """What the stages of one build share: the recipe, the folder, the executor, and the
    fingerprints of the units begun so far (a unit's fingerprint includes those it needs)."""

    recipe: DataRecipe
    out: Path
    executor: Executor
    say: Echo
    fingerprints: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    """The report's statistics (set by the report stage)."""


class Stage(ABC):
    """One stage of the build. Subclasses set `name`, `reads` and `writes` (the parts of the
    build folder it reads and writes, checked against the declared order by a test) and
    implement `units`, `fingerprint` and `run`."""

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]]
    writes: ClassVar[tuple[str, ...]]

    @abstractmethod
    def units(self, b: BuildState) -> list[str]:
        """The units this recipe asks of the stage, in build order (`source.<name>`, `output.<name>`...)."""

    def needs(self, b: BuildState, unit: str) -> list[str]:
        """The units (of earlier stages) that must be done before `unit` is fingerprinted or built."""
        return []

    @abstractmethod
    def fingerprint(self, b: BuildState, unit: str) -> str | None:
        """The fingerprint `unit` is marked done with; None: built on every run, never marked."""

    def submit(self, b: BuildState, unit: str) -> Started | None:
        """Start `unit` on the executor when its needs are done (a stage of one-task units); None:
        it is built in `run`, in order."""
        return None

    @abstractmethod
    def run(self, b: BuildState, todo: list[str], started: dict[str, Started]) -> Iterator[str]:
        """Build the units in `todo` (those in `started` were submitted already), yielding each
        one as it is finished (the driver marks it done and may start units that needed it)."""
