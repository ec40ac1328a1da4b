"""`agentflan env list | synth | play`."""

from __future__ import annotations

from pathlib import Path

import click

from agentflan.cli.evaluate import SEED, db_engine_option, db_setup, engine_options
from agentflan.errors import ConfigError, PartialResult


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
@click.option("-n", "--n", "count", type=click.IntRange(min=1), default=500, show_default=True, help="Tasks to generate.")
@click.option("--split", type=click.Choice(["train", "heldout"]), default="train", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
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
              show_default=True, help="model: an OpenAI-compatible endpoint (--base-url); local: a model folder (--model).")
@click.option("--split", type=click.Choice(["train", "heldout", "dev"]), default="train", show_default=True)
@click.option("--index", type=click.IntRange(min=0), default=0, show_default=True, help="Which task (0-based).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--tasks", "tasks_file", type=click.Path(exists=True, path_type=Path),
              help="AgentBench dbbench JSONL to take the task from (db only), e.g. dev.jsonl.")
@click.option("--replay", "replay_file", type=click.Path(exists=True, path_type=Path),
              help="A trajectory file whose record --index is replayed (any readable format).")
@click.option("--show-prompt", is_flag=True, help="Also print the last prompt as the model saw it (protocol rendering).")
@db_engine_option
@engine_options
def play_cmd(name: str, policy: str, split: str, index: int, seed: int, tasks_file: Path | None,
             replay_file: Path | None, show_prompt: bool, db_engine: str, sql_mode: str | None, model: str | None,
             base_url: str | None,
             engine_name: str,
             protocols: tuple[str, ...], batch_size: int, max_new_tokens: int, device: str, dtype: str,
             concurrency: int, timeout_s: float, retries: int) -> None:
    """Play one episode of env NAME and print it readably, with the verdict.

    With a model (--policy local/model), the episode is played exactly as `agentflan eval` plays
    it: the protocol the model was trained with (or --protocol), its chat template, greedy decoding.
    """
    import itertools

    from agentflan.envs import get_env
    from agentflan.envs.base import Agent, Episode, RandomPolicy, ReplayPolicy, play
    from agentflan.eval.envs import agentbench_task, make_env
    from agentflan.formats.protocols import Prompt
    from agentflan.render import render_text

    db_engine, sql_mode = db_setup(db_engine, sql_mode)
    info = get_env(name)
    if tasks_file is not None:
        if name != "db":
            raise ConfigError("--tasks takes AgentBench dbbench tasks: it works with env db only")
        task = agentbench_task(tasks_file, index)
    else:
        task = info.generate(index + 1, "heldout" if split == "heldout" else "train", seed)[index]
    agent: Agent
    engine = None
    if policy == "expert":
        from agentflan.eval.envs import scripted_agent

        agent = scripted_agent("expert", name, seed, db_engine, sql_mode)(task)
    elif policy == "random":
        agent = RandomPolicy(seed)
    elif policy == "replay":
        if replay_file is None:
            raise click.UsageError("--policy replay needs --replay FILE")
        from agentflan.io import read

        found = next(itertools.islice(read(str(replay_file), on_error="raise"), index, None), None)
        if found is None:
            raise ConfigError(f"--index {index}: {replay_file} has fewer than {index + 1} records")
        agent = ReplayPolicy(found)
    else:
        from agentflan.cli.evaluate import engine_from_options
        from agentflan.formats.protocols import get_protocol
        from agentflan.models.engines import EngineOptions, episode_protocols

        if policy == "local" and not model:
            raise click.UsageError("--policy local needs --model FOLDER (e.g. runs/x/final or runs/x/merged)")
        if policy == "model" and (not base_url or not model):
            raise click.UsageError("--policy model needs --base-url and --model")
        engine = engine_from_options(EngineOptions(
            engine_name if engine_name != "auto" else ("openai" if policy == "model" else "hf"), model,
            base_url if policy == "model" else None, batch_size=1, max_new_tokens=max_new_tokens, device=device,
            dtype=dtype, concurrency=1, timeout_s=timeout_s, retries=retries))
        agent = get_protocol(episode_protocols(engine, name, protocols)[0], getattr(engine, "template", None))
    from agentflan.models.driver import drive

    prompts: list[Prompt] = []  # the episode's prompts, one per round (--show-prompt shows the last)
    episode: Episode = drive([play(make_env(name, db_engine, sql_mode), task, agent)], engine, on_prompts=prompts.extend)[0]
    last_prompt = prompts[-1] if prompts else None
    click.echo(render_text(episode.trajectory, max_chars=1500))
    for k, a in enumerate(episode.actions):
        if a["kind"] == "unparseable" or a["flags"]:
            click.echo(f"\n-- action {k}: {a['kind']} {a['error'] or ''} flags={a['flags']}\n   raw: {a['texts']!r}")
    if show_prompt and last_prompt is not None and hasattr(engine, "template"):
        click.echo("\n== last prompt as the model saw it:\n" + engine.template.text(  # type: ignore[union-attr]
            last_prompt.messages, last_prompt.tools, add_generation_prompt=True))
    if episode.error is not None:
        raise click.ClickException(f"the episode ended in an error, not a verdict: {episode.error}")
    assert episode.verdict is not None
    verdict = "SUCCESS" if episode.verdict.success else "FAILURE"
    protocol = f", protocol {getattr(agent, 'name', policy)}" if engine is not None else ""
    click.echo(f"\n== {verdict}: {episode.verdict.reason} ({episode.steps} assistant turns{protocol})")
