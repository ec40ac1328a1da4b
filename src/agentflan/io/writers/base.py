"""The writer contract and the file sink.

A writer maps a `Trajectory` to one output record (a dict). The sink chooses the file layout from
the output suffix: `.jsonl` (one record per line) or `.json` (a JSON array), either optionally
`.gz`/`.zst` compressed. Output is deterministic: same trajectories, same bytes.

A trajectory the target format cannot express raises `Unwritable`; it is counted by reason, never
silently dropped. Information a format cannot keep (e.g. a thought before a LLaMA-Factory
function call) is counted in `lossy` by kind. A trajectory built in Python whose strings are not
text (lone surrogates) cannot be written as UTF-8: it is counted as `invalid_unicode`.

Output files are written to a temporary file beside the target and renamed when complete, so a
failed or interrupted write leaves no partial output behind.
"""

from __future__ import annotations

import gzip
import io
import json
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from agentflan.errors import AgentflanError, ConfigError
from agentflan.io.files import atomic_output, base_suffix, one_line
from agentflan.schema import Trajectory


class Unwritable(AgentflanError):
    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


@dataclass
class WriteReport:
    written: int = 0
    unwritable: Counter[str] = field(default_factory=Counter)
    lossy: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"written": self.written, "unwritable": dict(sorted(self.unwritable.items())),
                "lossy": dict(sorted(self.lossy.items()))}


class Writer(ABC):
    name: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = (".jsonl", ".json")

    def __init__(self) -> None:
        self.report = WriteReport()

    @abstractmethod
    def record(self, traj: Trajectory) -> dict[str, Any]:
        """The output record of one trajectory (raise `Unwritable` if it has none)."""

    def dataset_info(self, path: Path) -> dict[str, Any] | None:
        """A registration snippet for other tools (LLaMA-Factory's dataset_info), if any."""
        return None

    def encode(self, traj: Trajectory) -> str:
        """The output record of `traj`, encoded (`dumps(self.record(traj))`; a writer may do it faster)."""
        return dumps(self.record(traj))

    def encode_bytes(self, traj: Trajectory) -> bytes:
        """`encode(traj)` as UTF-8 (a writer may make the bytes without the text between); raises
        `UnicodeEncodeError` for strings that are not text (lone surrogates)."""
        return self.encode(traj).encode("utf-8")

    def encode_counted(self, traj: Trajectory) -> bytes | None:
        """`encode_bytes`, counted in the report: None (counted by reason) when the format cannot express it.

        A record whose strings are not text (lone surrogates) cannot be written as UTF-8: it is
        counted as `invalid_unicode`. What an unwritten record lost does not count in `lossy`.
        """
        lossy = self.report.lossy.copy() if self.report.lossy else None  # most writers never lose anything
        try:
            data = self.encode_bytes(traj)
        except (Unwritable, UnicodeEncodeError) as e:
            self.report.lossy = lossy if lossy is not None else Counter()
            self.report.unwritable[e.reason if isinstance(e, Unwritable) else "invalid_unicode"] += 1
            return None
        self.report.written += 1
        return data

    def write(self, trajectories: Iterable[Trajectory], path: str | Path) -> WriteReport:
        with self._sink(path) as sink:
            for traj in trajectories:
                data = self.encode_counted(traj)
                if data is not None:
                    sink.add_bytes(data)
        return self.report

    def write_encoded(self, records: Iterable[bytes], path: str | Path) -> None:
        """Write records this writer encoded elsewhere (`encode_counted`: worker processes of a
        parallel convert, which count them in their reports), as UTF-8, one line each."""
        with self._sink(path) as sink:
            for data in records:
                sink.add_bytes(data)

    def write_lines(self, blocks: Iterable[bytes], path: str | Path) -> None:
        """`write_encoded` for records in blocks of UTF-8 lines, each record a line ending with a
        newline: copied as they are into a JSONL file, without decoding them."""
        with self._sink(path) as sink:
            for data in blocks:
                sink.add_lines(data)

    @contextmanager
    def _sink(self, path: str | Path) -> Iterator[JsonSink]:
        path = Path(path)
        suffix = base_suffix(str(path))
        if suffix not in self.suffixes:
            raise ConfigError(f"the {self.name} writer writes {', '.join(self.suffixes)} files, "
                              f"not {suffix or 'no suffix'!r} ({path})")
        with atomic_output(path) as tmp, JsonSink(tmp) as sink:
            yield sink


