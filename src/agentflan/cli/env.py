"""`agentflan env list | synth | play`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from agentflan.errors import ConfigError, PartialResult

if TYPE_CHECKING:
    from agentflan.envs.base import Task


@click.group("env")
def env() -> None:
    """Executable tool environments: list them, synthesize expert trajectories, play episodes."""


@env.command("list")
def list_cmd() -> None:
    """The environments, their task kinds and tools."""
    from agentflan.envs import env_names, get_env

    for name in env_names():
        info = get_env(name)
        kinds = sorted({t.kind for t in info.generate(20, "train", 0) + info.generate(20, "heldout", 0)})
        click.echo(f"{name}: {info.description}\n    task kinds: {', '.join(kinds)}\n"
                   f"    synth writes: {', '.join(info.formats)}")


@env.command("synth")
@click.argument("name")
@click.option("-n", "--n", "count", type=int, default=500, show_default=True, help="Tasks to generate.")
@click.option("--split", type=click.Choice(["train", "heldout"]), default="train", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def synth_cmd(name: str, count: int, split: str, seed: int, output: Path) -> None:
    """Generate tasks of env NAME, solve them with the scripted expert, write verified trajectories."""
    from agentflan.envs.synth import synth

    r = synth(name, count, split, output, seed)
    click.echo(f"{name}/{split}: {r.tasks} tasks, {r.written} verified episodes written "
               f"({', '.join(f'{k} {v}' for k, v in sorted(r.kinds.items()))})")
    for reason, n in r.failed.items():
        click.echo(f"  expert failed {n}: {reason}")
    for fmt, path in r.files.items():
        click.echo(f"  {fmt}: {path}")
    if r.failed:
        raise PartialResult(f"the expert failed {sum(r.failed.values())} of {r.tasks} tasks (see above; the verified "
                            "episodes were written): this is a bug in a task generator")


@env.command("play")
@click.argument("name")
@click.option("--policy", type=click.Choice(["expert", "random", "replay", "model", "local"]), default="expert",
              show_default=True, help="model: an OpenAI-compatible endpoint; local: a transformers model folder.")
@click.option("--split", type=click.Choice(["train", "heldout", "dev"]), default="train", show_default=True)
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True, help="Which task (0-based).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--tasks", "tasks_file", type=click.Path(exists=True, path_type=Path),
              help="AgentBench dbbench JSONL to take the task from (db only), e.g. dev.jsonl.")
@click.option("--replay", "replay_file", type=click.Path(exists=True, path_type=Path),
              help="A trajectory file whose record --index is replayed (any readable format).")
@click.option("--base-url", help="OpenAI-compatible endpoint for --policy model.")
@click.option("--model", "model_name", help="Model name for --policy model, model folder for --policy local.")
def play_cmd(name: str, policy: str, split: str, index: int, seed: int, tasks_file: Path | None,
             replay_file: Path | None, base_url: str | None, model_name: str | None) -> None:
    """Play one episode of env NAME and print it readably, with the verdict."""
    import itertools

    from agentflan.envs import get_env, run_episode
    from agentflan.envs.base import ExpertPolicy, Policy, RandomPolicy, ReplayPolicy
    from agentflan.render import render_text

    info = get_env(name)
    if tasks_file is not None:
        if name != "db":
            raise click.UsageError("--tasks takes AgentBench dbbench tasks: it works with env db only")
        task = _agentbench_task(tasks_file, index)
    else:
        task = info.generate(index + 1, "heldout" if split == "heldout" else "train", seed)[index]
    chosen: Policy
    if policy == "expert":
        chosen = ExpertPolicy(info.expert(task))
    elif policy == "random":
        chosen = RandomPolicy(seed)
    elif policy == "replay":
        if replay_file is None:
            raise click.UsageError("--policy replay needs --replay FILE")
        from agentflan.io import read

        traj = next(itertools.islice(read(str(replay_file), on_error="raise"), index, None), None)
        if traj is None:
            raise ConfigError(f"--index {index}: {replay_file} has fewer than {index + 1} records")
        chosen = ReplayPolicy(traj)
    elif policy == "local":
        if not model_name:
            raise click.UsageError("--policy local needs --model FOLDER (e.g. runs/x/final or runs/x/merged)")
        from agentflan.envs.model_policy import LocalModelPolicy

        chosen = LocalModelPolicy(model_name)
    else:
        if not base_url or not model_name:
            raise click.UsageError("--policy model needs --base-url and --model")
        from agentflan.envs.model_policy import ModelPolicy

        chosen = ModelPolicy(base_url, model_name)
    episode = run_episode(info.make(), task, chosen)
    click.echo(render_text(episode.trajectory, max_chars=1500))
    verdict = "SUCCESS" if episode.verdict.success else "FAILURE"
    click.echo(f"\n== {verdict}: {episode.verdict.reason} ({episode.steps} assistant turns)")


def _agentbench_task(path: Path, index: int) -> Task:
    """Task `index` (0-based line) of an AgentBench dbbench JSONL file, or a ConfigError saying why not."""
    import json

    from agentflan.envs.db import task_from_agentbench

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not a UTF-8 text file (AgentBench dbbench JSONL expected): {e}") from e
    if index >= len(lines):
        raise ConfigError(f"--index {index}: {path} has {len(lines)} tasks (0 to {len(lines) - 1})")
    try:
        return task_from_agentbench(json.loads(lines[index]), index)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{index + 1}: malformed JSON: {e.msg}") from e
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise ConfigError(f"{path}:{index + 1}: not an AgentBench dbbench task (missing or bad "
                          f"{type(e).__name__}: {e})") from e
