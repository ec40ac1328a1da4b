"""`agentflan data build`: run a data recipe, resumably, on one or many processes.

Stages, each written atomically (temporary file, then rename) and marked done with a
fingerprint of everything it depends on, so that a killed build resumes where it stopped and
ends byte-identical to an uninterrupted one, and a changed recipe rebuilds only what changed:

1. **ingest**: each source is read once into `sources/<name>.jsonl` (native, ids prefixed with
   the source name so they are unique across sources), with its accounting report and quarantine.
2. **outputs**: each output streams its sources through its steps into `native/<output>.jsonl`
   (and the other `write:` formats).
3. **mix**: the outputs, re-weighted (chat balanced against agent data), shuffled by hash into
   `native/<mix>.jsonl` with an external bucket shuffle (bounded memory).
4. **report**: `stats.json`, `report.md` and charts.

Every stage is a set of tasks on an executor (`agentflan.pipeline.executor`): in this process
when `workers: 1`, else local processes or Ray. A task reads its shard itself (a group of input
files, or a byte range of whole lines of a JSONL file) and writes its own shard files, which
the driver concatenates in order; records never travel through the driver. With one worker an
output runs as one stream through all its steps, with no JSON round trip between them. With
more, an output runs in phases over shards: per-trajectory steps run on each shard; a step that
needs the whole stream (balance, exact dedup) is planned from small per-trajectory summaries
(`Step.plannable`) and then applied on each shard; a step that cannot be planned (sample, near
dedup) and the steps after it run in one task. The report's counts are taken by the tasks that
write the records, so nothing is read twice.

Every random decision is a hash of (seed, step, id), never of the order or the process, so
`workers: 1` and `workers: 8` write the same bytes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from agentflan import __version__
from agentflan.errors import ParseError
from agentflan.fingerprint import fingerprint
from agentflan.io import make_reader
from agentflan.io.base import ReadReport
from agentflan.io.files import Span, atomic_output, can_split, expand, is_url, jsonl_spans, write_atomic, write_failed
from agentflan.io.writers import WRITERS
from agentflan.io.writers.base import Writer, dumps_data, encode_data
from agentflan.pipeline.base import Step, StepContext, StepStats, make_steps, unit
from agentflan.pipeline.executor import Executor, make_executor
from agentflan.pipeline.negatives import build_negatives
from agentflan.pipeline.recipe import DataRecipe, NegativesOutput, StepsOutput
from agentflan.pipeline.report import Scan, read_state, scan_path, trained_approx_tokens
from agentflan.schema import Trajectory
from agentflan.schema.trajectory import json_dict_checked

log = logging.getLogger(__name__)
Echo = Callable[[str], None]
STATE = ".state"
PARTS = ".parts"
"""Shard files of the stage in progress (removed when it ends, and at the start of a build)."""

SHARD_BYTES = 1 << 20
"""Smallest shard worth a task of its own."""
SHARDS_PER_WORKER = 4
"""Shards per worker and phase: enough for the slowest shard not to hold the others up."""
BUCKET_BYTES = 16 * 2**20
MAX_BUCKETS = 1024


@dataclass
class BuildResult:
    out_dir: Path
    stages_run: list[str] = field(default_factory=list)
    stages_skipped: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def _fp(*parts: Any) -> str:
    return fingerprint(*parts)


def _done(out: Path, stage: str, fingerprint: str) -> bool:
    marker = out / STATE / f"{stage}.done"
    return marker.exists() and marker.read_text().strip() == fingerprint


def _mark(out: Path, stage: str, fingerprint: str) -> None:
    (out / STATE).mkdir(parents=True, exist_ok=True)
    write_atomic(out / STATE / f"{stage}.done", fingerprint + "\n")


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp")


def _read_native(path: Path) -> Iterator[Trajectory]:
    with path.open("rb") as f:
        for line in f:
            yield Trajectory.model_validate_json(line)


def _native_line(traj: Trajectory) -> tuple[bytes, Trajectory]:
    """The native JSONL line of `traj` (UTF-8), and `traj` as a reader of that line sees it: the
    same object unless pydantic's JSON mode converted a value (a tuple, a date, a non-finite float)."""
    d, exact = json_dict_checked(traj)
    return encode_data(d) + b"\n", traj if exact else Trajectory.model_validate(d)


def _write_native(trajs: Iterable[Trajectory], path: Path, seen: Callable[[Trajectory], None] | None = None) -> int:
    """Write `trajs` as native records; `seen` gets each as a reader of the file will see it."""
    n = 0
    with atomic_output(path, _atomic_target(path)) as tmp, tmp.open("wb") as f:  # even on Ctrl-C
        for t in trajs:
            line, written = _native_line(t)
            f.write(line)
            if seen is not None:
                seen(written)
            n += 1
    return n


