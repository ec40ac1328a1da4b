"""Append-only JSONL logs that recover from a cut last line by themselves.

A record is appended as one line (JSON, then a newline). A process killed mid-write, or a disk
that fills up, leaves the file ending in part of a line: that is the only damage an append can
do, and it is repaired, not reported as bad input. Readers skip such a cut last line with a
warning; a writer drops it (`repair_tail`) before appending, so the next record starts on a line
of its own. A last line that is complete JSON but lost only its newline is kept. Anything wrong
before the last line is not a cut write, and stays an error for the caller to report.

Used by the evaluation logs (`eval.runlog`) and the client's request cache (`client`); only the
standard library, so that every layer may use it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class BadLine(ValueError):
    """A line before the last that is not JSON (not what an interrupted append leaves)."""

    def __init__(self, path: Path, line: int, error: json.JSONDecodeError) -> None:
        super().__init__(f"{path}:{line}: not a JSON line ({error.msg})")
        self.path = path
        self.line = line


def _cut_tail(data: bytes) -> tuple[int, bool]:
    """Where the last line of `data` starts, and whether it is cut (no newline and not JSON)."""
    if not data or data.endswith(b"\n"):
        return len(data), False
    start = data.rfind(b"\n") + 1
    return start, not _is_json(data[start:])


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return True


def read_records(path: str | os.PathLike[str]) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of the log at `path`; a cut last line is
    skipped with a warning.

    Raises:
        BadLine: A line before the last is not JSON.
    """
    return records_of(Path(path).read_bytes(), Path(path))


def records_of(data: bytes, p: Path) -> Iterator[tuple[int, Any]]:
    """`read_records` of the bytes `data` of the log at `p`."""
    start, cut = _cut_tail(data)
    if cut:
        log.warning("%s: the last line (%d bytes) was cut by an interrupted write; skipped (it is written "
                    "again when the run resumes)", p, len(data) - start)
        data = data[:start]
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            err = e if isinstance(e, json.JSONDecodeError) else json.JSONDecodeError("invalid UTF-8", "", 0)
            raise BadLine(p, n, err) from e


def repair_tail(path: str | os.PathLike[str]) -> int:
    """Make the log at `path` ready for appending: drop a cut last line (with a warning) or end a
    complete one with its newline. Returns how many bytes were dropped."""
    p = Path(path)
    if not p.exists():
        return 0
    with p.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        block = 1 << 16
        pos = size
        while pos > 0:  # back to the last newline, without reading a large log whole
            pos = max(0, pos - block)
            f.seek(pos)
            chunk = f.read(min(block, size - pos))
            i = chunk.rfind(b"\n")
            if i >= 0:
                pos += i + 1
                break
        f.seek(pos)
        tail = f.read()
        if _is_json(tail):
            f.write(b"\n")
            return 0
        f.truncate(pos)
    log.warning("%s: dropped the last line (%d bytes), cut by an interrupted write; it is written again", p,
                len(tail))
    return len(tail)
