"""What the build's stages share: shards of native files, the files a task writes, amounts.

A task reads its shard itself (a byte range of whole lines of a JSONL file) and writes its own
shard files (`Sink` with a part number), which the stage concatenates in order (`concat_parts`);
records never travel through the driver.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflan.io.files import atomic_output, expand, is_url, write_atomic, write_failed
from agentflan.io.writers import WRITERS
from agentflan.io.writers.base import Writer, encode_data
from agentflan.pipeline.executor import Executor
from agentflan.pipeline.report import Scan, scan_path
from agentflan.schema import Trajectory
from agentflan.schema.trajectory import json_dict_checked

PARTS = ".parts"
"""Shard files of the stage in progress (removed when it ends, and at the start of a build)."""

SHARD_BYTES = 1 << 20
"""Smallest shard worth a task of its own."""
SHARDS_PER_WORKER = 4
"""Shards per worker and phase: enough for the slowest shard not to hold the others up."""
BUCKET_BYTES = 16 * 2**20
MAX_BUCKETS = 1024


def atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp")


def read_native(path: Path) -> Iterator[Trajectory]:
    with path.open("rb") as f:
        for line in f:
            yield Trajectory.model_validate_json(line)


def native_line(traj: Trajectory) -> tuple[bytes, Trajectory]:
    """The native JSONL line of `traj` (UTF-8), and `traj` as a reader of that line sees it: the
    same object unless pydantic's JSON mode converted a value (a tuple, a date, a non-finite float)."""
    d, exact = json_dict_checked(traj)
    return encode_data(d) + b"\n", traj if exact else Trajectory.model_validate(d)


def write_native(trajs: Iterable[Trajectory], path: Path, seen: Callable[[Trajectory], None] | None = None) -> int:
    """Write `trajs` as native records; `seen` gets each as a reader of the file will see it."""
    n = 0
    with atomic_output(path, atomic_target(path)) as tmp, tmp.open("wb") as f:  # even on Ctrl-C
        for t in trajs:
            line, written = native_line(t)
            f.write(line)
            if seen is not None:
                seen(written)
            n += 1
    return n


def concat_files(parts: list[Path], target: Path) -> None:
    """Concatenate `parts` (in order) into `target`, atomically, and delete them."""
    with atomic_output(target, atomic_target(target)) as tmp, tmp.open("wb") as w:
        for p in parts:
            with p.open("rb") as r:
                shutil.copyfileobj(r, w, 1 << 20)
    for p in parts:
        p.unlink()


def input_signature(paths: list[str], optional: bool = False) -> list[tuple[str, int, int]]:
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


def shard_lines(shard: Shard) -> Iterator[bytes]:
    with open(shard.path, "rb") as f:
        f.seek(shard.start)
        pos = shard.start
        for line in f:
            if pos >= shard.end:
                return
            pos += len(line)
            yield line


def read_shards(shards: Iterable[Shard]) -> Iterator[Trajectory]:
    for shard in shards:
        for line in shard_lines(shard):
            yield Trajectory.model_validate_json(line)


# ---- what a task writes ------------------------------------------------------------------------------

def record_writers(formats: Iterable[str]) -> dict[str, Writer]:
    """The `write:` formats written record by record (every JSON writer); whole-file writers such
    as Parquet are written afterwards from the native file (`write_file_formats`)."""
    writers = {}
    for fmt in formats:
        if fmt == "native":
            continue
        writer = WRITERS.get(fmt)()
        if type(writer).write is Writer.write:
            writers[fmt] = writer
    return writers


def part_dir(out: Path, name: str) -> Path:
    return out / PARTS / name


class Sink:
    """The files of one output that one task writes: native, the record-by-record formats, and
    the report's counts. `part=None` writes the final files (atomically); a part number writes
    shard files that the driver concatenates."""

    def __init__(self, out: Path, name: str, formats: Iterable[str], part: int | None = None) -> None:
        self.writers = record_writers(formats)
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
                    path = atomic_target(final)
                else:
                    path = part_dir(out, name) / f"{fmt}.{part:05d}.jsonl"
                    path.parent.mkdir(parents=True, exist_ok=True)
                self.paths[fmt] = path
                self.files[fmt] = path.open("wb")
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> Sink:
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
        line, written = native_line(traj)  # formats and counts see what a reader of the native file sees
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


def concat_parts(out: Path, name: str, formats: Iterable[str], n_parts: int) -> None:
    """The final files of an output from its shard files, in shard order."""
    for fmt in ["native", *record_writers(formats)]:
        parts = [part_dir(out, name) / f"{fmt}.{i:05d}.jsonl" for i in range(n_parts)]
        concat_files(parts, out / fmt / f"{name}.jsonl")


def save_scan(out: Path, name: str, states: list[dict[str, Any]]) -> None:
    scan = Scan()
    for state in states:
        scan.merge(Scan.from_state(state))
    path = scan_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(scan.to_state(), ensure_ascii=False) + "\n")
    save_amounts(out, name, {"records": scan.stats.n, "trained_tokens": scan.trained})


AMOUNTS = ("records", "trained_tokens")
"""What a mix can count (`MixConfig.by`), kept for every output and source as it is written
(trained tokens of agent sources only: the mix weighs no other source)."""


def amounts_path(out: Path, name: str) -> Path:
    return out / ".state" / "amounts" / f"{name}.json"


def save_amounts(out: Path, name: str, amounts: dict[str, int]) -> None:
    path = amounts_path(out, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(amounts, sort_keys=True) + "\n")


def write_file_formats(args: tuple[str, str, list[str]]) -> None:
    """Formats that write a whole file (Parquet) from an output's native file (a task)."""
    out, name, formats = args
    for fmt in formats:
        if fmt == "native" or fmt in record_writers([fmt]):
            continue
        writer = WRITERS.get(fmt)()
        suffix = ".parquet" if fmt == "parquet" else ".jsonl"
        target = Path(out) / fmt / f"{name}{suffix}"
        with atomic_output(target, atomic_target(target).with_suffix(suffix)) as tmp:
            writer.write(read_native(Path(out) / "native" / f"{name}.jsonl"), tmp)


def map_largest_first(executor: Executor, fn: Callable[[Any], Any], items: list[Any],
                       size: Callable[[Any], int]) -> list[Any]:
    """`executor.map(fn, items)`, submitted largest first (the pool takes them in order, so the
    long tasks do not end up last); results in the order of `items`."""
    order = sorted(range(len(items)), key=lambda i: -size(items[i]))
    results = executor.map(fn, [items[i] for i in order])
    out: list[Any] = [None] * len(items)
    for i, r in zip(order, results, strict=True):
        out[i] = r
    return out