def _concat_files(parts: list[Path], target: Path) -> None:
    """Concatenate `parts` (in order) into `target`, atomically, and delete them."""
    with atomic_output(target, _atomic_target(target)) as tmp, tmp.open("wb") as w:
        for p in parts:
            with p.open("rb") as r:
                shutil.copyfileobj(r, w, 1 << 20)
    for p in parts:
        p.unlink()


def _input_signature(paths: list[str], optional: bool = False) -> list[tuple[str, int, int]]:
    from agentflan.errors import ConfigError
    try:
        files = expand(paths)
    except ConfigError:
        if optional:
            return []
        raise
    sig = []
    for p in files:
        if is_url(p):
            sig.append((p, 0, 0))
        else:
            st = os.stat(p)
            sig.append((os.path.abspath(p), st.st_size, int(st.st_mtime)))
    return sig


# ---- shards ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    """A byte range of whole lines of a JSONL file (`end` is exclusive)."""

    path: str
    start: int
    end: int


def plan_shards(paths: list[Path], n: int) -> list[Shard]:
    """About `n` shards of at least `SHARD_BYTES` over `paths` (files in order, lines whole).

    The shards of a file cover it exactly, so reading them in order reads the file. How many
    there are never changes a result, only how the work is spread.
    """
    sizes = [p.stat().st_size for p in paths]
    target = max(SHARD_BYTES, math.ceil(sum(sizes) / max(1, n)))
    shards = []
    for p, size in zip(paths, sizes, strict=True):
        start = 0
        with p.open("rb") as f:
            while start < size:
                end = start + target
                if end >= size:
                    end = size
                else:
                    f.seek(end - 1)
                    f.readline()  # to the end of the line holding byte end - 1
                    end = f.tell()
                shards.append(Shard(str(p), start, end))
                start = end
    return shards


def whole(path: Path) -> Shard:
    return Shard(str(path), 0, path.stat().st_size)


def _shard_lines(shard: Shard) -> Iterator[bytes]:
    with open(shard.path, "rb") as f:
        f.seek(shard.start)
        pos = shard.start
        for line in f:
            if pos >= shard.end:
                return
            pos += len(line)
            yield line


def _read_shards(shards: Iterable[Shard]) -> Iterator[Trajectory]:
    for shard in shards:
        for line in _shard_lines(shard):
            yield Trajectory.model_validate_json(line)


# ---- what a task writes ------------------------------------------------------------------------------

def _record_writers(formats: Iterable[str]) -> dict[str, Writer]:
    """The `write:` formats written record by record (every JSON writer); whole-file writers such
    as Parquet are written afterwards from the native file (`_write_file_formats`)."""
    writers = {}
    for fmt in formats:
        if fmt == "native":
            continue
        writer = WRITERS.get(fmt)()
        if type(writer).write is Writer.write:
            writers[fmt] = writer
    return writers


def _part_dir(out: Path, name: str) -> Path:
    return out / PARTS / name


class _Sink:
    """The files of one output that one task writes: native, the record-by-record formats, and
    the report's counts. `part=None` writes the final files (atomically); a part number writes
    shard files that the driver concatenates."""

    def __init__(self, out: Path, name: str, formats: Iterable[str], part: int | None = None) -> None:
        self.writers = _record_writers(formats)
        self.targets: dict[str, Path] = {}
        self.files: dict[str, Any] = {}
        self.paths: dict[str, Path] = {}
        self.scan = Scan()
        self.n = 0
        try:
            for fmt in ["native", *self.writers]:
                if part is None:
                    final = out / fmt / f"{name}.jsonl"
                    self.targets[fmt] = final
                    path = _atomic_target(final)
                else:
                    path = _part_dir(out, name) / f"{fmt}.{part:05d}.jsonl"
                    path.parent.mkdir(parents=True, exist_ok=True)
                self.paths[fmt] = path
                self.files[fmt] = path.open("wb")
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, kind: type[BaseException] | None, e: BaseException | None, tb: object) -> None:
        if kind is None:
            return
        self.abort()  # a full disk, Ctrl-C, a failing step: no temporary file stays behind
        if isinstance(e, OSError):  # the OS names no file for a failed write: name this output
            where = next(iter(self.targets.values()), None) or next(iter(self.paths.values()), "an output")
            err = write_failed(where, e)
            if err is not e:
                raise err from e

    def abort(self) -> None:
        """Close and remove every file this sink started (the finished ones are renamed already)."""
        for f in self.files.values():
            f.close()
        for path in self.paths.values():
            path.unlink(missing_ok=True)

    def add(self, traj: Trajectory) -> None:
        line, written = _native_line(traj)  # formats and counts see what a reader of the native file sees
        self.files["native"].write(line)
        self.n += 1
        self._derived(written)

    def add_line(self, line: str, traj: Trajectory) -> None:
        """A record whose native line is already encoded (the mix)."""
        self.files["native"].write(line.encode("utf-8"))
        self.n += 1
        self._derived(traj)

    def _derived(self, traj: Trajectory) -> None:
        for fmt, writer in self.writers.items():
            data = writer.encode_counted(traj)
            if data is not None:
                self.files[fmt].write(data + b"\n")
        self.scan.add(traj)

    def close(self) -> dict[str, Any]:
        for f in self.files.values():
            f.close()
        for fmt, final in self.targets.items():
            os.replace(self.paths.pop(fmt), final)
        return self.scan.to_state()


