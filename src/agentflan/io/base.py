"""The reader contract: one raw record in, one trajectory out, or an accounted reason why not.

Every record a reader sees ends in exactly one of: converted, quarantined (raw record and reason
written to a quarantine file), skipped (counted with its reason, not written) or dropped (a
deliberate, documented filter such as ToolBench give-ups). `ReadReport.balanced()` is the
invariant `records == converted + quarantined + skipped + dropped`; tests check it.
"""

from __future__ import annotations

import ast
import base64
import json
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

from pydantic import ValidationError

from agentflan.errors import Drop, ParseError
from agentflan.fields import as_text as as_text  # readers' documented helpers, defined one layer down
from agentflan.fields import optional_key as optional_key
from agentflan.fields import require_key as require_key
from agentflan.io.files import RawRecord, Span, expand, iter_records, one_line
from agentflan.schema import Source, Trajectory, check, errors

OnError = Literal["raise", "skip", "quarantine"]


@dataclass
class ReadReport:
    """What happened to every record a reader saw."""

    records: int = 0
    converted: int = 0
    quarantined: int = 0
    skipped: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    """Quarantined or skipped records by reason."""
    warnings: Counter[str] = field(default_factory=Counter)
    files: int = 0
    rejected_inputs: list[str] = field(default_factory=list)
    """Inputs (a path, glob or directory as given) that had records and saw every one rejected."""

    def balanced(self) -> bool:
        return self.records == self.converted + self.quarantined + self.skipped + sum(self.dropped.values())

    def merge(self, other: ReadReport) -> None:
        self.records += other.records
        self.converted += other.converted
        self.quarantined += other.quarantined
        self.skipped += other.skipped
        self.dropped.update(other.dropped)
        self.rejected.update(other.rejected)
        self.warnings.update(other.warnings)
        self.files += other.files
        self.rejected_inputs += other.rejected_inputs

    def to_dict(self) -> dict[str, Any]:
        return {
            "files": self.files,
            "records": self.records,
            "converted": self.converted,
            "quarantined": self.quarantined,
            "skipped": self.skipped,
            "dropped": dict(sorted(self.dropped.items())),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "warnings": dict(sorted(self.warnings.items())),
            "rejected_inputs": list(self.rejected_inputs),
            "balanced": self.balanced(),
        }


def rejection_problems(report: dict[str, Any], max_reject: float | None = None) -> list[str]:
    """What is wrong with a read, by `ReadReport.to_dict()`: inputs whose every record was rejected,
    and a rejected share above `max_reject` (a fraction; None: no limit). Empty when all is well."""
    problems = [f"every record of {p} was rejected" for p in report.get("rejected_inputs") or []]
    records, rejected = report["records"], report["quarantined"] + report["skipped"]
    if max_reject is not None and records and rejected / records > max_reject:
        problems.append(f"{rejected} of {records} records rejected ({rejected / records:.1%}), more than "
                        f"--max-reject {max_reject:g}")
    return problems


