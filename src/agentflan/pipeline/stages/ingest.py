"""The ingest stage: each source an output reads is read once into `sources/<name>.jsonl`.

Records are native, with ids prefixed with the source name so they are unique across sources,
beside the source's accounting report (`sources/<name>.report.json`) and quarantine. A source
of many files is read in groups of files, a large JSONL file in spans of whole lines, each a
task; a source no output reads is not read.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from agentflan import __version__
from agentflan.errors import ParseError
from agentflan.fingerprint import fingerprint
from agentflan.io import make_reader
from agentflan.io.base import ReadReport
from agentflan.io.files import Span, can_split, expand, is_url, jsonl_spans, write_atomic
from agentflan.pipeline.executor import Executor
from agentflan.pipeline.recipe import DataRecipe, SourceConfig
from agentflan.pipeline.report import trained_approx_tokens
from agentflan.pipeline.stages import files as stage_files
from agentflan.pipeline.stages.base import BuildState, Stage, Started
from agentflan.pipeline.stages.files import (
    AMOUNTS,
    concat_files,
    input_signature,
    map_largest_first,
    part_dir,
    save_amounts,
    write_native,
)
from agentflan.schema import Trajectory


class IngestStage(Stage):
    """`source.<name>` for every source an output reads."""

    name: ClassVar[str] = "ingest"
    reads: ClassVar[tuple[str, ...]] = ("inputs",)
    writes: ClassVar[tuple[str, ...]] = ("sources",)

    def units(self, b: BuildState) -> list[str]:
        used = b.recipe.used_sources()
        for name in b.recipe.sources:
            if name not in used:
                b.say(f"source {name}: no output reads it; not read")
        return [f"source.{name}" for name in b.recipe.sources if name in used]

    def fingerprint(self, b: BuildState, unit: str) -> str:
        src = b.recipe.sources[unit.removeprefix("source.")]
        return fingerprint(src.model_dump(), input_signature(src.paths, src.optional), __version__)

    def run(self, b: BuildState, todo: list[str], started: dict[str, Started]) -> Iterator[str]:
        names = [unit.removeprefix("source.") for unit in todo]
        for name, report in _ingest_all(b.recipe, names, b.out, b.executor).items():
            if report.get("missing"):
                b.say(f"ingest {name}: no input file matches {b.recipe.sources[name].paths}; optional, so empty")
            b.say(f"ingest {name}: {report['records']} records, {report['converted']} converted, "
                  f"{report['quarantined']} quarantined, {sum(report['dropped'].values())} dropped")
            yield f"source.{name}"


@dataclass(frozen=True)
class _IngestTask:
    name: str
    cfg: SourceConfig
    out: str
    files: tuple[str, ...]
    part: int | None
    """None: the source is read by this one task, which writes the final files."""
    span: Span | None = None
    """The part of the one JSONL file in `files` this task reads (a large file is read in spans)."""


def _ingest(task: _IngestTask) -> dict[str, Any]:
    """Read a group of a source's files into native records (a task)."""
    name, cfg, out = task.name, task.cfg, Path(task.out)
    if task.part is None:
        target = out / "sources" / f"{name}.jsonl"
        qpath = out / "quarantine" / f"{name}.jsonl"
    else:
        target = part_dir(out, f"source.{name}") / f"native.{task.part:05d}.jsonl"
        qpath = part_dir(out, f"source.{name}") / f"quarantine.{task.part:05d}.jsonl"
    if qpath.exists():
        qpath.unlink()
    reader = make_reader(list(task.files), cfg.reader, on_error=cfg.on_error,
                         quarantine=qpath if cfg.on_error == "quarantine" else None,
                         dataset=name, **cfg.options)

    rep = reader.report
    trained = [0]
    """Trained approx tokens of an agent source (the mix's `sources` basis), counted as written."""

    def count(t: Trajectory) -> None:
        trained[0] += trained_approx_tokens(t)

    agent = cfg.role == "agent"
    per_file: dict[str, tuple[int, int]] = {}
    """Records and rejected records of each file (a source read in parts: which inputs were rejected whole)."""

    def renamed() -> Iterator[Trajectory]:
        # one task reads the source's paths as given; a part reads its files one by one
        groups = [cfg.paths] if task.part is None else [[f] for f in task.files]
        for group in groups:
            records, rejected = rep.records, rep.quarantined + rep.skipped
            for t in reader.read(group, task.span):
                t.id = f"{name}:{t.id}"
                yield t
            if task.part is not None:
                per_file[group[0]] = (rep.records - records, rep.quarantined + rep.skipped - rejected)

    error = None
    try:
        written = write_native(renamed(), target, count if agent else None)
    except ParseError as e:  # on_error: raise. The driver raises the first in file order, whichever task ran first
        error, written = e, 0
    finally:
        if reader.quarantine is not None:
            reader.quarantine.close()
    amounts = {"records": written, "trained_tokens": trained[0]} if agent else {"records": written}
    return {"report": reader.report, "per_file": per_file, "amounts": amounts, "error": error}