def _concat_parts(out: Path, name: str, formats: Iterable[str], n_parts: int) -> None:
    """The final files of an output from its shard files, in shard order."""
    for fmt in ["native", *_record_writers(formats)]:
        parts = [_part_dir(out, name) / f"{fmt}.{i:05d}.jsonl" for i in range(n_parts)]
        _concat_files(parts, out / fmt / f"{name}.jsonl")


def _save_scan(out: Path, name: str, states: list[dict[str, Any]]) -> None:
    scan = Scan()
    for state in states:
        scan.merge(Scan.from_state(state))
    path = scan_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(scan.to_state(), ensure_ascii=False) + "\n")
    _save_amounts(out, name, {"records": scan.stats.n, "trained_tokens": scan.trained})


AMOUNTS = ("records", "trained_tokens")
"""What a mix can count (`MixConfig.by`), kept for every output and source as it is written
(trained tokens of agent sources only: the mix weighs no other source)."""


def _amounts_path(out: Path, name: str) -> Path:
    return out / ".state" / "amounts" / f"{name}.json"


def _save_amounts(out: Path, name: str, amounts: dict[str, int]) -> None:
    path = _amounts_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(amounts, sort_keys=True) + "\n")


def _write_file_formats(args: tuple[str, str, list[str]]) -> None:
    """Formats that write a whole file (Parquet) from an output's native file (a task)."""
    out, name, formats = args
    for fmt in formats:
        if fmt == "native" or fmt in _record_writers([fmt]):
            continue
        writer = WRITERS.get(fmt)()
        suffix = ".parquet" if fmt == "parquet" else ".jsonl"
        target = Path(out) / fmt / f"{name}{suffix}"
        with atomic_output(target, _atomic_target(target).with_suffix(suffix)) as tmp:
            writer.write(_read_native(Path(out) / "native" / f"{name}.jsonl"), tmp)


# ---- stage 1: ingest -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _IngestTask:
    name: str
    cfg: dict[str, Any]
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
        target = _part_dir(out, f"source.{name}") / f"native.{task.part:05d}.jsonl"
        qpath = _part_dir(out, f"source.{name}") / f"quarantine.{task.part:05d}.jsonl"
    if qpath.exists():
        qpath.unlink()
    reader = make_reader(list(task.files), cfg["reader"], on_error=cfg["on_error"],
                         quarantine=qpath if cfg["on_error"] == "quarantine" else None,
                         dataset=name, **cfg["options"])

    rep = reader.report
    trained = [0]
    """Trained approx tokens of an agent source (the mix's `sources` basis), counted as written."""

    def count(t: Trajectory) -> None:
        trained[0] += trained_approx_tokens(t)

    agent = cfg["role"] == "agent"
    per_file: dict[str, tuple[int, int]] = {}
    """Records and rejected records of each file (a source read in parts: which inputs were rejected whole)."""

    def renamed() -> Iterator[Trajectory]:
        # one task reads the source's paths as given; a part reads its files one by one
        groups = [cfg["paths"]] if task.part is None else [[f] for f in task.files]
        for group in groups:
            records, rejected = rep.records, rep.quarantined + rep.skipped
            for t in reader.read(group, task.span):
                t.id = f"{name}:{t.id}"
                yield t
            if task.part is not None:
                per_file[group[0]] = (rep.records - records, rep.quarantined + rep.skipped - rejected)

    error = None
    try:
        written = _write_native(renamed(), target, count if agent else None)
    except ParseError as e:  # on_error: raise. The driver raises the first in file order, whichever task ran first
        error, written = e, 0
    finally:
        if reader.quarantine is not None:
            reader.quarantine.close()
    amounts = {"records": written, "trained_tokens": trained[0]} if agent else {"records": written}
    return {"report": reader.report, "per_file": per_file, "amounts": amounts, "error": error}


