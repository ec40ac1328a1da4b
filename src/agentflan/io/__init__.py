"""Reading and writing trajectories: `read`, `convert`, and the reader/writer registries."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflan.io.base import OnError, Quarantine, Reader, ReadReport
from agentflan.io.detect import detect
from agentflan.io.parallel import can_run_parallel, convert_parallel, worth_parallel
from agentflan.io.readers import READERS
from agentflan.io.writers import WRITERS
from agentflan.io.writers.base import Writer, WriteReport
from agentflan.options import check_kwargs
from agentflan.schema import Trajectory


def make_reader(paths: str | Sequence[str], fmt: str | None = None, *, on_error: OnError = "quarantine",
                quarantine: str | Path | None = None, **options: Any) -> Reader:
    """A reader for `paths` (format detected when `fmt` is None).

    Raises:
        ConfigError: An unknown format, or an option the reader does not take (with the valid ones).
    """
    name = fmt or detect(paths)
    cls = READERS.get(name)
    options = check_reader_options(name, options)
    q = Quarantine(quarantine) if quarantine is not None else None
    return cls(on_error=on_error, quarantine=q, **options)


def check_reader_options(name: str, options: dict[str, Any], what: str = "reader option") -> dict[str, Any]:
    """`options` checked against reader `name`'s signature (values coerced to their types)."""
    return check_kwargs(READERS.get(name), options, what=f"{name} {what}",
                        reserved={"on_error": "--on-error (recipes: on_error)",
                                  "quarantine": "--quarantine (builds: quarantine/<source>.jsonl)"})


def read(paths: str | Sequence[str], fmt: str | None = None, **kwargs: Any) -> Iterator[Trajectory]:
    """Stream trajectories from `paths`; bad records are skipped (or quarantined) and counted.

    For example `list(read("data/*.jsonl", "react", on_error="raise"))`.
    """
    reader = make_reader(paths, fmt, **kwargs)
    try:
        yield from reader.read(paths)
    finally:
        if reader.quarantine is not None:
            reader.quarantine.close()


@dataclass
class ConvertResult:
    reader: str
    writer: str
    read: ReadReport
    write: WriteReport
    quarantine: Path | None
    dataset_info: dict[str, Any] | None = None
    """The writer's registration entry for other tools (LLaMA-Factory's `dataset_info.json`), if any."""

    def to_dict(self) -> dict[str, Any]:
        return {"from": self.reader, "to": self.writer, "read": self.read.to_dict(),
                "write": self.write.to_dict(), "quarantine": str(self.quarantine) if self.quarantine else None}


def default_quarantine_path(output: Path) -> Path:
    name = output.name.split(".")[0]
    return output.with_name(f"{name}.quarantine.jsonl")


def convert(paths: str | Sequence[str], output: str | Path, *, to: str = "native", fmt: str | None = None,
            on_error: OnError = "quarantine", quarantine: str | Path | None = None,
            reader_options: dict[str, Any] | None = None,
            progress: Callable[[Iterator[Any]], Iterator[Any]] | None = None, workers: int = 1) -> ConvertResult:
    """Read `paths`, write them to `output` in format `to`; every record is accounted for.

    Args:
        paths: Files, globs, directories or fsspec URLs (`hf://datasets/...`).
        output: Output file; `.jsonl`/`.json` (+`.gz`/`.zst`) or `.parquet` for the parquet writer.
        to: Writer name.
        fmt: Reader name (detected when None).
        on_error: Policy for bad records.
        quarantine: Quarantine file (default `<output stem>.quarantine.jsonl` beside the output).
        reader_options: Reader-specific options (e.g. `{"dfs_retries": "strip"}`).
        progress: Wraps the stream of records (e.g. a progress bar).
        workers: Processes that convert (this one reads); the output, report and quarantine are
            the same with any number. Whole-file writers (Parquet) and inputs under
            `PARALLEL_MIN_BYTES` (2 MiB) use one.
    """
    output = Path(output)
    writer: Writer = WRITERS.get(to)()
    qpath = Path(quarantine) if quarantine is not None else default_quarantine_path(output)
    reader = make_reader(paths, fmt, on_error=on_error, quarantine=qpath if on_error == "quarantine" else None,
                         **(reader_options or {}))
    if qpath.exists() and on_error == "quarantine":
        qpath.unlink()  # a stale file from an earlier run would mislead
    try:
        # the size first: `can_run_parallel` imports multiprocessing (3.6 ms), which a small input never needs
        if workers > 1 and worth_parallel(paths) and can_run_parallel(writer):
            convert_parallel(reader, writer, paths, output, workers, progress)
        else:
            stream = reader.read(paths)
            writer.write(progress(stream) if progress else stream, output)
    finally:
        if reader.quarantine is not None:
            reader.quarantine.close()
    used_q = qpath if reader.quarantine is not None and reader.quarantine.count else None
    return ConvertResult(reader.name, writer.name, reader.report, writer.report, used_q, writer.dataset_info(output))


__all__ = ["READERS", "WRITERS", "ConvertResult", "ReadReport", "Reader", "WriteReport", "Writer",
           "check_reader_options", "convert", "detect", "make_reader", "read"]