def _make_encoder() -> Callable[[Any], str]:
    """`json.dumps(rec, ensure_ascii=False, separators=(", ", ": "))`, built once.

    `json.dumps` with options builds an encoder per call and tracks every container to detect
    cycles; records are trees (decoded JSON, `to_json_dict`), so the C encoder is made once
    without the cycle check. Same bytes (with `one_line`'s escapes); about a fifth faster on agent
    records.
    """
    enc = json.JSONEncoder(ensure_ascii=False, separators=(", ", ": "), check_circular=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - interpreters without the C accelerator
        return lambda rec: one_line(enc.encode(rec))
    try:
        c_encode = make(None, enc.default, json.encoder.encode_basestring, None, ": ", ", ", False, False, True)
    except TypeError:  # pragma: no cover - a future signature
        return lambda rec: one_line(enc.encode(rec))

    def encode(rec: Any) -> str:
        if isinstance(rec, (dict, list)):
            return one_line("".join(c_encode(rec, 0)))
        return one_line(enc.encode(rec))
    return encode


dumps: Callable[[Any], str] = _make_encoder()
"""One JSON record, as every agentflan JSON(L) file writes it."""


def _data_encoder_cases() -> tuple[dict[str, Any], list[float]]:
    """What `_DataEncoder` is checked on at first use: one record of JSON data it must write as
    `dumps` does (every ASCII character, escapes, line separators, astral characters, big integers,
    floats of every magnitude from 1e-4 up), and floats under 1e-4, each of which it must leave
    to `dumps` or write as `dumps` does. Kept short: every process pays it once."""
    floats = [0.0, -0.0, 1.0, 0.5, -2.5, 1e-4, -3.14159e-3, 0.1, 123456789.125, 1e15, 1e16, -1.5e16, 2.5e22,
              6.02214076e23, 1e100, -4.2e200, 1.7976931348623157e308, float("nan"), float("inf"), float("-inf")]
    small = [5e-5, -1.25e-5, 1e-5, 9.99e-6, 1e-7, -3.3e-8, 2e-9, 1.5e-10, 7e-50, 5e-324]
    text = "".join(map(chr, range(128))) + "\u00e9\u4e2d\U0001f600\u2028\u2029\x85\ufeff"
    record = {"floats": floats, "empty": [[], {}, [{}], [[[]]]], "literals": [None, True, False],
              "ints": [0, -1, 2**64, -(2**70)], text: text, "": [text, {"k": [text]}]}
    return record, small


_ONE_DIGIT_END = re.compile(rb"[0-9],?\n")
_DIGITS_END = re.compile(rb"[0-9]+,?\n")
_LINE_BREAKS_UTF8 = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))


def _small_float(data: bytes) -> bool:
    """Whether pydantic-core's `indent=0` text of a dict or list holds a float it writes otherwise
    than Python: under 1e-4, as `0.0000...` (Python: `5e-05`) or with a one-digit exponent (`1e-7`;
    Python: `1e-07`). In that layout a number ends its line and a string holds no raw newline, so
    such text followed by the line's end is a number. (`bytes.find`, not `in`: `in` first tries
    the needle as an integer, and that error costs more than the search.)"""
    i = data.find(b"0.0000")
    while i >= 0:
        if _DIGITS_END.match(data, i + 6):
            return True
        i = data.find(b"0.0000", i + 1)
    i = data.find(b"-")  # one byte is found by memchr; `e-` would be searched for byte by byte
    while i >= 0:
        if data[i - 1] == 0x65 and _ONE_DIGIT_END.match(data, i + 1):  # 0x65: "e"
            return True
        i = data.find(b"-", i + 1)
    return False


class _DataEncoder:
    """pydantic-core's serializer, writing what `dumps` writes for JSON data (str keys; dict, list,
    str, int, bool, None, float): its Rust string escaping costs a third of the C encoder's, which
    is most of the cost of writing a record.

    With `indent=0` pydantic-core writes one item a line with `": "` between key and value; a
    JSON string holds no raw newline, so every newline is the layout's and `", "` and `""` replace
    them. It writes a float under 1e-4 otherwise than Python (`0.00001`, `1e-7` for `1e-05`,
    `1e-07`): a text that may hold one is left to `dumps`, as are values it refuses (lone
    surrogates, nesting past its limit) and anything but a dict or a list. At first use it is
    checked against `dumps` on `_data_encoder_cases`: if a release of pydantic-core writes them
    otherwise, `dumps` alone is used.
    """

    def __init__(self) -> None:
        self._to_json: Callable[..., bytes] | None = None
        try:
            from pydantic_core import to_json
        except ImportError:  # pragma: no cover - pydantic-core comes with pydantic
            return
        self._to_json = to_json
        record, small = _data_encoder_cases()
        try:
            same = self.utf8(record) == dumps(record).encode("utf-8")
            same = same and all(self.utf8([x]) in (None, dumps([x]).encode("utf-8")) for x in small)
        except Exception:  # any surprise from another release: the reference alone
            same = False
        if not same:
            self._to_json = None

    def utf8(self, rec: Any, floats: bool = True) -> bytes | None:
        """The UTF-8 of `dumps(rec)`, or None where this engine may write otherwise (`floats=False`:
        the caller knows `rec` holds no float)."""
        if self._to_json is None or (type(rec) is not dict and type(rec) is not list):
            return None
        try:
            data = self._to_json(rec, indent=0)
        except ValueError:  # PydanticSerializationError: a lone surrogate, too deep
            return None
        if floats and _small_float(data):
            return None
        data = data.replace(b",\n", b", ").replace(b"\n", b"")
        if not data.isascii():  # `one_line`'s escapes, in UTF-8
            for raw, escaped in _LINE_BREAKS_UTF8:
                if data.find(raw) >= 0:
                    data = data.replace(raw, escaped)
        return data


