"""The `agentflan` command line.

Every command runs inside one error boundary (`AgentflanGroup.invoke`): agentflan's own errors, a
missing file, an unreachable endpoint or a bad model path end in one line on stderr,
`agentflan: error: ...`, and a documented exit status (`agentflan.errors.EXIT_CODES`): 1 runtime,
2 usage, 3 partial, 4 input, 130 interrupted. `--debug` or `AGENTFLAN_DEBUG=1` also prints the
traceback. Commands added later (`eval`, `score`, `serve`) are covered by adding them to `cli`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import traceback
from types import FrameType
from typing import Any

import click

from agentflan import __version__
from agentflan.cli.data import data
from agentflan.cli.demo import demo
from agentflan.cli.env import env
from agentflan.cli.evaluate import eval_cmd, score_cmd
from agentflan.cli.recipes import recipes
from agentflan.cli.serve import serve
from agentflan.cli.train import train
from agentflan.errors import EXIT_INPUT, EXIT_RUNTIME, AgentflanError

DEBUG_ENV = "AGENTFLAN_DEBUG"


class CommandFailed(click.ClickException):
    """What the boundary turns an error into: one `agentflan: error:` line and an exit status."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        vars(self)["exit_code"] = exit_code  # click declares it a class variable; ours varies per error

    def show(self, file: Any = None) -> None:
        click.echo(f"agentflan: error: {self.format_message()}", err=True)


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that every `finally` and temporary folder cleans up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def describe(e: BaseException) -> tuple[str, int]:
    """The one-line message and exit status for an error that reached the top."""
    if isinstance(e, KeyboardInterrupt):
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        return (f"interrupted ({signal.Signals(signum).name}); temporary files were removed, finished outputs "
                "kept (a data build resumes where it stopped)", 128 + signum)
    if isinstance(e, AgentflanError):
        return str(e), e.exit_code
    if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
        return (f"{e.strerror or type(e).__name__}: {e.filename}" if e.filename else str(e)), EXIT_INPUT
    if isinstance(e, MemoryError):
        return "out of memory (lower the batch size, max_length or workers)", EXIT_RUNTIME
    if isinstance(e, OSError):  # network, disk full, a broken pipe: the environment, not agentflan
        return f"{type(e).__name__}: {e}", EXIT_RUNTIME
    return (f"internal error {type(e).__name__}: {e} (a bug: rerun with --debug for the traceback and "
            "report it)", EXIT_RUNTIME)


class AgentflanGroup(click.Group):
    """A click group whose `invoke` is the error boundary of every command below it."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.UsageError, CommandFailed, click.exceptions.Exit, click.exceptions.Abort,
                SystemExit, BrokenPipeError):  # click's own handling (`agentflan ... | head` ends quietly)
            raise
        except click.exceptions.ClickException as e:
            # `raise click.ClickException(str(err)) from err` keeps the status of the agentflan error
            cause = e.__cause__
            if isinstance(cause, AgentflanError):
                self._debug(ctx, cause)
                raise CommandFailed(str(cause), cause.exit_code) from cause
            raise CommandFailed(e.format_message(), e.exit_code) from e
        except (Exception, KeyboardInterrupt) as e:
            self._debug(ctx, e)
            message, code = describe(e)
            raise CommandFailed(message.strip() or type(e).__name__, code) from e

    @staticmethod
    def _debug(ctx: click.Context, e: BaseException) -> None:
        if ctx.params.get("debug") or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            traceback.print_exception(e, file=sys.stderr)


@click.group(cls=AgentflanGroup, context_settings={"help_option_names": ["-h", "--help"]},
             epilog="Exit status: 0 success, 1 runtime failure, 2 usage, 3 partial (output written, input "
                    "left behind: rejected records, failed episodes), 4 bad input or configuration, 130 interrupted.")
@click.version_option(__version__, prog_name="agentflan")
@click.option("-v", "--verbose", count=True, help="More logging (-vv for debug).")
@click.option("--debug", is_flag=True, help=f"Print the traceback of an error (also: {DEBUG_ENV}=1).")
def cli(verbose: int, debug: bool) -> None:
    """agentflan: Agent-FLAN data, training and evaluation for tool-using LLM agents."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


cli.add_command(data)
cli.add_command(demo)
cli.add_command(env)
cli.add_command(eval_cmd)
cli.add_command(score_cmd)
cli.add_command(recipes)
cli.add_command(serve)
cli.add_command(train)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


def _unraisable(hook: Any) -> Any:
    """An interrupt that lands inside a finalizer (a `__del__`, a weakref callback) cannot unwind
    there: Python prints it as "Exception ignored" and goes on. Deliver it again instead, so it
    unwinds from the next safe point, quietly, like any other interrupt."""
    def handle(info: Any) -> None:
        exc = info.exc_value
        if isinstance(exc, KeyboardInterrupt):  # re-sent from a thread: it must not land in this hook
            signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
            threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
            return
        hook(info)
    return handle


def main() -> None:
    # SIGTERM (a scheduler, `kill`) unwinds like Ctrl-C, so temporary files are removed
    signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = _unraisable(sys.unraisablehook)
    cli(prog_name="agentflan")


if __name__ == "__main__":
    main()
