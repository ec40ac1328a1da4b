"""Finding and opening inputs: local paths and globs, `.gz`/`.zst`, fsspec URLs (`hf://`, `s3://`).

Records are streamed: JSONL line by line, JSON (an array, one object, or concatenated objects)
element by element with their line numbers, Parquet batch by batch.

Hostile input never stops a read: a record that cannot be decoded becomes a `RawRecord` with an
`error` and a `reason` code, which the reader quarantines or skips like any bad record:
`malformed_json`, `nul_byte` (a NUL byte where JSON allows none), `invalid_utf8` (the raw bytes
are kept), `too_deep` (nesting beyond what the JSON decoder can recurse into), `too_large` (a line
over `MAX_RECORD_BYTES`, never held in memory whole), `lone_surrogate` (a string escape such as
`"\\ud800"` that is not text and cannot be written as UTF-8), `corrupt_file` (a truncated or bad
`.gz`/`.zst`, or a file that is not Parquet). A UTF-8 BOM and CRLF line ends are read as usual;
of duplicate keys in an object the last wins, as in Python, JavaScript and jq.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import glob
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from agentflan.errors import ConfigError, MissingDependencyError, WriteFailed
from agentflan.schema.checks import MAX_DEPTH

_COMPRESSIONS = (".gz", ".zst")
_DATA_SUFFIXES = (".json", ".jsonl", ".ndjson", ".parquet")
HF_PREFIX = "hf://"
MAX_RECORD_BYTES = 64 * 2**20
"""A JSONL line longer than this is quarantined (`too_large`) without being read into memory."""
_KEEP_CHARS = 2000
"""How much of an oversized or unreadable record the quarantine file keeps."""
_BOM = b"\xef\xbb\xbf"
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


@dataclass(slots=True)
class RawRecord:
    """One record of an input file, or why it could not be decoded (read-only by convention: not
    `frozen`, whose `__init__` costs three times as much, and every record read makes one)."""

    path: str
    line: int | None
    index: int
    """0-based position of the record in its file."""
    value: Any = None
    error: str | None = None
    text: str | None = None
    """The undecodable text, kept for the quarantine file."""
    reason: str = "malformed_json"
    """Why it could not be decoded (a stable code, see the module doc)."""
    data: bytes | None = None
    """The raw bytes of a record that is not valid UTF-8 (kept exactly in the quarantine file)."""
    may_nest_deep: bool = True
    """False when the record's text has too few brackets to nest past `MAX_DEPTH` (its check is skipped)."""

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
    """Expand globs and directories into a sorted list of data files; fail on no match. A path
    that exists is taken as it is, even with glob characters in its name (`train[1].jsonl`)."""
    items = [paths] if isinstance(paths, str) else list(paths)
    out: list[str] = []
    for item in items:
        if is_url(item):
            out.extend(_expand_url(item))
            continue
        literal = not glob.has_magic(item) or os.path.exists(item)
        matches = [item] if literal else sorted(glob.glob(item, recursive=True))
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

        # buffered: the raw zstd reader has no readline, which the JSONL reader needs
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, closefd=True))
    return raw


def open_text(path: str) -> IO[str]:
    return io.TextIOWrapper(open_binary(path), encoding="utf-8")


@dataclass(frozen=True)
class Span:
    """Whole lines of a JSONL file, from byte `start` to `end`, that a worker reads on its own:
    `line` lines and `index` records come before it, so its records get the line numbers and
    record indices (hence ids) that reading the whole file gives them."""

    start: int
    end: int
    line: int
    index: int


def iter_records(path: str, span: Span | None = None) -> Iterator[RawRecord]:
    """Yield the records of one file (of `span` of it: JSONL only). Decoding errors become
    `RawRecord(error=...)`, never raise."""
    suffix = base_suffix(path)
    if span is not None and suffix not in (".jsonl", ".ndjson"):
        raise ValueError(f"only a JSONL file is read in spans, not {path}")
    if suffix == ".parquet":
        yield from _iter_parquet(path)
    elif suffix in (".jsonl", ".ndjson"):
        yield from _iter_jsonl(path, span)
    else:
        yield from _iter_json(path)


def can_split(path: str) -> bool:
    """Whether `path` can be read in spans: a local, uncompressed JSONL file (seekable, line by line)."""
    return not is_url(path) and path.lower().endswith((".jsonl", ".ndjson"))


def jsonl_spans(path: str, size: int) -> list[Span]:
    """Spans of about `size` bytes that cover the JSONL file `path` in order (one pass over its
    lines, counting them as `jsonl_lines` does)."""
    spans = []
    start = line = index = 0
    with open_binary(path) as f:
        for pos, line_after, index_after, _ in _line_items(path, f, 0, None, 0, 0):
            if pos - start >= size:
                spans.append(Span(start, pos, line, index))
                start, line, index = pos, line_after, index_after
        end = f.tell()
    if end > start or not spans:
        spans.append(Span(start, end, line, index))
    return spans


