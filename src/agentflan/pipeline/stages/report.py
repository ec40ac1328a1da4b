"""The report stage: `stats.json`, `report.md` and charts, from what the other stages wrote (every run)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

from agentflan.pipeline.report import write_report
from agentflan.pipeline.stages.base import BuildState, Stage, Started


class ReportStage(Stage):
    """`report`: cheap, and it reads every unit, so it is written on every run (never marked done)."""

    name: ClassVar[str] = "report"
    reads: ClassVar[tuple[str, ...]] = ("sources", "outputs", "mix")
    writes: ClassVar[tuple[str, ...]] = ("report",)

    def units(self, b: BuildState) -> list[str]:
        return ["report"]

    def needs(self, b: BuildState, unit: str) -> list[str]:
        return [*(f"output.{o}" for o in b.recipe.outputs), *(["mix"] if b.recipe.mix is not None else [])]

    def fingerprint(self, b: BuildState, unit: str) -> None:
        return None

    def run(self, b: BuildState, todo: list[str], started: dict[str, Started]) -> Iterator[str]:
        b.stats = write_report(b.recipe, b.out, charts=b.recipe.report, run=b.executor.map)
        b.say(f"report: {b.out / 'report.md'}")
        yield "report"
