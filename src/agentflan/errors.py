"""Exception types. Messages say where (file:line, field), what was found, and what to do.

Each type carries the exit status the command line ends with when it reaches the top
(`agentflan.cli.main`): see `EXIT_CODES`.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_RUNTIME = 1
"""The work failed on the way: an endpoint, a model or the disk did not do what was asked."""
EXIT_USAGE = 2
"""The command line is wrong: an unknown option, a missing argument (click's own code)."""
EXIT_PARTIAL = 3
"""The command finished and wrote its output, but left part of the input behind (rejected records,
episodes that ended in errors): `agentflan eval` uses it too."""
EXIT_INPUT = 4
"""The input or the configuration is wrong: a file, a record, a recipe key, an option, a model path."""
EXIT_INTERRUPTED = 130
"""Ctrl-C (SIGINT); SIGTERM ends with 143. Temporary files are removed either way."""

EXIT_CODES = {EXIT_OK: "success", EXIT_RUNTIME: "runtime", EXIT_USAGE: "usage", EXIT_PARTIAL: "partial",
              EXIT_INPUT: "input", EXIT_INTERRUPTED: "interrupted"}


class AgentflanError(Exception):
    """Base class of every error agentflan raises on purpose.

    Attributes:
        exit_code: The exit status of a command that ends with this error (`EXIT_RUNTIME` unless a
            subclass says otherwise).
    """

    exit_code: int = EXIT_RUNTIME


class ParseError(AgentflanError):
    """A record could not be turned into a trajectory (raised through only with `on_error: raise`).

    Attributes:
        reason: A short, stable code used in counters and quarantine files (`missing_key`, ...).
        field: Dotted path of the offending field inside the record, when known.
        origin: `path:line` of the record, filled in by the reader.
    """

    exit_code = EXIT_INPUT

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
    """Bad user configuration (unknown format, conflicting options, a missing file or model)."""

    exit_code = EXIT_INPUT


class MissingDependencyError(AgentflanError, ImportError):
    """An optional dependency is needed; the message says which extra to install."""

    exit_code = EXIT_INPUT


class InputRejected(AgentflanError):
    """Every record of the input was rejected: nothing usable came out."""

    exit_code = EXIT_INPUT


class RunFailed(AgentflanError):
    """The work failed on the way and produced nothing usable (every request of an evaluation
    failed, say): exit 1, as a failure, not as a partial result."""

    exit_code = EXIT_RUNTIME


class WriteFailed(AgentflanError, OSError):
    """An output could not be written (a full disk, a quota, a read-only folder): the message
    names the file; nothing partial is left. Exit 1: the environment failed, not the input."""

    exit_code = EXIT_RUNTIME


class PartialResult(AgentflanError):
    """The output was written, but more of the input was rejected than the user allows."""

    exit_code = EXIT_PARTIAL


def require(module: str, extra: str) -> None:
    """Raise `MissingDependencyError` naming the extra if `module` cannot be imported."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(
            f"this feature needs the {module!r} package: pip install 'agentflan[{extra}]'"
        )
