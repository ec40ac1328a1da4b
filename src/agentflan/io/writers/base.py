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
from collections.abc import Iterable
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

    def write(self, trajectories: Iterable[Trajectory], path: str | Path) -> WriteReport:
        path = Path(path)
        suffix = base_suffix(str(path))
        if suffix not in self.suffixes:
            raise ConfigError(f"the {self.name} writer writes {', '.join(self.suffixes)} files, "
                              f"not {suffix or 'no suffix'!r} ({path})")
        with atomic_output(path) as tmp, JsonSink(tmp) as sink:
            for traj in trajectories:
                lossy = dict(self.report.lossy)
                try:
                    sink.add(self.record(traj))
                except (Unwritable, UnicodeEncodeError) as e:
                    # nothing of it was written (the text is encoded whole), so what it lost does not count
                    self.report.lossy = Counter(lossy)
                    self.report.unwritable[e.reason if isinstance(e, Unwritable) else "invalid_unicode"] += 1
                    continue
                self.report.written += 1
        return self.report


def dumps(rec: Any) -> str:
    return one_line(json.dumps(rec, ensure_ascii=False, separators=(", ", ": ")))


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
        if self.array:
            self._f.write(("\n" if self._n == 0 else ",\n") + dumps(rec))
        else:
            self._f.write(dumps(rec) + "\n")
        self._n += 1

    def __exit__(self, *exc: object) -> None:
        if self.array:
            self._f.write("\n]\n")
        self._f.close()
        self._raw.close()


def _open_write(path: Path) -> tuple[IO[str], IO[bytes]]:
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
