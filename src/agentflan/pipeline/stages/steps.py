"""The steps stage: each step output streams its sources through its steps into `native/<output>.jsonl`
(and the recipe's other `write:` formats).

With one worker an output runs as one stream through all its steps, with no JSON round trip
between them. With more, an output runs in phases over shards: per-trajectory steps run on each
shard; a step that needs the whole stream (balance, exact dedup) is planned from small
per-trajectory summaries (`Step.plannable`) and then applied on each shard; a step that cannot
be planned (sample, near dedup) and the steps after it run in one task. An output read in one
shard is one task, submitted as soon as its sources are read. The tasks carry the steps' typed
configs (`StepSpec`); the report's counts are taken by the tasks that write the records.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from agentflan import __version__
from agentflan.fingerprint import fingerprint
from agentflan.io.files import write_atomic
from agentflan.io.writers.base import encode_data
from agentflan.pipeline.base import Step, StepContext, StepSpec, make_steps
from agentflan.pipeline.executor import Executor
from agentflan.pipeline.recipe import DataRecipe, StepsOutput
from agentflan.pipeline.stages.base import BuildState, Stage, Started
from agentflan.pipeline.stages.files import (
    SHARDS_PER_WORKER,
    Shard,
    Sink,
    concat_parts,
    input_signature,
    part_dir,
    plan_shards,
    read_shards,
    save_scan,
    whole,
    write_file_formats,
)
from agentflan.schema import Trajectory


class StepsStage(Stage):
    """`output.<name>` for every step output."""

    name: ClassVar[str] = "steps"
    reads: ClassVar[tuple[str, ...]] = ("sources",)
    writes: ClassVar[tuple[str, ...]] = ("outputs",)

    def units(self, b: BuildState) -> list[str]:
        return [f"output.{name}" for name in b.recipe.step_outputs()]

    def needs(self, b: BuildState, unit: str) -> list[str]:
        return [f"source.{s}" for s in b.recipe.step_outputs()[unit.removeprefix("output.")].from_]

    def fingerprint(self, b: BuildState, unit: str) -> str:
        name = unit.removeprefix("output.")
        return output_fingerprint(b, name, b.recipe.step_outputs()[name].from_)

    def submit(self, b: BuildState, unit: str) -> Started | None:
        if b.executor.workers == 1:  # nothing to run beside: it runs in order
            return None
        name = unit.removeprefix("output.")
        task = _single_task(b.recipe, name, b.recipe.step_outputs()[name], b.out, b.executor.workers)
        return None if task is None else b.executor.submit(_run_stream, task)

    def run(self, b: BuildState, todo: list[str], started: dict[str, Started]) -> Iterator[str]:
        for unit in todo:
            name = unit.removeprefix("output.")
            info = _run_output(b.recipe, name, b.recipe.step_outputs()[name], b.out, b.executor, started.get(unit))
            finish_output(b, name, info)
            yield unit


def output_fingerprint(b: BuildState, name: str, sources: list[str], agent_records: int = 0) -> str:
    """The fingerprint of output `name` (a step or negatives output) built from `sources`."""
    recipe = b.recipe
    decon = recipe.decontaminate.model_dump(mode="json") if recipe.decontaminate else None
    if decon and decon["against"]:
        decon["against_files"] = input_signature(decon["against"])
    return fingerprint(recipe.outputs[name].model_dump(mode="json", by_alias=True), recipe.seed, recipe.write,
                       [b.fingerprints[f"source.{s}"] for s in sources], __version__, decon, agent_records)


def finish_output(b: BuildState, name: str, info: dict[str, Any]) -> None:
    """What every output writes beside its records: `native/<name>.steps.json` (its steps' counts)."""
    write_atomic(b.out / "native" / f"{name}.steps.json", json.dumps(info, indent=2) + "\n")
    b.say(f"output {name}: {info['records']} records")


@dataclass
class _Phase:
    """Steps run on each shard: the plan of a planned step applied first, per-trajectory steps,
    and the summaries of the next planned step taken last."""

    apply: int | None = None
    maps: list[int] = field(default_factory=list)
    summarize: int | None = None


def _passes_through(phase: _Phase) -> bool:
    """A phase that changes nothing, only takes summaries (a planned step first in an output)."""
    return phase.apply is None and not phase.maps and phase.summarize is not None


def _phases(steps: list[Step[Any]]) -> tuple[list[_Phase], int]:
    """The phases of `steps`, and where the steps that must run in one process start."""
    phases = [_Phase()]
    for i, step in enumerate(steps):
        if step.parallel_safe:
            phases[-1].maps.append(i)
        elif step.plannable():
            phases[-1].summarize = i
            phases.append(_Phase(apply=i))
        else:
            return phases, i
    return phases, len(steps)


@dataclass(frozen=True)
class _PhaseTask:
    out: str
    name: str
    steps: tuple[StepSpec, ...]
    """The output's steps, typed, as the recipe holds them."""
    seed: int
    phase: int
    shards: tuple[Shard, ...]
    plan: Any
    part: int
    final: bool
    """Write the output's files (`formats`); otherwise an intermediate shard file."""
    formats: tuple[str, ...]


def _run_phase(task: _PhaseTask) -> dict[str, Any]:
    """One phase of an output on one shard (a task)."""
    steps = make_steps(task.steps)
    phases, _ = _phases(steps)
    phase = phases[task.phase]
    contexts = {i: StepContext(seed=task.seed) for i in range(len(steps))}
    stream: Iterable[Trajectory] = read_shards(task.shards)
    if phase.apply is not None:
        stream = steps[phase.apply].apply_planned(stream, task.plan, contexts[phase.apply])
    for i in phase.maps:
        stream = steps[i].run(stream, contexts[i])
    result: dict[str, Any] = {}
    out = Path(task.out)
    if task.final:
        with Sink(out, task.name, task.formats, task.part) as sink:
            for t in stream:
                sink.add(t)
            result["scan"] = sink.close()
            result["records"] = sink.n
    elif _passes_through(phase):  # only summaries: the next phase reads this phase's input again
        assert phase.summarize is not None
        step = steps[phase.summarize]
        result["summaries"] = step.pack_summaries([step.summary(t, contexts[phase.summarize]) for t in stream])
    else:
        path = part_dir(out, task.name) / f"p{task.phase}.{task.part:05d}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        summaries = []
        with path.open("wb") as f:
            for t in stream:
                if phase.summarize is not None:
                    summaries.append(steps[phase.summarize].summary(t, contexts[phase.summarize]))
                f.write(encode_data(t.to_json_dict()) + b"\n")
        if phase.summarize is not None:
            result["summaries"] = steps[phase.summarize].pack_summaries(summaries)
        result["path"] = str(path)
    result["counts"] = {i: dict(c.stats.counts) for i, c in contexts.items() if c.stats.counts}
    return result


@dataclass(frozen=True)
class _StreamTask:
    """Steps run in one process over whole files, writing the output's files."""

    out: str
    name: str
    steps: tuple[StepSpec, ...]
    """The output's steps, typed, as the recipe holds them."""
    seed: int
    first: int
    """Index of the first step to run (the earlier ones ran in phases)."""
    shards: tuple[Shard, ...]
    formats: tuple[str, ...]


def _run_stream(task: _StreamTask) -> dict[str, Any]:
    """Steps `first..` over the shards, in this one process, into the final files (a task)."""
    steps = make_steps(task.steps)
    contexts = {i: StepContext(seed=task.seed) for i in range(task.first, len(steps))}
    stream: Iterable[Trajectory] = read_shards(task.shards)
    for i in range(task.first, len(steps)):
        stream = steps[i].run(stream, contexts[i])
    with Sink(Path(task.out), task.name, task.formats) as sink:
        for t in stream:
            sink.add(t)
        scan = sink.close()
    return {"scan": scan, "records": sink.n,
            "counts": {i: dict(c.stats.counts) for i, c in contexts.items() if c.stats.counts}}



def _single_task(recipe: DataRecipe, name: str, spec: StepsOutput, out_dir: Path, workers: int) -> _StreamTask | None:
    """The one task that builds step output `name` when it is read in one shard; None when it
    runs in phases over shards."""
    sources = [out_dir / "sources" / f"{s}.jsonl" for s in spec.from_]
    if workers > 1 and len(plan_shards(sources, workers * SHARDS_PER_WORKER)) > 1:
        return None
    return _StreamTask(str(out_dir), name, tuple(recipe.step_entries(name)), recipe.seed, 0,
                       tuple(whole(p) for p in sources), tuple(recipe.write))


def _run_output(recipe: DataRecipe, name: str, spec: StepsOutput, out_dir: Path, executor: Executor,
                started: Started | None = None) -> dict[str, Any]:
    """Build step output `name` (`started`: its single task, already submitted)."""
    formats = tuple(recipe.write)
    parts = part_dir(out_dir, name)
    if parts.exists():
        shutil.rmtree(parts)
    single = _single_task(recipe, name, spec, out_dir, executor.workers) if started is None else None
    if started is None and single is not None:
        started = executor.submit(_run_stream, single)
    specs = tuple(recipe.step_entries(name))
    steps = make_steps(specs)
    contexts = [StepContext(seed=recipe.seed) for _ in steps]

    def merge(results: list[dict[str, Any]]) -> None:
        for r in results:
            for i, counts in r["counts"].items():
                contexts[int(i)].stats.counts.update(counts)

    if started is not None:  # one process, one stream through every step
        res = started()
        merge([res])
        scans, records = [res["scan"]], res["records"]
    else:
        sources = [out_dir / "sources" / f"{s}.jsonl" for s in spec.from_]
        shards = plan_shards(sources, executor.workers * SHARDS_PER_WORKER)
        phases, tail = _phases(steps)
        inputs: list[tuple[Shard, ...]] = [(s,) for s in shards]
        plans: list[Any] = [None] * len(inputs)
        results: list[dict[str, Any]] = []
        for k, phase in enumerate(phases):
            final = k == len(phases) - 1 and tail == len(steps)
            tasks = [_PhaseTask(str(out_dir), name, specs, recipe.seed, k, inp, plan, i, final, formats)
                     for i, (inp, plan) in enumerate(zip(inputs, plans, strict=True))]
            results = executor.map(_run_phase, tasks)
            merge(results)
            if _passes_through(phase):
                pass  # the next phase reads the same input
            else:
                if k > 0 and not _passes_through(phases[k - 1]):  # the previous phase's shard files are read
                    for inp in inputs:
                        for shard in inp:
                            os.unlink(shard.path)
                if not final:
                    inputs = [(whole(Path(r["path"])),) for r in results]
            if phase.summarize is not None:
                plans = steps[phase.summarize].plan([r["summaries"] for r in results], contexts[phase.summarize])
        if tail < len(steps):  # the rest in one process, over the last phase's shard files in order
            res = executor.map(_run_stream, [_StreamTask(str(out_dir), name, specs, recipe.seed, tail,
                                                         tuple(s for inp in inputs for s in inp), formats)])[0]
            merge([res])
            scans, records = [res["scan"]], res["records"]
        else:
            concat_parts(out_dir, name, formats, len(results))
            scans, records = [r["scan"] for r in results], sum(r["records"] for r in results)
    if parts.exists():
        shutil.rmtree(parts)
    save_scan(out_dir, name, scans)
    write_file_formats((str(out_dir), name, list(formats)))
    step_stats = [{"step": step.name, "config": step.config.model_dump(mode="json"),
                   "counts": ctx.stats.to_dict()} for step, ctx in zip(steps, contexts, strict=True)]
    return {"records": records, "steps": step_stats}