def _ingest_tasks(name: str, cfg: dict[str, Any], out: Path, workers: int) -> list[_IngestTask]:
    """The tasks that read a source: a source of many files (ToolBench's answer folders) is read
    in groups of files, a large JSONL file in spans of whole lines (`jsonl_spans`: each knows the
    line and record numbers before it, so ids and line numbers are the whole file's)."""
    files = expand(cfg["paths"])
    if workers <= 1 or cfg["options"].get("limit") is not None:
        return [_IngestTask(name, cfg, str(out), tuple(files), None)]
    n = workers * SHARDS_PER_WORKER
    pieces: list[tuple[tuple[str, ...], Span | None]] = []
    loose: list[str] = []  # files read whole, grouped as they come

    def group_loose() -> None:
        size = math.ceil(len(loose) / min(len(loose), n))
        pieces.extend((tuple(loose[i:i + size]), None) for i in range(0, len(loose), size))
        loose.clear()

    for f in files:
        size = os.path.getsize(f) if can_split(f) else 0
        if size > 2 * SHARD_BYTES:
            if loose:
                group_loose()
            pieces += [((f,), span) for span in jsonl_spans(f, max(SHARD_BYTES, math.ceil(size / n)))]
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
        for item in tasks[0].cfg["paths"]:
            counts = [per_file.get(f, (0, 0)) for f in expand(item)]
            records, rejected = sum(c[0] for c in counts), sum(c[1] for c in counts)
            if records and rejected == records:
                report.rejected_inputs.append(item)
    qpath = out / "quarantine" / f"{name}.jsonl"
    if tasks[0].part is not None:
        parts = _part_dir(out, f"source.{name}")
        _concat_files([parts / f"native.{t.part:05d}.jsonl" for t in tasks], out / "sources" / f"{name}.jsonl")
        quarantines = [parts / f"quarantine.{t.part:05d}.jsonl" for t in tasks]
        quarantines = [q for q in quarantines if q.exists()]
        if qpath.exists():
            qpath.unlink()
        if quarantines:
            _concat_files(quarantines, qpath)
        shutil.rmtree(parts)
    _save_amounts(out, f"source.{name}", {k: sum(r["amounts"][k] for r in results) for k in results[0]["amounts"]})
    info = report.to_dict()
    info["quarantine"] = str(qpath.relative_to(out)) if report.quarantined else None
    write_atomic(out / "sources" / f"{name}.report.json", json.dumps(info, indent=2) + "\n")
    return info


def _ingest_all(recipe: DataRecipe, todo: list[str], out: Path, executor: Executor) -> dict[str, dict[str, Any]]:
    """Ingest the sources in `todo`; their reports by name."""
    reports: dict[str, dict[str, Any]] = {}
    tasks: dict[str, list[_IngestTask]] = {}
    for name in todo:
        cfg = recipe.sources[name].model_dump()
        if cfg["optional"] and not _input_signature(cfg["paths"], optional=True):
            _write_native([], out / "sources" / f"{name}.jsonl")
            _save_amounts(out, f"source.{name}", dict.fromkeys(AMOUNTS, 0))  # nothing, in any unit
            qpath = out / "quarantine" / f"{name}.jsonl"
            if qpath.exists():
                qpath.unlink()
            reports[name] = ReadReport().to_dict() | {"quarantine": None, "missing": True}
            write_atomic(out / "sources" / f"{name}.report.json", json.dumps(reports[name], indent=2) + "\n")
            continue
        tasks[name] = _ingest_tasks(name, cfg, out, executor.workers)
    flat = [t for ts in tasks.values() for t in ts]
    results = iter(_map_largest_first(executor, _ingest, flat, _task_bytes))
    for name, ts in tasks.items():
        reports[name] = _finish_ingest(name, out, ts, [next(results) for _ in ts])
    return {name: reports[name] for name in todo}


def _task_bytes(task: _IngestTask) -> int:
    if task.span is not None:
        return task.span.end - task.span.start
    return sum(0 if is_url(f) else os.path.getsize(f) for f in task.files)


def _map_largest_first(executor: Executor, fn: Callable[[Any], Any], items: list[Any],
                       size: Callable[[Any], int]) -> list[Any]:
    """`executor.map(fn, items)`, submitted largest first (the pool takes them in order, so the
    long tasks do not end up last); results in the order of `items`."""
    order = sorted(range(len(items)), key=lambda i: -size(items[i]))
    results = executor.map(fn, [items[i] for i in order])
    out: list[Any] = [None] * len(items)
    for i, r in zip(order, results, strict=True):
        out[i] = r
    return out


# ---- stage 2: outputs ----------------------------------------------------------------------------

_STEPS_CACHE: dict[str, list[Step]] = {}


def _steps(entries_json: str) -> list[Step]:
    """The steps of an output, built once per process."""
    steps = _STEPS_CACHE.get(entries_json)
    if steps is None:
        steps = _STEPS_CACHE[entries_json] = make_steps(json.loads(entries_json))
    return steps


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


def _phases(steps: list[Step]) -> tuple[list[_Phase], int]:
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
    entries: str
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
    steps = _steps(task.entries)
    phases, _ = _phases(steps)
    phase = phases[task.phase]
    contexts = {i: StepContext(seed=task.seed) for i in range(len(steps))}
    stream: Iterable[Trajectory] = _read_shards(task.shards)
    if phase.apply is not None:
        stream = steps[phase.apply].apply_planned(stream, task.plan, contexts[phase.apply])
    for i in phase.maps:
        stream = steps[i].run(stream, contexts[i])
    result: dict[str, Any] = {}
    out = Path(task.out)
    if task.final:
        with _Sink(out, task.name, task.formats, task.part) as sink:
            for t in stream:
                sink.add(t)
            result["scan"] = sink.close()
            result["records"] = sink.n
    elif _passes_through(phase):  # only summaries: the next phase reads this phase's input again
        assert phase.summarize is not None
        step = steps[phase.summarize]
        result["summaries"] = step.pack_summaries([step.summary(t, contexts[phase.summarize]) for t in stream])
    else:
        path = _part_dir(out, task.name) / f"p{task.phase}.{task.part:05d}.jsonl"
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
    entries: str
    seed: int
    first: int
    """Index of the first step to run (the earlier ones ran in phases)."""
    shards: tuple[Shard, ...]
    formats: tuple[str, ...]