class Quarantine:
    """Appends rejected raw records with their reason to a JSONL file (opened on first use).

    It holds any record: text that is not valid UTF-8 is kept exactly as `record_base64` (with a
    readable `record`), and a record whose strings cannot be written as UTF-8 (lone surrogates) is
    written with ASCII escapes, which JSON reads back to the same strings.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._tmp = self.path.with_name(f".partial-{self.path.name}")
        """Where the records go until `close` renames it to `path` (as `io.files.atomic_output`): a
        process killed mid-read leaves no cut quarantine file, and the next run replaces the partial one."""
        self._f: IO[str] | None = None
        self.count = 0

    def add(self, raw: RawRecord, err: ParseError) -> None:
        if self._f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115 - closed in close()
        entry: dict[str, Any] = {"origin": raw.origin, "reason": err.reason, "field": err.field,
                                 "error": err.message, "record": raw.value if raw.error is None else raw.text}
        if raw.data is not None:
            entry["record_base64"] = base64.b64encode(raw.data).decode("ascii")
        try:
            line = one_line(json.dumps(entry, ensure_ascii=False, default=str))
            line.encode("utf-8")
        except UnicodeEncodeError:
            line = json.dumps(entry, ensure_ascii=True, default=str)
        except RecursionError:  # decodable, but too deep to encode again: keep where it was
            entry["record"] = None
            entry["error"] = f"{err.message} (the record is nested too deeply to copy here; see its origin)"
            line = json.dumps(entry, ensure_ascii=True, default=str)
        self._f.write(line + "\n")
        self.count += 1

    def close(self) -> None:
        """Finish the file: the records so far become `path` (also after a failed read: they are
        the rejected records it saw)."""
        if self._f is not None:
            from agentflan.io.files import write_failed

            f, self._f = self._f, None
            try:
                f.close()
                os.replace(self._tmp, self.path)
            except OSError as e:
                self._tmp.unlink(missing_ok=True)
                err = write_failed(self.path, e)
                if err is e:
                    raise
                raise err from e


@dataclass(slots=True)
class RecordContext:
    """Where a record is, for ids, `Source` and error messages (read-only by convention: every
    record read makes one, and a `frozen` one costs three times as much to make)."""

    raw: RawRecord
    reader: str
    dataset: str | None

    def source(self, original_id: str | None = None) -> Source:
        return Source(format=self.reader, path=self.raw.path, line=self.raw.line,
                      original_id=original_id, dataset=self.dataset or self.reader)

    def source_dict(self, original_id: str | None = None) -> dict[str, Any]:
        """`source()` as a dict, for readers that validate the whole trajectory in one call."""
        return {"format": self.reader, "path": self.raw.path, "line": self.raw.line,
                "original_id": original_id, "dataset": self.dataset or self.reader}

    def default_id(self) -> str:
        """`<stem>:<index>`, or `<parent>/<stem>` for one-record files (ToolBench answers)."""
        return f"{_path_names(self.raw.path)[1]}:{self.raw.index}"

    def file_id(self) -> str:
        parent, stem = _path_names(self.raw.path)
        return f"{parent}/{stem}"


@lru_cache(maxsize=4096)
def _path_names(path: str) -> tuple[str, str]:
    """The parent folder's name and the file's stem (before its first dot); cached, since every
    record of a file asks."""
    p = Path(path.split("://", 1)[-1])
    return p.parent.name, p.name.split(".")[0]


class Reader(ABC):
    """Turns raw records of one source format into trajectories.

    Subclasses implement `parse`; `read` streams files, validates each trajectory with
    `agentflan.schema.check` and applies the error policy.

    Args:
        on_error: `raise` stops at the first bad record with its file, line and field;
            `skip` counts it; `quarantine` (default) also writes it to `quarantine`.
        quarantine: Where quarantined records go (required for `quarantine`, else they are counted
            as skipped).
        dataset: Name used for per-source statistics (default: the reader name).
        allow_parse_errors: Keep tool calls that failed to parse (with `parse_error` set).
    """

    name: ClassVar[str]

    def __init__(self, *, on_error: OnError = "quarantine", quarantine: Quarantine | None = None,
                 dataset: str | None = None, allow_parse_errors: bool = False,
                 limit: int | None = None) -> None:
        self.on_error = on_error
        self.quarantine = quarantine
        self.dataset = dataset
        self.allow_parse_errors = allow_parse_errors
        self.limit = limit
        self.report = ReadReport()

    @abstractmethod
    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        """Map one raw record to a trajectory; raise `ParseError` (bad input) or `Drop` (filtered)."""

    def read(self, paths: str | Sequence[str], span: Span | None = None) -> Iterator[Trajectory]:
        """Stream the trajectories of every file matched by `paths` (`span`: of that part of the
        one JSONL file `paths` names; the file is counted by the span that starts it)."""
        rep = self.report
        items = [paths] if isinstance(paths, str) else list(paths)
        for item, files in [(item, expand(item)) for item in items]:  # every input is checked before reading
            records, rejected = rep.records, rep.quarantined + rep.skipped
            if span is not None and len(files) != 1:
                raise ValueError(f"a span is of one file, not of {item}")
            for path in files:
                rep.files += span is None or span.start == 0
                for raw in iter_records(path, span):
                    if self.limit is not None and rep.records >= self.limit:
                        return
                    traj = self._convert(raw)
                    if traj is not None:
                        yield traj
            if rep.records > records and rep.quarantined + rep.skipped - rejected == rep.records - records:
                rep.rejected_inputs.append(item)

    def _convert(self, raw: RawRecord) -> Trajectory | None:
        self.report.records += 1
        ctx = RecordContext(raw, self.name, self.dataset)
        try:
            if raw.error is not None:
                raise ParseError(raw.error, reason=raw.reason)
            traj = self.parse(raw.value, ctx)
            issues = check(traj, allow_parse_errors=self.allow_parse_errors, nesting=raw.may_nest_deep)
            if issues:  # most records have none: skip the bookkeeping
                bad = errors(issues)
                if bad:
                    extra = f" (and {len(bad) - 1} more problem(s))" if len(bad) > 1 else ""
                    raise ParseError(f"{bad[0]}{extra}", reason=bad[0].code,
                                     field=bad[0].field and f"messages[{bad[0].index}].{bad[0].field}")
                self.report.warnings.update(i.code for i in issues)
        except Drop as d:
            self.report.dropped[d.reason] += 1
            return None
        except ValidationError as e:
            self._reject(raw, _from_validation(e))
            return None
        except ParseError as e:
            self._reject(raw, e)
            return None
        except RecursionError:  # decodable JSON, but deeper than validation can follow
            self._reject(raw, ParseError("the record is nested too deeply to validate", reason="too_deep"))
            return None
        self.report.converted += 1
        return traj

    def _reject(self, raw: RawRecord, err: ParseError) -> None:
        err.origin = raw.origin
        if self.on_error == "raise":
            raise err
        self.report.rejected[err.reason] += 1
        if self.on_error == "quarantine" and self.quarantine is not None:
            self.quarantine.add(raw, err)
            self.report.quarantined += 1
        else:
            self.report.skipped += 1


def _from_validation(e: ValidationError) -> ParseError:
    first = e.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return ParseError(f"{first['msg']}{more}", reason="schema", field=loc)


# ---- helpers shared by readers ------------------------------------------------------------------

def parse_tools(value: Any, where: str = "tools") -> list[Any]:
    """Tool specs from a list or a JSON string, unwrapping `{"type": "function", "function": ...}`."""
    from agentflan.schema import ToolSpec

    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ParseError(f"tools is not valid JSON: {e.msg}", reason="bad_tools", field=where) from e
    if not isinstance(value, list):
        raise ParseError(f"tools must be a list, found {type(value).__name__}", reason="bad_tools", field=where)
    out = []
    for i, spec in enumerate(value):
        if isinstance(spec, dict) and spec.get("type") == "function" and isinstance(spec.get("function"), dict):
            spec = spec["function"]
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise ParseError("tool spec without a name", reason="bad_tools", field=f"{where}[{i}]")
        extra = {k: v for k, v in spec.items() if k not in ("name", "description", "parameters")}
        out.append(ToolSpec(name=spec["name"], description=spec.get("description") or "",
                            parameters=spec.get("parameters") or {"type": "object", "properties": {}},
                            metadata=extra))
    return out


def json_or_literal(text: str, what: str, reason: str, where: str) -> Any:
    """`text` decoded as JSON, else as a Python literal (datasets written with Python's `str()`:
    single quotes, `True`, `None`); `ParseError(reason)` naming `what` and `where` if neither."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as e:
        raise ParseError(f"{what} is neither JSON nor a Python literal", reason=reason, field=where) from e
