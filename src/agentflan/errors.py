"""Exception types. Messages say where (file:line, field), what was found, and what to do."""

from __future__ import annotations


class AgentflanError(Exception):
    """Base class of every error agentflan raises on purpose."""


class ParseError(AgentflanError):
    """A record could not be turned into a trajectory.

    Attributes:
        reason: A short, stable code used in counters and quarantine files (`missing_key`, ...).
        field: Dotted path of the offending field inside the record, when known.
        origin: `path:line` of the record, filled in by the reader.
    """

    def __init__(self, message: str, *, reason: str = "invalid", field: str | None = None,
                 origin: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason
        self.field = field
        self.origin = origin

    def __str__(self) -> str:
        where = self.origin or ""
        if self.field:
            where = f"{where} field {self.field}" if where else f"field {self.field}"
        return f"{where}: {self.message}" if where else self.message


class Drop(AgentflanError):
    """A record is deliberately not converted (e.g. a ToolBench give-up); counted with `reason`."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


class ConfigError(AgentflanError):
    """Bad user configuration (unknown format, conflicting options)."""


class MissingDependencyError(AgentflanError, ImportError):
    """An optional dependency is needed; the message says which extra to install."""


def require(module: str, extra: str) -> None:
    """Raise `MissingDependencyError` naming the extra if `module` cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"this feature needs the {module!r} package: pip install 'agentflan[{extra}]'"
        )
