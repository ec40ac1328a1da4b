"""`agentflan train RECIPE [key=value ...]`, in this process or under `accelerate launch`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

import click

LAUNCH_CONFIGS = ("ddp", "zero2", "zero3", "fsdp")


def accelerate_config_file(name: str) -> Path:
    if Path(name).exists():
        return Path(name)
    path = resources.files("agentflan") / "recipes" / "accelerate" / f"{name}.yaml"
    if not path.is_file():
        raise click.BadParameter(f"{name!r}: a file, or one of {', '.join(LAUNCH_CONFIGS)}")
    return Path(str(path))


@click.command("train")
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("--launcher", type=click.Choice(["none", "accelerate", "torchrun"]), default="none",
              show_default=True, help="Run here, under `accelerate launch` (DDP, DeepSpeed, FSDP on GPUs), or "
                                      "under `torchrun` (DDP; on CPU with the gloo backend).")
@click.option("--accelerate-config", default="ddp", show_default=True,
              help=f"A shipped config ({', '.join(LAUNCH_CONFIGS)}) or a YAML file.")
@click.option("--num-processes", type=click.IntRange(min=1), help="Processes (accelerate: overrides the config; torchrun: default 2).")
@click.option("--dry-run", is_flag=True, help="Validate, tokenize and report the data; do not train.")
def train(recipe: str, overrides: tuple[str, ...], launcher: str, accelerate_config: str,
          num_processes: int | None, dry_run: bool) -> None:
    """Fine-tune a model as RECIPE says (a packaged name or a YAML file); a recipe with an `rl:`
    section trains an `agentflan train` model with GRPO on the environments (rl/grpo.py)."""
    from agentflan.rl import grpo as rl
    from agentflan.training.sft import prepare, read_train_recipe, run, validate_train_recipe

    path, data = read_train_recipe(recipe, list(overrides))
    if rl.is_rl_data(data):
        rl_recipe = rl.load_rl_recipe(path, data)
        if dry_run:
            click.echo(rl_recipe.model_dump_json(indent=2))
            return
        if launcher != "none":  # each process plays its share of every GRPO batch (docs/training.md)
            if launcher == "accelerate":
                _refuse_sharded(accelerate_config_file(accelerate_config))
            _launch(launcher, accelerate_config, num_processes, recipe, overrides, "rl")
        m = rl.run(rl_recipe)
        success = m["success"][-1] if m["success"] else float("nan")
        click.echo(f"trained {m['global_step']} GRPO steps on {m['tasks']} tasks, last success {success:.3f} -> "
                   f"{rl_recipe.output_dir}/final")
        return
    rec = validate_train_recipe(path, data)
    if dry_run:
        stats = prepare(rec)[2]
        click.echo(json.dumps(stats, indent=2))
        return
    if launcher != "none":
        _launch(launcher, accelerate_config, num_processes, recipe, overrides, "trl")
    metrics = run(rec)
    click.echo(f"trained {metrics['global_step']} steps, loss {metrics['train_loss']:.4f}, "
               f"{metrics['tokens_per_second']:.0f} tokens/s, peak RSS {metrics['peak_rss_mb']:.0f} MB -> "
               f"{rec.output_dir}/final")


def _launch(launcher: str, accelerate_config: str, num_processes: int | None, recipe: str,
            overrides: tuple[str, ...], section: str) -> None:
    """Run `agentflan.cli.launch RECIPE` under `accelerate launch` or `torchrun` and exit with its code.

    Args:
        section: The recipe section that goes to the trainer's config (`trl` for SFT, `rl` for GRPO):
            torchrun on a machine without CUDA sets its `ddp_backend` to gloo.
    """
    if launcher == "accelerate":
        exe = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
        cmd = [exe, "launch", "--config_file", str(accelerate_config_file(accelerate_config))]
        if num_processes:
            cmd += ["--num_processes", str(num_processes)]
        cmd += ["-m", "agentflan.cli.launch", recipe, *overrides]
    else:
        import torch

        backend = [] if torch.cuda.is_available() else [f"{section}.ddp_backend=gloo"]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={num_processes or 2}", "-m", "agentflan.cli.launch", recipe,
               *overrides, *backend]
    click.echo("$ " + " ".join(cmd), err=True)
    raise SystemExit(subprocess.call(cmd, env=os.environ.copy()))


def _refuse_sharded(config: Path) -> None:
    """An RL recipe samples its rollouts with `generate` on each process's own copy of the model, each
    process as many forward passes as its episodes need: under ZeRO-3 or FSDP every forward pass
    gathers the sharded parameters from all processes, which would then wait on each other forever."""
    import yaml

    from agentflan.errors import ConfigError

    data = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
    kind = str(data.get("distributed_type", ""))
    stage = (data.get("deepspeed_config") or {}).get("zero_stage")
    if kind == "FSDP" or (kind == "DEEPSPEED" and stage == 3):
        raise ConfigError(f"{config}: an RL recipe cannot train under {'FSDP' if kind == 'FSDP' else 'ZeRO-3'} "
                          "(each process generates its own rollouts, a different number of forward passes, and every "
                          "forward pass would gather the sharded weights from all processes): use ddp or zero2")
