"""Finding and opening inputs: local paths and globs, `.gz`/`.zst`, fsspec URLs (`hf://`, `s3://`).

Records are streamed: JSONL line by line, JSON (an array, one object, or concatenated objects)
element by element with their line numbers, Parquet batch by batch.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agentflan.errors import ConfigError, MissingDependencyError

_COMPRESSIONS = (".gz", ".zst")
_DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet")
HF_PREFIX = "hf://"


@dataclass(frozen=True)
class RawRecord:
    """One record of an input file, or why it could not be decoded."""

    path: str
    line: int | None
    index: int
    """0-based position of the record in its file."""
    value: Any = None
    error: str | None = None
    text: str | None = None
    """The undecodable text, kept for the quarantine file."""

    @property
    def origin(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else f"{self.path}#{self.index}"


def is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def base_suffix(path: str) -> str:
    """The data suffix of `path` with any compression suffix removed (`.jsonl.gz` -> `.jsonl`)."""
    p = path.lower()
    for c in _COMPRESSIONS:
        if p.endswith(c):
            p = p[: -len(c)]
    return os.path.splitext(p)[1]


def expand(paths: str | Sequence[str]) -> list[str]:
    """Expand globs and directories into a sorted list of data files; fail on no match."""
    items = [paths] if isinstance(paths, str) else list(paths)
    out: list[str] = []
    for item in items:
        if is_url(item):
            out.extend(_expand_url(item))
            continue
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        found = []
        for m in matches:
            if os.path.isdir(m):
                found.extend(sorted(
                    str(p) for p in Path(m).rglob("*")
                    if p.is_file() and base_suffix(str(p)) in _DATA_SUFFIXES))
            elif os.path.exists(m):
                found.append(m)
        if not found:
            raise ConfigError(f"no input files match {item!r}")
        out.extend(found)
    return out


def _fs(url: str) -> tuple[Any, str]:
    try:
        import fsspec
    except ImportError as e:  # pragma: no cover - fsspec is a core dependency
        raise MissingDependencyError("reading URLs needs fsspec: pip install fsspec") from e
    try:
        return fsspec.core.url_to_fs(url)  # type: ignore[no-any-return]
    except (ImportError, ValueError) as e:
        hint = " (pip install 'agentflan[hf]' for hf:// paths)" if url.startswith(HF_PREFIX) else ""
        raise MissingDependencyError(f"cannot open {url!r}: {e}{hint}") from e


def _expand_url(url: str) -> list[str]:
    fs, path = _fs(url)
    protocol = url.split("://", 1)[0]
    try:
        if fs.isdir(path):
            names = [p for p in fs.find(path) if base_suffix(p) in _DATA_SUFFIXES]
        else:
            names = fs.glob(path) if glob.has_magic(path) else ([path] if fs.exists(path) else [])
    except Exception as e:  # network, auth, offline mode: each filesystem raises its own types
        offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ConfigError(f"cannot list {url!r}{offline}: {type(e).__name__}: {e}") from e
    if not names:
        raise ConfigError(f"no input files match {url!r}")
    return [f"{protocol}://{n.split('://', 1)[-1]}" for n in sorted(names)]


def open_binary(path: str) -> IO[bytes]:
    """Open a local path or URL for reading, decompressing `.gz`/`.zst`."""
    raw: IO[bytes]
    if is_url(path):
        fs, p = _fs(path)
        raw = fs.open(p, "rb")
    else:
        raw = open(path, "rb")  # noqa: SIM115 - returned to the caller
    low = path.lower()
    if low.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw)  # type: ignore[return-value]
    if low.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
    return raw


def open_text(path: str) -> IO[str]:
    return io.TextIOWrapper(open_binary(path), encoding="utf-8")


def iter_records(path: str) -> Iterator[RawRecord]:
    """Yield the records of one file. Decoding errors become `RawRecord(error=...)`, never raise."""
    suffix = base_suffix(path)
    if suffix == ".parquet":
        yield from _iter_parquet(path)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _iter_jsonl(path)
    else:
        yield from _iter_json(path)


def _iter_jsonl(path: str) -> Iterator[RawRecord]:
    for lineno, index, line in jsonl_lines(path):
        yield decode_jsonl_line(path, lineno, index, line)


def jsonl_lines(path: str) -> Iterator[tuple[int, int, str]]:
    """(line number, record index, text) of each record line of a JSONL file, undecoded: a
    parallel convert reads them here and decodes them in its workers (`decode_jsonl_line`)."""
    index = 0
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            yield lineno, index, line
            index += 1


def decode_jsonl_line(path: str, lineno: int, index: int, line: str) -> RawRecord:
    try:
        return RawRecord(path, lineno, index, value=json.loads(line))
    except json.JSONDecodeError as e:
        return RawRecord(path, lineno, index, error=f"malformed JSON: {e.msg} (column {e.colno})",
                         text=line.rstrip("\n"))


JSON_CHUNK = 1 << 20
"""Characters read at a time from a JSON (not JSONL) file."""
_WS = re.compile(r"[ \t\r\n]*")
_ARRAY_SEP = re.compile(r"[ \t\r\n]*(?:,[ \t\r\n]*)?")
_NUMBER_TAIL = re.compile(r"[0-9eE.+-]*")


def _iter_json(path: str) -> Iterator[RawRecord]:
    """Decode a JSON array, a single object, or whitespace-separated objects, tracking lines.

    Streamed: memory holds the record being decoded and a chunk of text, not the file. A record
    cut by the end of the chunk fails to decode (a number decodes as its prefix) and is decoded
    again with more text; only at the end of the file is a failure a malformed record
    (its reading then holds the rest of the file, which cannot be read anyway).
    """
    decoder = json.JSONDecoder()
    with open_text(path) as f:
        buf = f.read(JSON_CHUNK)
        eof = not buf
        pos = counted = index = 0
        line = 1

        def more() -> bool:
            """Read more text (as much as is buffered ahead, so big records are decoded O(n) times)."""
            nonlocal buf, eof
            if eof:
                return False
            chunk = f.read(max(JSON_CHUNK, len(buf) - pos))
            if not chunk:
                eof = True
                return False
            buf += chunk
            return True

        def skip(p: int, chars: str | None = None) -> int:
            while True:
                if chars is None:
                    p = _WS.match(buf, p).end()  # type: ignore[union-attr]
                else:
                    while p < len(buf) and buf[p] in chars:
                        p += 1
                if p < len(buf) or not more():
                    return p

        pos = skip(pos, " \t\r\n\ufeff")
        in_array = pos < len(buf) and buf[pos] == "["
        if in_array:
            pos = skip(pos + 1)
        while pos < len(buf):
            if in_array and buf[pos] == "]":
                return
            if pos > JSON_CHUNK:  # drop what is decoded, counting its lines
                line += buf.count("\n", counted, pos)
                buf, pos, counted = buf[pos:], 0, 0
            line += buf.count("\n", counted, pos)
            counted = pos
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                except json.JSONDecodeError as e:
                    if more():
                        continue
                    err_line = line + buf.count("\n", pos, e.pos)
                    yield RawRecord(path, line, index,
                                    error=f"malformed JSON at line {err_line}: {e.msg}; the rest of the file "
                                          "cannot be read", text=buf[pos:pos + 2000])
                    return
                # a number cut by the chunk's end decodes as its prefix: decode it again with more text
                if not isinstance(value, (int, float)) or not _NUMBER_TAIL.fullmatch(buf, end) or not more():
                    break
            yield RawRecord(path, line, index, value=value)
            index += 1
            # the separator in one match; near the chunk's end, character by character with more text
            pos = (_ARRAY_SEP if in_array else _WS).match(buf, end).end()  # type: ignore[union-attr]
            if pos >= len(buf) - 1:
                pos = skip(end)
                if in_array and pos < len(buf) and buf[pos] == ",":
                    pos = skip(pos + 1)


def _iter_parquet(path: str) -> Iterator[RawRecord]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingDependencyError("reading Parquet needs pyarrow: pip install 'agentflan[parquet]'") from e
    with open_binary(path) as f:
        pf = pq.ParquetFile(f)
        index = 0
        for batch in pf.iter_batches(batch_size=1024):
            for row in batch.to_pylist():
                yield RawRecord(path, None, index, value=row)
                index += 1