def _run_stream(task: _StreamTask) -> dict[str, Any]:
    """Steps `first..` over the shards, in this one process, into the final files (a task)."""
    steps = _steps(task.entries)
    contexts = {i: StepContext(seed=task.seed) for i in range(task.first, len(steps))}
    stream: Iterable[Trajectory] = _read_shards(task.shards)
    for i in range(task.first, len(steps)):
        stream = steps[i].run(stream, contexts[i])
    with _Sink(Path(task.out), task.name, task.formats) as sink:
        for t in stream:
            sink.add(t)
        scan = sink.close()
    return {"scan": scan, "records": sink.n,
            "counts": {i: dict(c.stats.counts) for i, c in contexts.items() if c.stats.counts}}


@dataclass(frozen=True)
class _NegativesTask:
    out: str
    name: str
    spec: dict[str, Any]
    seed: int
    formats: tuple[str, ...]
    decontaminate: dict[str, Any] | None
    """The recipe's `decontaminate` step, applied to each input first."""
    agent_records: int


def _run_negatives(task: _NegativesTask) -> dict[str, Any]:
    """A `negatives` output (a task: one process; its memory is bounded by its `n`)."""
    out = Path(task.out)
    spec = NegativesOutput.model_validate(task.spec)
    stats = StepStats()
    clean: list[StepContext] = []

    def inputs(names: list[str]) -> Iterable[Trajectory]:
        stream: Iterable[Trajectory] = _read_shards([whole(out / "sources" / f"{s}.jsonl") for s in names])
        if task.decontaminate is not None:
            clean.append(StepContext(seed=task.seed))
            stream = make_steps([{"type": "decontaminate", **task.decontaminate}])[0].run(stream, clean[-1])
        return stream

    with _Sink(out, task.name, task.formats) as sink:
        for t in build_negatives(inputs(spec.chat_from), inputs(spec.tools_from), inputs(spec.queries_from),
                                 spec.config, task.seed, stats, cache_dir=out / ".cache",
                                 agent_records=task.agent_records):
            sink.add(t)
        scan = sink.close()
    steps = [{"step": f"decontaminate:{role}", "counts": ctx.stats.to_dict()}
             for role, ctx in zip(("chat", "tools", "queries"), clean, strict=False)]
    steps.append({"step": "negatives", "config": {"agent_records": task.agent_records}, "counts": stats.to_dict()})
    return {"scan": scan, "records": sink.n, "steps": steps}


def _entries(recipe: DataRecipe, name: str) -> str:
    """The step entries of output `name` (`DataRecipe.step_entries`) as a task carries them."""
    return json.dumps(recipe.step_entries(name), sort_keys=True)


def _single_task(recipe: DataRecipe, name: str, out_dir: Path, workers: int,
                 agent_records: int = 0) -> tuple[Callable[[Any], dict[str, Any]], Any] | None:
    """The one task that builds output `name`, when one task does (negatives; an output read in
    one shard); None when it runs in phases over shards."""
    spec = recipe.outputs[name]
    formats = tuple(recipe.write)
    if isinstance(spec, NegativesOutput):
        decon = recipe.decontaminate.model_dump(mode="json") if recipe.decontaminate else None
        return _run_negatives, _NegativesTask(str(out_dir), name, spec.model_dump(mode="json", by_alias=True),
                                              recipe.seed, formats, decon, agent_records)
    sources = [out_dir / "sources" / f"{s}.jsonl" for s in spec.from_]
    if workers > 1 and len(plan_shards(sources, workers * SHARDS_PER_WORKER)) > 1:
        return None
    return _run_stream, _StreamTask(str(out_dir), name, _entries(recipe, name), recipe.seed, 0,
                                    tuple(whole(p) for p in sources), formats)