def _ingest_tasks(name: str, cfg: SourceConfig, out: Path, workers: int) -> list[_IngestTask]:
    """The tasks that read a source: a source of many files (ToolBench's answer folders) is read
    in groups of files, a large JSONL file in spans of whole lines (`jsonl_spans`: each knows the
    line and record numbers before it, so ids and line numbers are the whole file's)."""
    files = expand(cfg.paths)
    if workers <= 1 or cfg.options.get("limit") is not None:
        return [_IngestTask(name, cfg, str(out), tuple(files), None)]
    n = workers * stage_files.SHARDS_PER_WORKER
    pieces: list[tuple[tuple[str, ...], Span | None]] = []
    loose: list[str] = []  # files read whole, grouped as they come

    def group_loose() -> None:
        size = math.ceil(len(loose) / min(len(loose), n))
        pieces.extend((tuple(loose[i:i + size]), None) for i in range(0, len(loose), size))
        loose.clear()

    for f in files:
        size = os.path.getsize(f) if can_split(f) else 0
        if size > 2 * stage_files.SHARD_BYTES:
            if loose:
                group_loose()
            pieces += [((f,), span) for span in jsonl_spans(f, max(stage_files.SHARD_BYTES, math.ceil(size / n)))]
        else:
            loose.append(f)
    if loose:
        group_loose()
    if len(pieces) <= 1:
        return [_IngestTask(name, cfg, str(out), tuple(files), None)]
    return [_IngestTask(name, cfg, str(out), g, k, span) for k, (g, span) in enumerate(pieces)]


def _finish_ingest(name: str, out: Path, tasks: list[_IngestTask], results: list[dict[str, Any]]) -> dict[str, Any]:
    for r in results:  # in file order
        if r["error"] is not None:
            raise r["error"]
    report = ReadReport()
    for r in results:
        report.merge(r["report"])
    if tasks[0].part is not None:  # an input is rejected when every record of its files was (as one reader says)
        per_file: dict[str, tuple[int, int]] = {}  # summed over the spans of a file
        for r in results:
            for f, (records, rejected) in r["per_file"].items():
                before = per_file.get(f, (0, 0))
                per_file[f] = (before[0] + records, before[1] + rejected)
        report.rejected_inputs = []
        for item in tasks[0].cfg.paths:
            counts = [per_file.get(f, (0, 0)) for f in expand(item)]
            records, rejected = sum(c[0] for c in counts), sum(c[1] for c in counts)
            if records and rejected == records:
                report.rejected_inputs.append(item)
    qpath = out / "quarantine" / f"{name}.jsonl"
    if tasks[0].part is not None:
        parts = part_dir(out, f"source.{name}")
        concat_files([parts / f"native.{t.part:05d}.jsonl" for t in tasks], out / "sources" / f"{name}.jsonl")
        quarantines = [parts / f"quarantine.{t.part:05d}.jsonl" for t in tasks]
        quarantines = [q for q in quarantines if q.exists()]
        if qpath.exists():
            qpath.unlink()
        if quarantines:
            concat_files(quarantines, qpath)
        shutil.rmtree(parts)
    save_amounts(out, f"source.{name}", {k: sum(r["amounts"][k] for r in results) for k in results[0]["amounts"]})
    info = report.to_dict()
    info["quarantine"] = str(qpath.relative_to(out)) if report.quarantined else None
    write_atomic(out / "sources" / f"{name}.report.json", json.dumps(info, indent=2) + "\n")
    return info


def _ingest_all(recipe: DataRecipe, todo: list[str], out: Path, executor: Executor) -> dict[str, dict[str, Any]]:
    """Ingest the sources in `todo`; their reports by name."""
    reports: dict[str, dict[str, Any]] = {}
    tasks: dict[str, list[_IngestTask]] = {}
    for name in todo:
        cfg = recipe.sources[name]
        if cfg.optional and not input_signature(cfg.paths, optional=True):
            write_native([], out / "sources" / f"{name}.jsonl")
            save_amounts(out, f"source.{name}", dict.fromkeys(AMOUNTS, 0))  # nothing, in any unit
            qpath = out / "quarantine" / f"{name}.jsonl"
            if qpath.exists():
                qpath.unlink()
            reports[name] = ReadReport().to_dict() | {"quarantine": None, "missing": True}
            write_atomic(out / "sources" / f"{name}.report.json", json.dumps(reports[name], indent=2) + "\n")
            continue
        tasks[name] = _ingest_tasks(name, cfg, out, executor.workers)
    flat = [t for ts in tasks.values() for t in ts]
    results = iter(map_largest_first(executor, _ingest, flat, _task_bytes))
    for name, ts in tasks.items():
        reports[name] = _finish_ingest(name, out, ts, [next(results) for _ in ts])
    return {name: reports[name] for name in todo}


def _task_bytes(task: _IngestTask) -> int:
    if task.span is not None:
        return task.span.end - task.span.start
    return sum(0 if is_url(f) else os.path.getsize(f) for f in task.files)

