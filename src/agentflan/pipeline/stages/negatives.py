"""The negatives stage: each `negatives` output (`agentflan.pipeline.negatives`) into `native/<output>.jsonl`.

Its counts are a share of the agent records of the step outputs, so an output's unit needs
those outputs done; it is one task (its memory is bounded by its counts), submitted as soon as
they are, so that it runs beside the step outputs still being built (the general chat).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from agentflan.pipeline.base import StepContext, StepSpec, StepStats
from agentflan.pipeline.negatives import build_negatives
from agentflan.pipeline.recipe import NegativesOutput
from agentflan.pipeline.stages.base import BuildState, Stage, Started
from agentflan.pipeline.stages.files import Sink, read_shards, save_scan, whole, write_file_formats
from agentflan.pipeline.stages.steps import finish_output, output_fingerprint
from agentflan.schema import Trajectory


class NegativesStage(Stage):
    """`output.<name>` for every `negatives` output."""

    name: ClassVar[str] = "negatives"
    reads: ClassVar[tuple[str, ...]] = ("sources", "outputs")
    writes: ClassVar[tuple[str, ...]] = ("outputs",)

    def units(self, b: BuildState) -> list[str]:
        return [f"output.{name}" for name in b.recipe.negatives_outputs()]

    def needs(self, b: BuildState, unit: str) -> list[str]:
        spec = b.recipe.negatives_outputs()[unit.removeprefix("output.")]
        return [*(f"source.{s}" for s in spec.sources()), *(f"output.{o}" for o in b.recipe.agent_outputs())]

    def fingerprint(self, b: BuildState, unit: str) -> str:
        name = unit.removeprefix("output.")
        spec = b.recipe.negatives_outputs()[name]
        return output_fingerprint(b, name, spec.sources(), agent_records(b))

    def submit(self, b: BuildState, unit: str) -> Started:
        name = unit.removeprefix("output.")
        task = _NegativesTask(str(b.out), name, b.recipe.negatives_outputs()[name], b.recipe.seed,
                              tuple(b.recipe.write), tuple(b.recipe.decontaminate_steps()), agent_records(b))
        return b.executor.submit(_run_negatives, task)

    def run(self, b: BuildState, todo: list[str], started: dict[str, Started]) -> Iterator[str]:
        for unit in todo:
            name = unit.removeprefix("output.")
            res = (started.get(unit) or self.submit(b, unit))()
            save_scan(b.out, name, [res["scan"]])
            write_file_formats((str(b.out), name, list(b.recipe.write)))
            finish_output(b, name, {"records": res["records"], "steps": res["steps"]})
            yield unit


def agent_records(b: BuildState) -> int:
    """The records of the agent outputs (written: their units are done), which shares are taken of."""
    return sum(int(json.loads((b.out / "native" / f"{o}.steps.json").read_text())["records"])
               for o in b.recipe.agent_outputs())


@dataclass(frozen=True)
class _NegativesTask:
    out: str
    name: str
    spec: NegativesOutput
    seed: int
    formats: tuple[str, ...]
    decontaminate: tuple[StepSpec, ...]
    """The recipe's `decontaminate` step (when it has one), applied to each input first."""
    agent_records: int


def _run_negatives(task: _NegativesTask) -> dict[str, Any]:
    """A `negatives` output (a task: one process; its memory is bounded by its `n`)."""
    out = Path(task.out)
    spec = task.spec
    stats = StepStats()
    clean: list[StepContext] = []

    def inputs(names: list[str]) -> Iterable[Trajectory]:
        stream: Iterable[Trajectory] = read_shards([whole(out / "sources" / f"{s}.jsonl") for s in names])
        for step in task.decontaminate:
            clean.append(StepContext(seed=task.seed))
            stream = step.make().run(stream, clean[-1])
        return stream

    with Sink(out, task.name, task.formats) as sink:
        for t in build_negatives(inputs(spec.chat_from), inputs(spec.tools_from), inputs(spec.queries_from),
                                 spec.config, task.seed, stats, cache_dir=out / ".cache",
                                 agent_records=task.agent_records):
            sink.add(t)
        scan = sink.close()
    steps: list[dict[str, Any]] = [{"step": f"decontaminate:{role}", "counts": ctx.stats.to_dict()}
                                   for role, ctx in zip(("chat", "tools", "queries"), clean, strict=False)]
    steps.append({"step": "negatives", "config": {"agent_records": task.agent_records}, "counts": stats.to_dict()})
    return {"scan": scan, "records": sink.n, "steps": steps}