def _run_output(recipe: DataRecipe, name: str, out_dir: Path, executor: Executor,
                started: Callable[[], dict[str, Any]] | None = None, agent_records: int = 0) -> dict[str, Any]:
    """Build output `name` (`started`: its single task, already submitted; `agent_records`: what
    the share of a negatives output is taken of)."""
    spec = recipe.outputs[name]
    formats = tuple(recipe.write)
    parts = _part_dir(out_dir, name)
    if parts.exists():
        shutil.rmtree(parts)
    single = _single_task(recipe, name, out_dir, executor.workers, agent_records) if started is None else None
    if started is None and single is not None:
        started = executor.submit(*single)
    if isinstance(spec, NegativesOutput):
        assert started is not None
        res = started()
        _save_scan(out_dir, name, [res["scan"]])
        _write_file_formats((str(out_dir), name, list(formats)))
        return {"records": res["records"], "steps": res["steps"]}

    assert isinstance(spec, StepsOutput)
    entries = _entries(recipe, name)
    steps = _steps(entries)
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
            tasks = [_PhaseTask(str(out_dir), name, entries, recipe.seed, k, inp, plan, i, final, formats)
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
            res = executor.map(_run_stream, [_StreamTask(str(out_dir), name, entries, recipe.seed, tail,
                                                         tuple(s for inp in inputs for s in inp), formats)])[0]
            merge([res])
            scans, records = [res["scan"]], res["records"]
        else:
            _concat_parts(out_dir, name, formats, len(results))
            scans, records = [r["scan"] for r in results], sum(r["records"] for r in results)
    if parts.exists():
        shutil.rmtree(parts)
    _save_scan(out_dir, name, scans)
    _write_file_formats((str(out_dir), name, list(formats)))
    step_stats = [{"step": step.name, "config": step.config.model_dump(mode="json"),
                   "counts": ctx.stats.to_dict()} for step, ctx in zip(steps, contexts, strict=True)]
    return {"records": records, "steps": step_stats}


# ---- stage 3: mix --------------------------------------------------------------------------------

def mix_plan(recipe: DataRecipe, amounts: dict[str, float], basis: float | None = None) -> dict[str, float]:
    """Repeat factor per output: its weight, times the chat factor for chat outputs.

    Args:
        amounts: Each output's amount in the mix's unit (`mix.by`: trained tokens or records).
        basis: The agent amount general chat is measured against when `mix.basis` is `sources`.
    """
    assert recipe.mix is not None
    mix = recipe.mix
    included = [o for o in recipe.outputs if o not in mix.exclude]
    chat = recipe.chat_outputs() & set(included)
    factors = {o: mix.weights.get(o, 1.0) for o in included}
    if mix.chat_ratio is not None and chat:
        agent_total = basis if mix.basis == "sources" and basis is not None else \
            sum(factors[o] * amounts[o] for o in included if o not in chat)
        chat_total = sum(factors[o] * amounts[o] for o in chat)
        if chat_total:
            scale = mix.chat_ratio * agent_total / chat_total
            for o in chat:
                factors[o] *= scale
    return factors


def _amount(task: tuple[Shard, str]) -> int:
    """Records, or trained approx tokens, of a shard of a native file (a task)."""
    shard, by = task
    return sum(1 if by == "records" else trained_approx_tokens(t) for t in _read_shards([shard]))


def mix_amounts(recipe: DataRecipe, out_dir: Path, executor: Executor | None = None) -> tuple[dict[str, float], float]:
    """Each output's amount in the mix's unit, and the agent sources' (the `sources` basis).

    The amounts were counted where the records were written (`.state/amounts`); a file without
    them (a folder built by an older version) is read again, in shards on the executor.
    """
    assert recipe.mix is not None
    by = recipe.mix.by
    agent_sources = sorted({s for o in recipe.outputs.values() for s in (o.from_ if isinstance(o, StepsOutput) else [])
                            if recipe.sources[s].role == "agent"})
    names = [*recipe.outputs, *(f"source.{s}" for s in agent_sources)]
    files = [out_dir / "native" / f"{o}.jsonl" for o in recipe.outputs] + \
        [out_dir / "sources" / f"{s}.jsonl" for s in agent_sources]
    totals: list[float | None] = []
    for name in names:
        saved = _amounts_path(out_dir, name)
        kept = read_state(saved)
        totals.append(float(kept[by]) if isinstance(kept, dict) and by in kept else None)
    missing = [i for i, t in enumerate(totals) if t is None]
    n = executor.workers * SHARDS_PER_WORKER if executor is not None and executor.workers > 1 else 1
    shards = [plan_shards([files[i]], n) for i in missing]
    flat = [(s, by) for ss in shards for s in ss]
    counts = iter(executor.map(_amount, flat) if executor is not None else [_amount(t) for t in flat])
    for i, ss in zip(missing, shards, strict=True):
        totals[i] = float(sum(next(counts) for _ in ss))  # sums of ints: exact in any grouping
    amounts = {o: t or 0.0 for o, t in zip(recipe.outputs, totals, strict=False)}
    return amounts, sum(t or 0.0 for t in totals[len(recipe.outputs):])


@dataclass(frozen=True)
class _ScatterTask:
    tmp: str
    task: int
    output: str
    factor: float
    seed: int
    shard: Shard
    buckets: int


def _mix_scatter(task: _ScatterTask) -> int:
    """Copies of an output's records, each into the bucket of its shuffle key (a task)."""
    files = [open(Path(task.tmp) / f"s{task.task:05d}.b{i:05d}", "w", encoding="utf-8")  # noqa: SIM115
             for i in range(task.buckets)]
    n = 0
    frac = task.factor - int(task.factor)
    try:
        for raw in _shard_lines(task.shard):
            d = json.loads(raw)
            tid0 = d["id"]
            copies = int(task.factor) + (unit(task.seed, "mix", task.output, tid0) < frac)
            for k in range(copies):
                # the output in the id: one trajectory may be in two outputs (both formats at full size)
                tid = f"{task.output}/{tid0}" if k == 0 else f"{task.output}/{tid0}#{k}"
                d["id"] = tid
                d["metadata"] = {**d.get("metadata", {}), "output": task.output}  # which output, for the report
                rec = dumps_data(d) + "\n"
                key = unit(task.seed, "shuffle", tid)
                files[min(int(key * task.buckets), task.buckets - 1)].write(
                    f"{key!r}\t{json.dumps(tid, ensure_ascii=False)}\t{rec}")
                n += 1
    finally:
        for f in files:
            f.close()
    return n


@dataclass(frozen=True)
class _GatherTask:
    tmp: str
    bucket: int
    scatters: int
    out: str
    name: str
    formats: tuple[str, ...]


def _mix_gather(task: _GatherTask) -> dict[str, Any]:
    """One bucket, sorted by shuffle key, into a shard of the mix's files (a task; memory: one bucket)."""
    rows = []
    for s in range(task.scatters):
        with (Path(task.tmp) / f"s{s:05d}.b{task.bucket:05d}").open(encoding="utf-8") as f:
            for row in f:
                key, tid, line = row.split("\t", 2)
                rows.append((float(key), json.loads(tid), line))
    rows.sort(key=lambda r: (r[0], r[1]))
    with _Sink(Path(task.out), task.name, task.formats, task.bucket) as sink:
        for _, _, line in rows:
            sink.add_line(line, Trajectory.model_validate_json(line))
        scan = sink.close()
    return {"scan": scan, "records": sink.n}


def _mix(recipe: DataRecipe, out_dir: Path, executor: Executor) -> dict[str, Any]:
    assert recipe.mix is not None
    name = recipe.mix.name
    formats = tuple(recipe.write)
    amounts, basis = mix_amounts(recipe, out_dir, executor)
    factors = mix_plan(recipe, amounts, basis)
    # buckets of about BUCKET_BYTES each: a task holds one bucket in memory at a time
    expected_bytes = sum(f * (out_dir / "native" / f"{o}.jsonl").stat().st_size for o, f in factors.items())
    n_buckets = min(MAX_BUCKETS, max(1, math.ceil(expected_bytes / BUCKET_BYTES)))
    if executor.workers > 1:  # and enough of them to keep every worker busy
        n_buckets = min(MAX_BUCKETS, max(n_buckets, min(executor.workers * SHARDS_PER_WORKER,
                                                        math.ceil(expected_bytes / SHARD_BYTES))))
    n_shards = executor.workers * SHARDS_PER_WORKER if executor.workers > 1 else 1
    parts = _part_dir(out_dir, name)
    if parts.exists():
        shutil.rmtree(parts)
    (out_dir / PARTS).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir / PARTS) as tmp:
        scatter = [(o, f, s) for o, f in factors.items()
                   for s in (plan_shards([out_dir / "native" / f"{o}.jsonl"], n_shards)
                             or [whole(out_dir / "native" / f"{o}.jsonl")])]
        tasks = [_ScatterTask(tmp, k, o, f, recipe.seed, s, n_buckets) for k, (o, f, s) in enumerate(scatter)]
        written: dict[str, int] = dict.fromkeys(factors, 0)
        for (o, _, _), n in zip(scatter, executor.map(_mix_scatter, tasks), strict=True):
            written[o] += n
        gathered = executor.map(_mix_gather, [_GatherTask(tmp, i, len(tasks), str(out_dir), name, formats)
                                              for i in range(n_buckets)])
    _concat_parts(out_dir, name, formats, n_buckets)
    shutil.rmtree(parts)
    _save_scan(out_dir, name, [g["scan"] for g in gathered])
    _write_file_formats((str(out_dir), name, list(formats)))
    return {"factors": {k: round(v, 4) for k, v in factors.items()}, "records_per_output": written,
            "records": sum(written.values()), "chat_outputs": sorted(recipe.chat_outputs()),
            "by": recipe.mix.by, "basis": recipe.mix.basis, "chat_ratio": recipe.mix.chat_ratio,
            "amounts": {k: round(v, 1) for k, v in amounts.items()}, "agent_sources_amount": round(basis, 1)}