def _corrupt_errors() -> tuple[type[BaseException], ...]:
    """Errors of a damaged compressed stream (not of the disk or network, which must stop the run)."""
    errors: tuple[type[BaseException], ...] = (gzip.BadGzipFile, EOFError, zlib.error)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:  # pragma: no cover - zstandard is a core dependency
        pass
    return errors


def _iter_jsonl(path: str, span: Span | None = None) -> Iterator[RawRecord]:
    """One record per line, read as bytes so that no line, however hostile, stops the file."""
    for item in jsonl_lines(path, span):
        yield item if isinstance(item, RawRecord) else decode_jsonl_line(path, *item)


def jsonl_lines(path: str, span: Span | None = None) -> Iterator[tuple[int, int, bytes] | RawRecord]:
    """(line number, record index, bytes) of each record line of a JSONL file (or of `span` of
    it), undecoded (a parallel convert reads them here and decodes them in its workers with
    `decode_jsonl_line`); a line that cannot be read (oversized, a damaged file) comes as its
    `RawRecord` with an error."""
    with open_binary(path) as f:
        if span is None:
            items = _line_items(path, f, 0, None, 0, 0)
        else:
            f.seek(span.start)
            items = _line_items(path, f, span.start, span.end, span.line, span.index)
        for *_, item in items:
            if item is not None:
                yield item


def _line_items(path: str, f: IO[bytes], pos: int, end: int | None, lineno: int,
                index: int) -> Iterator[tuple[int, int, int, tuple[int, int, bytes] | RawRecord | None]]:
    """Each line of `f` from byte `pos` (line `lineno`, record `index` before it) up to `end`:
    (byte position, lines and records read, after it; the record, or None for a blank line)."""
    try:
        while end is None or pos < end:
            line = f.readline(MAX_RECORD_BYTES + 1)
            if not line:
                break
            pos += len(line)
            lineno += 1
            if len(line) > MAX_RECORD_BYTES and not line.endswith(b"\n"):
                record, rest = _too_large(path, lineno, index, line, f)
                pos += rest
                index += 1
                yield pos, lineno, index, record
                continue
            if lineno == 1 and line.startswith(_BOM):
                line = line[len(_BOM):]
            if not line.strip():
                yield pos, lineno, index, None
                continue
            index += 1
            yield pos, lineno, index, (lineno, index - 1, line)
    except _corrupt_errors() as e:
        yield pos, lineno, index, RawRecord(path, lineno + 1, index, error=f"the file is damaged after line {lineno}, "
                                            f"the rest cannot be read: {type(e).__name__}: {e}",
                                            reason="corrupt_file", text="")


def _too_large(path: str, lineno: int, index: int, head: bytes, f: IO[bytes]) -> tuple[RawRecord, int]:
    """Skip the rest of an oversized line in bounded chunks; keep its beginning for the quarantine.
    Returns the record and how many more bytes were read."""
    size = len(head)
    while True:
        more = f.readline(2**20)
        size += len(more)
        if not more or more.endswith(b"\n"):
            break
    return RawRecord(path, lineno, index, error=f"a record of {size} bytes, over the limit of {MAX_RECORD_BYTES}",
                     reason="too_large", text=head[:_KEEP_CHARS].decode("utf-8", "replace")), size - len(head)


