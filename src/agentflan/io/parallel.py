"""`convert` on several processes: this process reads the records, workers convert them.

Reading (decoding a record) costs a fraction of converting it (parsing actions, building and
checking the trajectory, writing the output record and encoding it), so one reader feeds
several forked workers in batches (a local JSONL file: spans of its lines, which the workers read
themselves). Each worker writes a batch's encoded records to a file of its own, and this process
copies the files into the output in input order: the output, the accounting report and the
quarantine are the same as a one-process convert's, byte for byte.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from agentflan.errors import ParseError
from agentflan.io.base import Reader, ReadReport
from agentflan.io.files import (
    RawRecord,
    Span,
    base_suffix,
    can_split,
    decode_jsonl_line,
    expand,
    is_url,
    iter_records,
    jsonl_lines,
    jsonl_spans,
)
from agentflan.io.writers.base import Writer, WriteReport

BATCH = 256
"""Records per task."""
AHEAD = 2
"""Tasks submitted ahead of the one being copied, per worker."""
_WORKER: dict[str, Any] = {}
"""The reader, the writer and the folder of the batches' files, inherited by the forked workers
(never pickled)."""

Row = tuple[str, int, int, bytes] | tuple[str, Span] | RawRecord
"""What is cheapest to send to a worker: a span of a local JSONL file (path, span: the worker reads
its lines), a JSONL line undecoded (path, line, index, bytes: compressed files), or a `RawRecord`
(JSON arrays, Parquet, lines that could not be read)."""

SPAN_BYTES = 256 << 10
"""The part of a local JSONL file one task reads (whole lines)."""


PARALLEL_MIN_BYTES = 2 << 20
"""Inputs smaller than this are converted in one process whatever `workers` says: starting the
workers costs more than they save (measured: 1.3 MB of FireAct ReAct converts faster in one
process, 2.7 MB faster with two; docs/benchmarks.md)."""


def worth_parallel(paths: str | Sequence[str]) -> bool:
    """Whether the inputs are large enough to gain from worker processes (remote inputs: assumed so)."""
    total = 0
    for item in [paths] if isinstance(paths, str) else paths:
        for f in expand(item):
            if is_url(f):
                return True
            total += Path(f).stat().st_size
            if total >= PARALLEL_MIN_BYTES:
                return True
    return False


def worker_init() -> None:
    """A forked worker's signals: Ctrl-C is ignored (the driver receives it, stops the workers and
    cleans up, with one message), and SIGTERM ends it quietly (the driver's own SIGTERM handler,
    which the fork copied, would raise in it and print a traceback when the driver stops it)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def can_run_parallel(writer: Writer) -> bool:
    """Whether `writer` writes record by record (every JSON writer; not Parquet) and this platform forks."""
    from multiprocessing import get_all_start_methods

    return type(writer).write is Writer.write and "fork" in get_all_start_methods()


@dataclass
class _Rejected:
    """Stands in for the reader's quarantine in a worker: keeps what to quarantine, in order."""

    items: list[tuple[RawRecord, ParseError]] = field(default_factory=list)
    count: int = 0

    def add(self, raw: RawRecord, err: ParseError) -> None:
        self.items.append((raw, err))
        self.count += 1

    def close(self) -> None:
        pass


@dataclass
class _Result:
    part: str
    """The file of the batch's encoded records, one a line (the worker writes it; the driver copies it)."""
    read: ReadReport
    write: WriteReport
    rejected: list[tuple[RawRecord, ParseError]]
    error: ParseError | None = None


def _convert_batch(rows: list[Row], part: str) -> _Result:
    """Convert a batch in a worker into the file `part`: the reader and writer are this process's
    copies of the driver's."""
    reader: Reader = _WORKER["reader"]
    writer: Writer = _WORKER["writer"]
    reader.report, writer.report = ReadReport(), WriteReport()
    rejected = _Rejected()
    if reader.quarantine is not None:
        reader.quarantine = rejected  # type: ignore[assignment]
    error = None
    with open(part, "wb") as out:
        try:
            for raw in _raw_records(rows):
                traj = reader._convert(raw)
                data = None if traj is None else writer.encode_counted(traj)
                if data is not None:
                    out.write(data + b"\n")
        except ParseError as e:  # on_error="raise": the driver raises it after writing what came before
            error = e
    return _Result(part, reader.report, writer.report, rejected.items, error)


def _raw_records(rows: list[Row]) -> Iterator[RawRecord]:
    for row in rows:
        if isinstance(row, RawRecord):
            yield row
        elif isinstance(row[1], Span):
            yield from iter_records(*row)
        else:
            yield decode_jsonl_line(*row)