# ---- driver --------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    out = {"agentflan": __version__, "python": platform.python_version()}
    for pkg in ("pydantic", "pyyaml", "click", "fsspec", "transformers", "tokenizers", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def build(recipe: DataRecipe, resolved: dict[str, Any], out_dir: str | Path, *, workers: int | None = None,
          resume: bool = True, echo: Echo | None = None) -> BuildResult:
    """Run `recipe` into `out_dir` (see the module doc for the stages and the layout)."""
    say = echo or (lambda s: log.info(s))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / PARTS).exists():  # shard files of a build that was killed
        shutil.rmtree(out / PARTS)
    n_workers = workers or recipe.workers
    result = BuildResult(out)
    write_atomic(out / "resolved_recipe.yaml", yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    write_atomic(out / "versions.json", json.dumps(versions(), indent=2) + "\n")

    def stage(name: str, fingerprint: str) -> bool:
        if resume and _done(out, name, fingerprint):
            result.stages_skipped.append(name)
            return False
        result.stages_run.append(name)
        return True

    with make_executor(recipe.executor, n_workers) as executor:
        # 1. ingest (a source no output reads is not read)
        src_fp = {}
        todo = []
        used = recipe.used_sources()
        for name in recipe.sources:
            if name not in used:
                say(f"source {name}: no output reads it; not read")
        for name, src in recipe.sources.items():
            if name not in used:
                continue
            src_fp[name] = _fp(src.model_dump(), _input_signature(src.paths, src.optional), __version__)
            if stage(f"source.{name}", src_fp[name]):
                todo.append(name)
        for name, report in _ingest_all(recipe, todo, out, executor).items():
            if report.get("missing"):
                say(f"ingest {name}: no input file matches {recipe.sources[name].paths}; optional, so empty")
            say(f"ingest {name}: {report['records']} records, {report['converted']} converted, "
                f"{report['quarantined']} quarantined, {sum(report['dropped'].values())} dropped")
            _mark(out, f"source.{name}", src_fp[name])

        # 2. outputs: one after the other, each spread over the workers; the step outputs that are
        # one task each (small ones) start at once, beside the others' shards. Negatives come after
        # the other outputs: their counts are a share of the agent records.
        out_fp = {}
        decon = recipe.decontaminate.model_dump(mode="json") if recipe.decontaminate else None
        if decon and decon["against"]:
            decon["against_files"] = _input_signature(decon["against"])

        def output_fp(name: str, agent_records: int = 0) -> str:
            spec = recipe.outputs[name]
            deps = spec.from_ if isinstance(spec, StepsOutput) else spec.sources()
            return _fp(spec.model_dump(mode="json", by_alias=True), recipe.seed, recipe.write,
                       [src_fp[d] for d in deps], __version__, decon, agent_records)

        todo = []
        for name, spec in recipe.outputs.items():
            if isinstance(spec, StepsOutput):
                out_fp[name] = output_fp(name)
                if stage(f"output.{name}", out_fp[name]):
                    todo.append(name)
        started = {}
        if executor.workers > 1:
            for name in todo:
                single = _single_task(recipe, name, out, executor.workers)
                if single is not None:
                    started[name] = executor.submit(*single)
        negatives = [n for n, o in recipe.outputs.items() if isinstance(o, NegativesOutput)]
        agent_left = set(recipe.agent_outputs()) & set(todo)
        neg_records: dict[str, int] = {}

        def start_negatives() -> None:
            """Submit the negatives outputs (a task each) once the agent outputs whose records they
            take a share of are written: they run beside the outputs still to come."""
            agent_records = sum(_records(out, o) for o in recipe.agent_outputs())
            for name in negatives:
                out_fp[name] = output_fp(name, agent_records)
                if stage(f"output.{name}", out_fp[name]):
                    neg_records[name] = agent_records
                    single = _single_task(recipe, name, out, executor.workers, agent_records)
                    assert single is not None
                    started[name] = executor.submit(*single)

        if not agent_left:
            start_negatives()
        for name in [*todo, *negatives]:
            if name in negatives and name not in neg_records:
                continue  # already built (resumed)
            info = _run_output(recipe, name, out, executor, started.get(name), neg_records.get(name, 0))
            write_atomic(out / "native" / f"{name}.steps.json", json.dumps(info, indent=2) + "\n")
            say(f"output {name}: {info['records']} records")
            _mark(out, f"output.{name}", out_fp[name])
            if name in agent_left:
                agent_left.discard(name)
                if not agent_left:
                    start_negatives()

        # 3. mix
        if recipe.mix is not None:
            mix_fp = _fp(recipe.mix.model_dump(), recipe.seed, recipe.write, [out_fp[o] for o in recipe.outputs],
                         [src_fp[s] for s in sorted(used)])
            if stage("mix", mix_fp):
                info = _mix(recipe, out, executor)
                write_atomic(out / "native" / f"{recipe.mix.name}.mix.json", json.dumps(info, indent=2) + "\n")
                say(f"mix {recipe.mix.name}: {info['records']} records, factors {info['factors']}")
                _mark(out, "mix", mix_fp)

        # 4. report
        from agentflan.pipeline.report import write_report

        result.stats = write_report(recipe, out, charts=recipe.report, run=executor.map)
        say(f"report: {out / 'report.md'}")
    if (out / PARTS).exists():
        shutil.rmtree(out / PARTS)
    return result


def _records(out: Path, output: str) -> int:
    return int(json.loads((out / "native" / f"{output}.steps.json").read_text())["records"])