def decode_jsonl_line(path: str, lineno: int, index: int, line: bytes) -> RawRecord:
    """Decode one JSONL line; every failure is a `RawRecord` with an error and a reason, never raised."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        data = line.rstrip(b"\r\n")
        return RawRecord(path, lineno, index, error=f"not valid UTF-8 (byte {e.start}: {line[e.start:e.start + 1]!r})",
                         reason="invalid_utf8", text=data.decode("utf-8", "replace"), data=data)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        nul = "\x00" in text
        return RawRecord(path, lineno, index, error=f"malformed JSON: {e.msg} (column {e.colno})"
                         + ("; the line holds a NUL byte" if nul else ""),
                         reason="nul_byte" if nul else "malformed_json", text=text.rstrip("\r\n"))
    except RecursionError:
        return RawRecord(path, lineno, index, error="JSON nested too deeply to decode", reason="too_deep",
                         text=text.rstrip("\r\n"))
    return _checked(path, lineno, index, value, text)


def _checked(path: str, lineno: int | None, index: int, value: Any, text: str, start: int = 0,
             end: int | None = None, escapes: bool = True) -> RawRecord:
    """`value`, decoded from `text[start:end]`, unless a string in it is not text (a lone surrogate
    escape, which no UTF-8 file can hold; `escapes=False`: the caller knows the text has none).
    `text` is searched in place, not copied."""
    stop = len(text) if end is None else end
    # the regex alone: it finds its literal `\\u` at C speed, faster than substring tests before it
    # (measured); pairs (emoji) decode to one character, which `_is_text` accepts
    if escapes and _ESCAPED_SURROGATE.search(text, start, stop) and not _is_text(value):
        return RawRecord(path, lineno, index, error="a string holds a lone UTF-16 surrogate escape "
                         "(\\ud800-\\udfff): not text, and not writable as UTF-8",
                         reason="lone_surrogate", text=text[start:stop].rstrip("\r\n"))
    # nesting N levels deep takes N opening brackets: most records cannot, and skip the depth walk
    deep = text.count("[", start, stop) + text.count("{", start, stop) > MAX_DEPTH
    return RawRecord(path, lineno, index, value=value, may_nest_deep=deep)


def _is_text(value: Any) -> bool:
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        return False
    return True


JSON_CHUNK = 1 << 20
"""Bytes read at a time from a JSON (not JSONL) file."""
_WS = re.compile(r"[ \t\r\n]*")
_ARRAY_SEP = re.compile(r"[ \t\r\n]*(?:,[ \t\r\n]*)?")
_NUMBER_TAIL = re.compile(r"[0-9eE.+-]*")


class _Text:
    """The text of a binary stream, read a chunk at a time: decoded strictly (fast) until the first
    byte that is not UTF-8, from there with `surrogateescape`, which reads an invalid byte as a lone
    surrogate (U+DC80-U+DCFF). `dirty`: such a byte was read, so records must be searched for them."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.dirty = False

    def read(self, size: int) -> str:
        """About `size` more bytes, as text: "" only at the end of the stream (bytes that end inside
        a character are read with the next ones)."""
        while True:
            data = self._f.read(size)
            text = self._decode(data)
            if text or not data:
                return text

    def _decode(self, data: bytes) -> str:
        if not self.dirty:
            state = self._decoder.getstate()  # a character cut by the last chunk's end
            try:
                return self._decoder.decode(data, not data)
            except UnicodeDecodeError:
                self.dirty = True
                self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
                self._decoder.setstate(state)
        return self._decoder.decode(data, not data)


def _iter_json(path: str) -> Iterator[RawRecord]:
    """Decode a JSON array, a single object, or whitespace-separated objects, tracking lines.

    Streamed: memory holds the record being decoded and a chunk of text, not the file. A record
    cut by the end of the chunk fails to decode (a number decodes as its prefix) and is decoded
    again with more text; only at the end of the file is a failure a malformed record
    (its reading then holds the rest of the file, which cannot be read anyway). Invalid bytes
    become lone surrogates (U+DC80-U+DCFF): the records holding them are rejected as `invalid_utf8`.
    Each record is checked where it lies in the chunk, without a copy of its text.
    """
    scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
    pos = counted = index = 0
    line = 1
    try:
        with open_binary(path) as raw:
            f = _Text(raw)
            buf = f.read(JSON_CHUNK)
            eof = not buf
            # a surrogate escape in the text read (one search of each chunk, not one of each record)
            escapes = _ESCAPED_SURROGATE.search(buf) is not None

            def more() -> bool:
                """Read more text (as much as is buffered ahead, so big records are decoded O(n) times)."""
                nonlocal buf, eof, escapes
                if eof:
                    return False
                chunk = f.read(max(JSON_CHUNK, len(buf) - pos))
                if not chunk:
                    eof = True
                    return False
                start = max(len(buf) - 5, 0)  # an escape may be cut by the end of the text before
                buf += chunk
                escapes = escapes or _ESCAPED_SURROGATE.search(buf, start) is not None
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
            separator = (_ARRAY_SEP if in_array else _WS).match
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
                        try:
                            value, end = scan(buf, pos)  # JSONDecoder.raw_decode, without its Python frame
                        except StopIteration as stop:
                            raise json.JSONDecodeError("Expecting value", buf, stop.value) from None
                    except json.JSONDecodeError as e:
                        if more():
                            continue
                        err_line = line + buf.count("\n", pos, e.pos)
                        yield RawRecord(path, line, index,
                                        error=f"malformed JSON at line {err_line}: {e.msg}; the rest of the file "
                                              "cannot be read", text=_readable(buf[pos:pos + _KEEP_CHARS]))
                        return
                    except RecursionError:
                        yield RawRecord(path, line, index, error="JSON nested too deeply to decode; the rest of "
                                        "the file cannot be read", reason="too_deep",
                                        text=_readable(buf[pos:pos + _KEEP_CHARS]))
                        return
                    # a number cut by the chunk's end decodes as its prefix: decode it again with more text
                    t = type(value)
                    if (t is not int and t is not float) or not _NUMBER_TAIL.fullmatch(buf, end) or not more():
                        break
                if f.dirty and _has_surrogates(buf[pos:end]):
                    data = buf[pos:end].encode("utf-8", "surrogateescape")
                    yield RawRecord(path, line, index, error="not valid UTF-8", reason="invalid_utf8",
                                    text=data.decode("utf-8", "replace"), data=data)
                else:
                    yield _checked(path, line, index, value, buf, pos, end, escapes)
                index += 1
                # the separator in one match; near the chunk's end, character by character with more text
                pos = separator(buf, end).end()  # type: ignore[union-attr]
                if pos >= len(buf) - 1:
                    pos = skip(end)
                    if in_array and pos < len(buf) and buf[pos] == ",":
                        pos = skip(pos + 1)
    except _corrupt_errors() as e:
        where = "cannot be read" if index == 0 else f"cannot be read after record {index}"
        yield RawRecord(path, line, index, error=f"the file is damaged and {where}: {type(e).__name__}: {e}",
                        reason="corrupt_file", text="")


