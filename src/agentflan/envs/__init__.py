"""Executable environments: `toolapi` (ToolBench-style tools) and `db` (AgentBench DB tasks).

An environment is an `EnvInfo` (how to make the environment, generate its tasks, solve them with
a scripted expert) registered in `ENVIRONMENTS`; `env list/synth/play`, `eval` and the demo take
every registered environment from there (see AGENTS.md: adding an environment).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentflan.envs.base import Environment, Episode, Expert, Task, run_episode
from agentflan.errors import ConfigError
from agentflan.registry import Registry


@dataclass(frozen=True)
class EnvInfo:
    """What an environment registers: its name and how to make it, generate its tasks and solve them."""

    name: str
    description: str
    make: Callable[[], Environment]
    """A fresh environment (one per episode)."""
    generate: Callable[[int, str, int], list[Task]]
    """`generate(n, split, seed)`: the first `n` tasks of `split` (`train`, `heldout`), seeded."""
    expert: Callable[[Task], Expert]
    """The scripted expert that solves a task (`env synth`, `--policy expert`)."""
    formats: tuple[str, ...]
    """Source formats the synthesized episodes are written in (besides `native`: `toolbench_answer`,
    `agentinstruct`)."""


def _toolapi() -> EnvInfo:
    from agentflan.envs import toolapi_tasks
    from agentflan.envs.toolapi import ToolAPIEnvironment

    return EnvInfo("toolapi", "ToolBench-style executable tools (atlas, units, calculator, inventory, text; held out: "
                   "calendar, lists, currency, library)", ToolAPIEnvironment, toolapi_tasks.generate,
                   toolapi_tasks.expert_for, ("toolbench_answer", "native"))


def _db() -> EnvInfo:
    from agentflan.envs import db_tasks
    from agentflan.envs.db import DBEnvironment

    return EnvInfo("db", "SQLite database tasks in AgentBench's DB format and scoring", DBEnvironment,
                   db_tasks.generate, db_tasks.expert_for, ("agentinstruct", "native"))


def _is_env(obj: Any) -> str | None:
    return None if isinstance(obj, EnvInfo) or callable(obj) else \
        f"it names {obj!r}, neither an EnvInfo nor a function that returns one"


ENVIRONMENTS: Registry[EnvInfo | Callable[[], EnvInfo]] = Registry("environment", check=_is_env)
"""Environments by name: an `EnvInfo`, or a function without arguments that returns one (so that
listing names imports nothing). Plugins register in the entry point group `agentflan.environments`."""
ENVIRONMENTS.register("toolapi", _toolapi, "ToolBench-style executable tools")
ENVIRONMENTS.register("db", _db, "SQLite database tasks in AgentBench's DB format and scoring")


def env_names(*, ordered: bool = False) -> list[str]:
    """The environments, sorted; `ordered`: in registration order (built-ins first: `toolapi`, `db`)."""
    return ENVIRONMENTS.names(ordered=ordered)


def get_env(name: str) -> EnvInfo:
    """The environment `name` (`ConfigError` with "did you mean" when there is none)."""
    entry = ENVIRONMENTS.get(name)
    info = entry if isinstance(entry, EnvInfo) else entry()
    if not isinstance(info, EnvInfo) or info.name != name:
        raise ConfigError(f"environment {name!r} ({ENVIRONMENTS.origin(name) or 'built in'}) gave {info!r}: "
                          f"an agentflan.envs.EnvInfo named {name!r} is expected")
    return info


__all__ = ["ENVIRONMENTS", "EnvInfo", "Environment", "Episode", "Task", "env_names", "get_env", "run_episode"]
