"""`agentflan data build`: run a data recipe, resumably, on one or many processes.

The build is the stages declared in `STAGES`, in order; each is a module of
`agentflan.pipeline.stages` and builds *units*, each written atomically (temporary file, then
rename) and marked done with a fingerprint of everything it depends on, so that a killed build
resumes where it stopped and ends byte-identical to an uninterrupted one, and a changed recipe
rebuilds only what changed:

| stage | module | units | reads | writes |
|---|---|---|---|---|
| ingest | `stages.ingest` | `source.<name>` | the recipe's input files | `sources/<name>.jsonl`, its report and quarantine |
| steps | `stages.steps` | `output.<name>` (step outputs) | sources | `native/<name>.jsonl` and the `write:` formats |
| negatives | `stages.negatives` | `output.<name>` (`kind: negatives`) | sources, the agent outputs' counts | the same |
| mix | `stages.mix` | `mix` | outputs | `native/<mix>.jsonl` and the `write:` formats |
| report | `stages.report` | `report` (every run) | everything | `stats.json`, `report.md`, charts |

The driver (`build`) fingerprints a unit once the units it `needs` are done, skips it when the
folder holds it with that fingerprint, and lets its stage build the others; a stage of one-task
units submits each as soon as its needs are done, so it runs beside the units still being built.
Every stage is a set of tasks on an executor (`agentflan.pipeline.executor`): in this process
when `workers: 1`, else local processes or Ray. A task reads its shard itself and writes its own
shard files, which the stage concatenates in order; records never travel through the driver.

Every random decision is a hash of (seed, step, id), never of the order or the process, so
`workers: 1` and `workers: 8` write the same bytes.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agentflan.io.files import write_atomic
from agentflan.pipeline.executor import make_executor
from agentflan.pipeline.recipe import DataRecipe
from agentflan.pipeline.stages.base import BuildState, Echo, Stage, Started
from agentflan.pipeline.stages.files import PARTS
from agentflan.pipeline.stages.ingest import IngestStage
from agentflan.pipeline.stages.mix import MixStage
from agentflan.pipeline.stages.negatives import NegativesStage
from agentflan.pipeline.stages.report import ReportStage
from agentflan.pipeline.stages.steps import StepsStage
from agentflan.versions import versions

log = logging.getLogger(__name__)
STATE = ".state"

STAGES: tuple[Stage, ...] = (IngestStage(), StepsStage(), NegativesStage(), MixStage(), ReportStage())
"""The build, in order: a stage reads only what the stages before it write (`Stage.reads`/`writes`)."""


@dataclass
class BuildResult:
    out_dir: Path
    stages_run: list[str] = field(default_factory=list)
    stages_skipped: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def _done(out: Path, stage: str, fingerprint: str) -> bool:
    marker = out / STATE / f"{stage}.done"
    return marker.exists() and marker.read_text().strip() == fingerprint


def _mark(out: Path, stage: str, fingerprint: str) -> None:
    (out / STATE).mkdir(parents=True, exist_ok=True)
    write_atomic(out / STATE / f"{stage}.done", fingerprint + "\n")


def build(recipe: DataRecipe, resolved: dict[str, Any], out_dir: str | Path, *, workers: int | None = None,
          resume: bool = True, echo: Echo | None = None) -> BuildResult:
    """Run `recipe` into `out_dir`: the units of every stage in `STAGES` (see the module doc).

    Args:
        resolved: The recipe as loaded (`load_recipe`), written to `resolved_recipe.yaml`.
        workers: Processes (default: the recipe's `workers`).
        resume: Skip the units the folder holds with their current fingerprint.
        echo: Where progress lines go (default: the log).
    """
    say = echo or (lambda s: log.info(s))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / PARTS).exists():  # shard files of a build that was killed
        shutil.rmtree(out / PARTS)
    result = BuildResult(out)
    write_atomic(out / "resolved_recipe.yaml", yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    write_atomic(out / "versions.json", json.dumps(versions(), indent=2) + "\n")

    with make_executor(recipe.executor, workers or recipe.workers) as executor:
        b = BuildState(recipe, out, executor, say)
        plan = [(stage, stage.units(b)) for stage in STAGES]
        begun: dict[str, bool] = {}
        """Units fingerprinted so far: True when they are to be built, False when the folder holds them."""
        done: set[str] = set()
        started: dict[str, Started] = {}

        def begin(stage: Stage, unit: str) -> bool:
            fp = stage.fingerprint(b, unit)
            if fp is not None:
                b.fingerprints[unit] = fp
            skip = resume and fp is not None and _done(out, unit, fp)
            (result.stages_skipped if skip else result.stages_run).append(unit)
            if skip:
                done.add(unit)
            begun[unit] = not skip
            return not skip

        def start_ready() -> None:
            """Fingerprint the units whose needs are done; submit those a stage can start early."""
            for stage, units in plan:
                for unit in units:
                    if unit not in begun and all(n in done for n in stage.needs(b, unit)) and begin(stage, unit):
                        task = stage.submit(b, unit)
                        if task is not None:
                            started[unit] = task

        for stage, units in plan:
            start_ready()
            todo = [u for u in units if (begun[u] if u in begun else begin(stage, u))]
            for unit in stage.run(b, todo, started):
                if unit in b.fingerprints:
                    _mark(out, unit, b.fingerprints[unit])
                done.add(unit)
                start_ready()
        result.stats = b.stats
    if (out / PARTS).exists():
        shutil.rmtree(out / PARTS)
    return result
