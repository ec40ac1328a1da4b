"""Executable environments: `toolapi` (ToolBench-style tools) and `db` (AgentBench DB tasks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agentflan.envs.base import Environment, Episode, Expert, Task, run_episode
from agentflan.errors import ConfigError


@dataclass(frozen=True)
class EnvInfo:
    name: str
    description: str
    make: Callable[[], Environment]
    generate: Callable[[int, str, int], list[Task]]
    expert: Callable[[Task], Expert]
    formats: tuple[str, ...]
    """Source formats the synthesized episodes are written in."""


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


_ENVS = {"toolapi": _toolapi, "db": _db}


def env_names() -> list[str]:
    return sorted(_ENVS)


def get_env(name: str) -> EnvInfo:
    if name not in _ENVS:
        raise ConfigError(f"unknown environment {name!r} (known: {', '.join(env_names())})")
    return _ENVS[name]()


__all__ = ["EnvInfo", "Environment", "Episode", "Task", "env_names", "get_env", "run_episode"]