def _batches(reader: Reader, paths: str | Sequence[str]) -> Iterator[tuple[int, list[Row]]]:
    """The records `reader.read` would read (files counted, `limit` applied), in batches, each with
    the position of the input (an item of `paths`) it comes from."""
    items = [paths] if isinstance(paths, str) else list(paths)
    n = 0
    for k, files in enumerate([expand(item) for item in items]):  # every input is checked before reading
        batch: list[Row] = []
        for path in files:
            reader.report.files += 1
            rows: Iterator[Row]
            if reader.limit is None and can_split(path):  # the workers read the lines themselves
                if batch:
                    yield k, batch
                    batch = []
                for span in jsonl_spans(path, SPAN_BYTES):
                    yield k, [(path, span)]
                continue
            if base_suffix(path) in (".jsonl", ".ndjson"):
                rows = (line if isinstance(line, RawRecord) else (path, *line) for line in jsonl_lines(path))
            else:
                rows = iter_records(path)
            for row in rows:
                if reader.limit is not None and n >= reader.limit:
                    if batch:
                        yield k, batch
                    return
                batch.append(row)
                n += 1
                if len(batch) >= BATCH:
                    yield k, batch
                    batch = []
        if batch:
            yield k, batch


def _convert_item(item: tuple[int, int, list[Row]]) -> tuple[int, _Result]:
    k, i, rows = item
    return k, _convert_batch(rows, os.path.join(_WORKER["parts"], f"{i:06d}.jsonl"))


def convert_parallel(reader: Reader, writer: Writer, paths: str | Sequence[str], output: Path, workers: int,
                     progress: Callable[[Iterator[Any]], Iterator[Any]] | None = None) -> None:
    """Convert `paths` into `output` with `workers` processes; `reader.report`, `writer.report` and
    the reader's quarantine end as a one-process convert leaves them."""
    from multiprocessing import get_context

    items = [paths] if isinstance(paths, str) else list(paths)
    per_item = [[0, 0] for _ in items]  # records, rejected: an input whose records were all rejected is named

    def results(pool: Any) -> Iterator[tuple[int, _Result]]:
        """The batches' results in input order, at most `AHEAD` tasks a worker submitted at a time: a
        bad record (`on_error="raise"`) stops the reading with little work started after it, and
        the pool is never left feeding tasks while it is shut down (`Pool.terminate` can then
        wait forever on its task thread: seen in about 1 run in 200)."""
        tasks = ((k, i, rows) for i, (k, rows) in enumerate(_batches(reader, paths)))
        pending: deque[Any] = deque()

        def submit(n: int) -> None:
            pending.extend(pool.apply_async(_convert_item, (t,)) for t in islice(tasks, n))

        submit(AHEAD * workers)
        while pending:
            result = pending.popleft().get()
            submit(1)
            yield result

    def blocks(pool: Any) -> Iterator[bytes]:
        """The records of each batch, one a line (UTF-8), in input order."""
        for k, res in results(pool):
            reader.report.merge(res.read)
            per_item[k][0] += res.read.records
            per_item[k][1] += res.read.quarantined + res.read.skipped
            writer.report.written += res.write.written
            writer.report.unwritable.update(res.write.unwritable)
            writer.report.lossy.update(res.write.lossy)
            for raw, err in res.rejected:
                assert reader.quarantine is not None
                reader.quarantine.add(raw, err)
            with open(res.part, "rb") as f:
                yield f.read()
            os.unlink(res.part)
            if res.error is not None:
                raise res.error

    output.parent.mkdir(parents=True, exist_ok=True)
    parts = tempfile.mkdtemp(prefix=f".{output.name}.parts-", dir=output.parent)
    _WORKER.update(reader=reader, writer=writer, parts=parts)
    try:
        pool = get_context("fork").Pool(workers, initializer=worker_init)  # the workers inherit `_WORKER`
        try:
            if progress is None:  # whole batches as bytes: a fraction of the cost of copying records
                writer.write_lines(blocks(pool), output)
            else:  # record by record, for a progress bar that counts them (records hold no raw newline)
                records = (line for data in blocks(pool) for line in data.split(b"\n")[:-1])
                writer.write_encoded(progress(records), output)
        except ParseError:  # a bad record: the tasks already started finish, then the workers exit
            pool.close()
            pool.join()
            raise
        except BaseException:  # Ctrl-C, a full disk: stop the workers now
            pool.terminate()
            pool.join()
            raise
        pool.close()
        pool.join()
    finally:
        _WORKER.clear()
        shutil.rmtree(parts, ignore_errors=True)
    reader.report.rejected_inputs += [item for item, (n, bad) in zip(items, per_item, strict=True) if n and bad == n]
