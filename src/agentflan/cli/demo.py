"""`agentflan demo`: the whole loop on the built-in default, in about a minute on a laptop CPU.

1. the executable environments generate tasks and their scripted experts solve them (verified);
2. the expert episodes, written as ToolBench answer files and AgentInstruct conversations, are
   built into an Agent-FLAN dataset (`builtin` recipe) with its report;
3. a tiny model is trained on it with the Agent-FLAN chat template and loss masks;
4. one trajectory is shown as the trainer sees it, trained tokens marked.
"""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("demo")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True)
@click.option("--steps", type=int, default=30, show_default=True, help="Training steps of the tiny model.")
@click.option("--no-train", is_flag=True, help="Stop after the data build (no torch needed).")
def demo(output: Path, steps: int, no_train: bool) -> None:
    """Synthesize verified trajectories, build an Agent-FLAN dataset, train a tiny model on it."""
    from agentflan.envs.synth import synth
    from agentflan.pipeline.build import build
    from agentflan.pipeline.recipe import load_recipe

    env_dir = output / "env"
    click.echo("== 1. expert episodes in the executable environments (verified)")
    for env_name in ("toolapi", "db"):
        for split, n in (("train", 300), ("heldout", 100)):
            r = synth(env_name, n, split, env_dir)
            click.echo(f"   {env_name}/{split}: {r.written}/{r.tasks} verified "
                       f"({', '.join(f'{k} {v}' for k, v in sorted(r.kinds.items()))})")
    click.echo("== 2. Agent-FLAN data build (recipe builtin)")
    recipe, resolved = load_recipe("builtin", [f"vars.env_dir={env_dir}"])
    result = build(recipe, resolved, output / "data", echo=lambda s: click.echo(f"   {s}"))
    bal = {n: o["balance"] for n, o in result.stats["outputs"].items() if o["balance"]}
    for name, caps in bal.items():
        click.echo(f"   {name}: " + ", ".join(f"{c} {v['requested']:.2f}->{v['realized_turns']:.3f}"
                                             for c, v in caps.items()))
    if no_train:
        return
    click.echo(f"== 3. training a tiny model for {steps} steps (Agent-FLAN template, packed, masked)")
    from agentflan.training.sft import load_train_recipe, run

    train = load_train_recipe("tiny-cpu-smoke", [f"data.paths=[{output / 'data' / 'native' / 'train.jsonl'}]",
                                                 f"output_dir={output / 'run'}", f"trl.max_steps={steps}",
                                                 "trl.save_strategy=\"no\"", "trl.disable_tqdm=true", f"trl.logging_steps={max(1, min(10, steps // 3))}",
                                                 "data_recipe=builtin"])
    metrics = run(train)
    losses = [h["loss"] for h in metrics["log_history"] if "loss" in h]
    d = metrics["data"]
    click.echo(f"   {d['samples']} samples packed into {d['rows']} rows (efficiency {d['packing_efficiency']:.1%}); "
               f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; {metrics['tokens_per_second']:.0f} tokens/s")
    click.echo(f"   model: {output / 'run' / 'final'}  loss curve: {output / 'run' / 'loss.png'}")
    click.echo("== 4. one training sample as the trainer sees it (⟦trained⟧)")
    from agentflan.formats.templates import AgentFlanTemplate
    from agentflan.schema import Trajectory
    from agentflan.training.masking import encode, show_trained
    line = (output / "data" / "native" / "db_tflan.jsonl").read_text().splitlines()[0]
    traj = Trajectory.model_validate(json.loads(line))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(output / "run" / "final")
    click.echo(show_trained(encode(traj, AgentFlanTemplate(), tok), tok))
