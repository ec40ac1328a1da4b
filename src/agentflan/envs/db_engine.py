"""The database engine interface of the DB environment: one throw-away database per task.

`envs.db` plays episodes on an `Engine`; its engines are `SQLiteEngine` (`envs.db`) and
`MySQLEngine` (`envs.mysql`). What both need lives here, so that neither imports the other's
internals (`envs.db` picks an engine by name and imports `envs.mysql` only then).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar


def quote_name(name: str) -> str:
    """A MySQL identifier quoted with backticks (SQLite reads them too)."""
    return "`" + name.replace("`", "``") + "`"


def table_rows(table: dict[str, Any]) -> list[list[str]]:
    """The rows as AgentBench inserts them: every value as `str(v)`."""
    return [[str(v) for v in row] for row in table["rows"]]


@dataclass
class Result:
    """What one statement did: rows (SELECT-like) or a row count, or an error message."""

    rows: list[tuple[Any, ...]] | None = None
    more: bool = False
    """More rows than were fetched."""
    rowcount: int = 0
    error: str | None = None


class TableBuildError(Exception):
    """The engine refused the task's table; the episode fails with this reason."""


class TableStateError(Exception):
    """The task's table cannot be hashed any more (the agent dropped or renamed it, or a column):
    the episode fails with this reason, as AgentBench scores it 0 (its hash query errors)."""


class Engine(ABC):
    """One throw-away database holding one task's table."""

    name: ClassVar[str]

    @abstractmethod
    def build(self, table: dict[str, Any]) -> None:
        """Create the table (all TEXT) and insert its rows as `str(v)`; `TableBuildError` if refused."""

    @abstractmethod
    def execute(self, sql: str, max_rows: int, time_limit_s: float) -> Result:
        """Run one statement for the agent; errors come back in `Result.error`."""

    @abstractmethod
    def table_hash(self, table: str, columns: list[str]) -> str:
        """AgentBench's hash of the table's current state; `TableStateError` if it cannot be read."""

    @abstractmethod
    def close(self) -> None:
        """Drop the database."""


def check_widths(table: dict[str, Any]) -> None:
    """`TableBuildError` when a row has more or fewer values than the table has columns."""
    width = len(table["columns"])
    for i, row in enumerate(table["rows"]):
        if len(row) != width:
            raise TableBuildError(f"row {i} has {len(row)} values for {width} columns")
