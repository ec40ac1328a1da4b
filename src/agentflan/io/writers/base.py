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

    def encode_counted(self, traj: Trajectory) -> str | None:
        """`encode`, counted in the report: None (counted by reason) when the format cannot express it.

        A record whose strings are not text (lone surrogates) cannot be written as UTF-8: it is
        counted as `invalid_unicode`. What an unwritten record lost does not count in `lossy`.
        """
        lossy = self.report.lossy.copy() if self.report.lossy else None  # most writers never lose anything
        try:
            text = self.encode(traj)
            if not text.isascii():  # O(1); the check encodes only texts that can fail
                text.encode("utf-8")
        except (Unwritable, UnicodeEncodeError) as e:
            self.report.lossy = lossy if lossy is not None else Counter()
            self.report.unwritable[e.reason if isinstance(e, Unwritable) else "invalid_unicode"] += 1
            return None
        self.report.written += 1
        return text

    def write(self, trajectories: Iterable[Trajectory], path: str | Path) -> WriteReport:
        with self._sink(path) as sink:
            for traj in trajectories:
                text = self.encode_counted(traj)
                if text is not None:
                    sink.add_encoded(text)
        return self.report

    def write_encoded(self, records: Iterable[str], path: str | Path) -> None:
        """Write records this writer's `record` made and `dumps` encoded elsewhere (worker
        processes of a parallel convert, which count them in their reports)."""
        with self._sink(path) as sink:
            for text in records:
                sink.add_encoded(text)

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


class JsonSink:
    """Writes records as JSONL or as a JSON array, by suffix, with optional compression."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.array = base_suffix(str(path)) == ".json"
        self._n = 0
        self._f, self._raw = _open_write(path)

    def __enter__(self) -> JsonSink:
        if self.array:
            self._f.write("[")
        return self

    def add(self, rec: Any) -> None:
        self.add_encoded(dumps(rec))

    def add_encoded(self, text: str) -> None:
        """A record already encoded by `dumps`."""
        if self.array:
            self._f.write(("\n" if self._n == 0 else ",\n") + text)
        else:
            self._f.write(text + "\n")
        self._n += 1

    def add_lines(self, data: bytes) -> None:
        """Records already encoded by `dumps`, as UTF-8, one a line, each ending with a newline
        (JSON text holds no raw newline)."""
        n = data.count(b"\n")
        if not n:
            return
        if self.array:
            data = (b"\n" if self._n == 0 else b",\n") + data[:-1].replace(b"\n", b",\n")
        if self._f.buffer is self._raw:  # a plain file: what was written as text goes first
            self._f.flush()
            self._raw.write(data)
        else:  # compressed: as text, since a flush would end a compressed block and change the bytes
            self._f.write(data.decode("utf-8"))
        self._n += n

    def __exit__(self, *exc: object) -> None:
        if self.array:
            self._f.write("\n]\n")
        self._f.close()
        self._raw.close()


def _open_write(path: Path) -> tuple[io.TextIOWrapper, IO[bytes]]:
    """A text stream and the raw file under it (closed separately: GzipFile leaves it open)."""
    raw = open(path, "wb")  # noqa: SIM115 - closed by JsonSink
    low = path.name.lower()
    if low.endswith(".gz"):
        # no file name and mtime=0 in the header keep the bytes identical between runs
        gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
        return io.TextIOWrapper(gz, encoding="utf-8"), raw
    if low.endswith(".zst"):
        import zstandard

        zw = zstandard.ZstdCompressor().stream_writer(raw, closefd=False)
        return io.TextIOWrapper(zw, encoding="utf-8"), raw
    return io.TextIOWrapper(raw, encoding="utf-8"), raw