def _has_surrogates(text: str) -> bool:
    """Whether `text` holds a surrogate (an undecodable byte, read with `surrogateescape`): then it
    cannot be encoded as UTF-8. An ASCII string is known to have none without a look (`isascii` is
    O(1) on `str`); encoding is a third of the cost of a regex search."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _readable(text: str) -> str:
    """Text with undecodable bytes (kept as surrogates) shown as U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _iter_parquet(path: str) -> Iterator[RawRecord]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise MissingDependencyError("reading Parquet needs pyarrow: pip install 'agentflan[parquet]'") from e
    import pyarrow as pa

    with open_binary(path) as f:
        index = 0
        try:
            pf = pq.ParquetFile(f)
            for batch in pf.iter_batches(batch_size=1024):
                for row in batch.to_pylist():
                    yield RawRecord(path, None, index, value=row)
                    index += 1
        except (pa.ArrowException, *_corrupt_errors()) as e:
            yield RawRecord(path, None, index, error=f"not a readable Parquet file after {index} rows: "
                            f"{type(e).__name__}: {e}", reason="corrupt_file", text="")


_LINE_BREAKS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def one_line(json_text: str) -> str:
    r"""JSON text with U+2028, U+2029 and U+0085 escaped: `json.dumps` leaves them raw, and every
    `str.splitlines()` (and JavaScript before ES2019) breaks a JSON line there.

    Examples:
        >>> one_line('{"a": "x\u2028y"}')
        '{"a": "x\\u2028y"}'
    """
    if "\u2028" in json_text or "\u2029" in json_text or "\x85" in json_text:
        return json_text.translate(_LINE_BREAKS)  # only inside strings: JSON has no such whitespace
    return json_text


_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO})
"""What the disk says when it cannot take an output: full, over quota, too large, read-only, failing."""


def write_failed(target: str | os.PathLike[str], e: OSError) -> OSError | WriteFailed:
    """The error to raise for `e`, raised while writing `target`: a disk that cannot take the
    output becomes `WriteFailed` naming `target` (the OS names no file for a failed `write`)."""
    if e.errno not in _WRITE_ERRNOS or isinstance(e, WriteFailed):
        return e
    return WriteFailed(f"{target}: {os.strerror(e.errno or 0)} while writing it; nothing partial was kept "
                       "(free space and run the same command again: finished outputs are kept)")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], tmp: Path | None = None) -> Iterator[Path]:
    """A temporary path beside `path`, renamed to `path` only if the block succeeds.

    On any failure, Ctrl-C included, the temporary file is removed and `path` is left as it was:
    a failed or interrupted write never leaves a partial output behind. The default temporary
    name keeps the suffixes (`.partial-out.jsonl.gz`) and is the same on every run, so a run that
    was killed outright (SIGKILL) leaves a file that the next run replaces. A full disk (or one
    that refuses the write otherwise) raises `WriteFailed` naming `path`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or target.with_name(f".partial-{target.name}")
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        err = write_failed(target, e)
        if err is e:
            raise
        raise err from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(path: str | os.PathLike[str], data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write a whole small file (a report, a summary, a marker) through `atomic_output`: the file
    is either complete or as it was, never empty or cut, whatever stops the write."""
    target = Path(path)
    with atomic_output(target) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding=encoding)
    return target


def write_png(fig: Any, path: str | os.PathLike[str], *, dpi: int = 110, metadata: dict[str, Any] | None = None) -> Path:
    """A matplotlib figure written as PNG through `atomic_output` (never a cut file), then closed,
    whatever happens. `metadata={"Software": None}` leaves out matplotlib's version stamp."""
    import matplotlib.pyplot as plt

    target = Path(path)
    try:
        with atomic_output(target) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, **({"metadata": metadata} if metadata is not None else {}))
    finally:
        plt.close(fig)
    return target