_data_encoder: _DataEncoder | None = None


def _engine() -> _DataEncoder:
    global _data_encoder
    if _data_encoder is None:
        _data_encoder = _DataEncoder()
    return _data_encoder


def dumps_data(rec: Any, floats: bool = True) -> str:
    """`dumps(rec)` for JSON data (`Trajectory.to_json_dict()`, decoded JSON), faster (see
    `_DataEncoder`); `floats=False`: the caller knows `rec` holds no float. Any other value (a
    tuple, a set, an enum, non-str keys) takes `dumps`'s bytes only by chance: use `dumps`."""
    data = _engine().utf8(rec, floats)
    return dumps(rec) if data is None else data.decode("utf-8")


def encode_data(rec: Any, floats: bool = True) -> bytes:
    """`dumps_data(rec).encode("utf-8")`, without the text between (raises `UnicodeEncodeError` for
    strings that are not text: lone surrogates)."""
    data = _engine().utf8(rec, floats)
    return dumps(rec).encode("utf-8") if data is None else data


WRITE_BUFFER = 1 << 20
"""Bytes a sink buffers before a write to its file: 8 KiB (the default) costs a system call every
few records; measured on alpaca's 1.2 MB native output, 1 MiB writes it in 60% of the time."""


class JsonSink:
    """Writes records as JSONL or as a JSON array, by suffix, with optional compression.

    Records come encoded as UTF-8 (`encode_counted`) or as text (`dumps`). A plain file takes
    bytes as they are; a compressed file takes everything as text through one text stream, whose
    writes reach the compressor in the same blocks whatever the records' sizes (bytes written
    beside it would need a flush, which ends a compressed block and changes the file's bytes).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.array = base_suffix(str(path)) == ".json"
        self._n = 0
        self._raw = open(path, "wb", buffering=WRITE_BUFFER)  # noqa: SIM115 - closed in __exit__
        self._text = _compressed_text(path, self._raw)
        """The text stream of a compressed file (None: a plain one)."""

    def __enter__(self) -> JsonSink:
        if self.array:
            self._put(b"[")
        return self

    def _put(self, data: bytes) -> None:
        if self._text is None:
            self._raw.write(data)
        else:
            self._text.write(data.decode("utf-8"))

    def add(self, rec: Any) -> None:
        self.add_encoded(dumps(rec))

    def add_encoded(self, text: str) -> None:
        """A record encoded by `dumps`."""
        self.add_bytes(text.encode("utf-8"))

    def add_bytes(self, data: bytes) -> None:
        """A record encoded by `dumps`, as UTF-8 (one line, without its newline)."""
        if self.array:
            self._put((b"\n" if self._n == 0 else b",\n") + data)
        elif self._text is None:  # plain JSONL, the usual case: straight to the file
            self._raw.write(data + b"\n")
        else:
            self._put(data + b"\n")
        self._n += 1

    def add_lines(self, data: bytes) -> None:
        """Records encoded by `dumps`, as UTF-8, one a line, each ending with a newline (JSON text
        holds no raw newline)."""
        n = data.count(b"\n")
        if not n:
            return
        if self.array:
            data = (b"\n" if self._n == 0 else b",\n") + data[:-1].replace(b"\n", b",\n")
        self._put(data)
        self._n += n

    def __exit__(self, *exc: object) -> None:
        try:
            if self.array:
                self._put(b"\n]\n")
            if self._text is not None:
                self._text.close()  # the compressor's end, into the raw file
        finally:
            self._raw.close()


def _compressed_text(path: Path, raw: IO[bytes]) -> io.TextIOWrapper | None:
    """A text stream that compresses into `raw` for a `.gz`/`.zst` path (it leaves `raw` open), else None."""
    low = path.name.lower()
    if low.endswith(".gz"):
        # no file name and mtime=0 in the header keep the bytes identical between runs
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        return io.TextIOWrapper(gz, encoding="utf-8")
    if low.endswith(".zst"):
        import zstandard

        zw = zstandard.ZstdCompressor().stream_writer(raw, closefd=False)
        return io.TextIOWrapper(zw, encoding="utf-8")
    return None
