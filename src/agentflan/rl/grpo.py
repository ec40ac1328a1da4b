"""`agentflan train RL-RECIPE`: reinforcement learning on agentflan's environments with TRL's GRPO.

A recipe with an `rl:` section (passed verbatim to `trl.GRPOConfig`, as `trl:` is to `SFTConfig`)
starts from a model folder `agentflan train` wrote: its `agentflan.json` gives the chat template and
the protocols it was trained on. Each GRPO prompt is one training episode of a source (`rl.sources`:
an environment's `train` tasks, or BFCL multi-turn entries); TRL repeats it `num_generations` times
(a group).

Rollouts go through TRL's `rollout_func` extension point (no fork of the trainer): `rl.rollout`
plays every episode with the model's protocol through `models.driver.drive`, the loop `eval` plays
episodes with, sampling token-exactly (the ids trained are the ids sampled; environment text is
masked; see that module).

Reward = the source's verdict (the environment's, or BFCL's checker) (1 success, 0 otherwise: failure, error, a truncated episode),
plus `format_reward` x (every reply parsed by the protocol) when `format_reward` > 0 (logged apart as
`rewards/format_valid/mean`: watch it against `rewards/verdict/mean` for format hacking).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from agentflan.errors import ConfigError, MissingDependencyError, require
from agentflan.io.files import write_atomic
from agentflan.options import did_you_mean, validation_problems
from agentflan.rl.rollout import STATS, EnvRollout, Sampler
from agentflan.rl.sources import Episode, episode_source

log = logging.getLogger(__name__)


class RLRecipe(BaseModel):
    """A GRPO recipe (`recipes/train/tiny-rl-smoke.yaml`, `smollm2-135m-rl.yaml`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"] = "train"
    name: str
    description: str = ""
    model: str
    """A model folder `agentflan train` wrote (its `agentflan.json` gives template and protocols)."""
    envs: list[str] = Field(default_factory=lambda: ["toolapi", "db"])
    """Where episodes come from (`rl.sources`): environments (`envs.ENVIRONMENTS`), or registered
    episode sources such as `bfcl-multi`."""
    tasks: int = Field(64, ge=1)
    """Training episodes per source (an environment's: the first `tasks` of its `train` split)."""
    protocol: str | dict[str, str] | None = None
    """The protocol the model plays: one name, or one per source (`{db: "agentinstruct:db", toolapi:
    tflan}`; a source not named plays the default), default: its most trained protocol that fits the
    environment."""
    max_turns: int = Field(6, ge=1)
    """Model actions per episode."""
    max_new_tokens: int = Field(128, ge=1)
    """Tokens per model turn (the whole episode is also capped by `rl.max_completion_length`)."""
    format_reward: float = Field(0.0, ge=0.0)
    """Added to the reward of an episode whose every reply the protocol could read (0: off)."""
    rl: dict[str, Any] = Field(default_factory=dict)
    """Passed verbatim to `trl.GRPOConfig` (TRL validates it)."""
    output_dir: str
    resume: bool | str = False
    """As in SFT: true resumes from the last complete checkpoint, a path from that checkpoint."""
    dtype: str = "float32"
    seed: int = 17


_RL_RESERVED = {"output_dir": "the recipe's top-level output_dir"}


def is_rl_data(data: Any) -> bool:
    """Whether a loaded training recipe mapping is an RL recipe (it has an `rl:` section)."""
    return isinstance(data, dict) and "rl" in data


def check_rl_section(rl: dict[str, Any]) -> None:
    """The `rl:` keys are `GRPOConfig` fields (checked by name when TRL is installed).

    Raises:
        ConfigError: Unknown or reserved keys, with the closest field names.
    """
    import dataclasses
    import importlib.util

    if not rl or importlib.util.find_spec("trl") is None:
        return
    from trl import GRPOConfig

    fields = sorted(f.name for f in dataclasses.fields(GRPOConfig) if f.init)
    problems = []
    for key in rl:
        if key in _RL_RESERVED:
            problems.append(f"rl.{key} is set by {_RL_RESERVED[key]}")
        elif key not in fields:
            problems.append(f"rl.{key}: not a GRPOConfig field{did_you_mean(key, fields)}")
    if problems:
        raise ConfigError("; ".join(problems))


def load_rl_recipe(path: Path, data: dict[str, Any]) -> RLRecipe:
    """Validate an RL recipe (already read from `path`, overrides applied).

    Raises:
        ConfigError: A bad key or value, naming `path` and the key (exit code 4).
    """
    from pydantic import ValidationError

    try:
        recipe = RLRecipe.model_validate(data)
    except ValidationError as e:
        lines = validation_problems(e, RLRecipe)
        if len(lines) == 1:
            raise ConfigError(f"{path}: {lines[0]}") from e
        raise ConfigError(f"{path}: {len(lines)} problems:\n  " + "\n  ".join(lines)) from e
    try:
        check_rl_section(recipe.rl)
        if recipe.rl.get("use_vllm"):
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise MissingDependencyError("rl.use_vllm: the rollouts would sample with TRL's vLLM generation, "
                                             "and vLLM is not installed (a CUDA machine: pip install 'trl[vllm]')")
        for name in recipe.envs:
            episode_source(name).check()
        if isinstance(recipe.protocol, dict):
            stray = sorted(set(recipe.protocol) - set(recipe.envs))
            if stray:
                raise ConfigError(f"protocol: {', '.join(stray)} is not in envs ({', '.join(recipe.envs)})"
                                  f"{did_you_mean(stray[0], recipe.envs)}")
        if not recipe.envs:
            raise ConfigError("envs: list at least one environment")
        model_info(recipe.model)
    except (ConfigError, MissingDependencyError) as e:
        raise type(e)(f"{path}: {e}") from e
    return recipe


def model_info(folder: str) -> dict[str, Any]:
    """The `agentflan.json` of a model folder `agentflan train` wrote.

    Raises:
        ConfigError: No such folder, or no `agentflan.json` in it (not a model agentflan trained).
    """
    from agentflan.training.models import INFO_FILE

    f = Path(folder) / INFO_FILE
    if not f.is_file():
        raise ConfigError(f"model: {folder} is not a model folder `agentflan train` wrote (no {INFO_FILE}): "
                          "RL starts from an SFT model, whose template and protocols it keeps")
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ConfigError(f"model: {f} is not JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConfigError(f"model: {f} is not a JSON object")
    return data


def pick_protocol(info: dict[str, Any], env: str, chosen: str | dict[str, str] | None) -> str:
    """The protocol the model plays in `env`: `chosen` (its entry for `env` when it names one per
    source), else its most trained one that fits (`ModelInfo.episode_protocols`, as eval picks),
    else `react`."""
    from agentflan.formats.protocols import get_protocol
    from agentflan.models.info import ModelInfo

    if isinstance(chosen, dict):
        chosen = chosen.get(env)
    if chosen is not None:
        get_protocol(chosen)
        return chosen
    trained = ModelInfo(protocols=dict(info.get("protocols") or {})).episode_protocols(env)
    return trained[0] if trained != ["native"] else "react"


# ---- rewards, logs and the run -------------------------------------------------------------------------------


def verdict(prompts: list[Any], completions: list[Any], verdict: list[float], **_: Any) -> list[float]:
    """The environment's verdict: 1.0 success, 0.0 otherwise (TRL logs it as `rewards/verdict/mean`)."""
    return list(verdict)


def format_term(weight: float) -> Callable[..., list[float]]:
    def format_valid(prompts: list[Any], completions: list[Any], format_ok: list[float], **_: Any) -> list[float]:
        return [weight * x for x in format_ok]

    return format_valid


def _stats_callback(rollout: EnvRollout) -> Any:
    from transformers import TrainerCallback

    class RolloutStats(TrainerCallback):  # type: ignore[misc]
        """Adds the rollouts' success, drift, turns and truncation since the last log to the log (the
        means over every process's rollouts: each process's log holds the same numbers)."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            n, *sums = rollout.pending_stats
            if not n or not state.log_history:
                return
            rollout.pending_stats = [0.0] * len(STATS)
            state.log_history[-1].update({f"rl/{k}": v / n for k, v in zip(STATS[1:], sums, strict=True)})

    return RolloutStats()


def run(recipe: RLRecipe, *, sampler: Sampler | None = None) -> dict[str, Any]:
    """Train as the RL recipe says; return the metrics (also written to `output_dir/metrics.json`)."""
    require("trl", "train")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import GRPOConfig, GRPOTrainer

    from agentflan.formats.templates import get_template
    from agentflan.training.checkpoints import (
        last_checkpoint,
        publish,
        removed_on_failure,
        resolve_resume,
        staging,
        with_safe_checkpoints,
    )
    from agentflan.training.models import check_local_model

    info = model_info(recipe.model)
    check_local_model(recipe.model)
    set_seed(recipe.seed)
    if int(os.environ.get("RANK", "0")):  # under torchrun/accelerate: the main process shows the progress bars
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(recipe.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = get_template(info.get("template", "hf"), tokenizer)
    specs: dict[str, Episode] = {}
    protocols = {env: pick_protocol(info, env, recipe.protocol) for env in recipe.envs}
    for env, protocol in protocols.items():
        for episode in episode_source(env).episodes(recipe.tasks, recipe.seed, protocol):
            specs[episode.key] = episode
    args = {"output_dir": str(out), "report_to": "none", "logging_steps": 1, "save_strategy": "no",
            "seed": recipe.seed, **recipe.rl}
    try:
        config = GRPOConfig(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the rl: section of {recipe.name!r}: {e}") from e
    if config.process_index == 0:  # every process would write it through the same temporary file
        write_atomic(out / "train_recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    model = AutoModelForCausalLM.from_pretrained(recipe.model, dtype=getattr(torch, recipe.dtype))
    rollout = EnvRollout(specs, template, tokenizer, max_turns=recipe.max_turns, max_new_tokens=recipe.max_new_tokens,
                         max_completion_length=config.max_completion_length or 1024, sampler=sampler)
    rewards: list[Callable[..., list[float]]] = [verdict]
    if recipe.format_reward > 0:
        rewards.append(format_term(recipe.format_reward))
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    trainer = with_safe_checkpoints(epoch_seeded(GRPOTrainer))(
        model=model, reward_funcs=rewards, args=config, train_dataset=Dataset.from_list([{"prompt": k} for k in specs]),
        processing_class=tokenizer, rollout_func=rollout, callbacks=[_stats_callback(rollout)])
    checkpoint = resolve_resume(out, recipe.resume, tidy=trainer.args.should_save)
    start = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except KeyboardInterrupt:
        last = last_checkpoint(out)
        log.warning("RL stopped at step %d: %s", trainer.state.global_step,
                    f"run again with resume=true to continue from {last.name}" if last else "no checkpoint saved yet")
        raise
    seconds = time.perf_counter() - start
    history = trainer.state.log_history
    metrics = {"global_step": trainer.state.global_step, "seconds": round(seconds, 2),
               "resumed_from": checkpoint.name if checkpoint else None, "tasks": len(specs),
               "protocols": protocols,
               "reward": [h["reward"] for h in history if "reward" in h],
               "success": [h["rl/success"] for h in history if "rl/success" in h],
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "device": "cuda" if torch.cuda.is_available() else "cpu", "world_size": trainer.args.world_size,
               "log_history": history}
    final = out / "final"
    zero = trainer.is_world_process_zero()
    tmp = staging(final) if zero else final.with_name(f".partial-{final.name}")
    with removed_on_failure(tmp, owner=zero):
        trainer.save_model(str(tmp))  # collective under DeepSpeed/FSDP: every process calls it (as SFT does)
    if zero:  # one set of outputs, written by the main process
        with removed_on_failure(tmp):
            tokenizer.save_pretrained(str(tmp))
            from agentflan.training.report import write_model_info

            write_model_info(tmp, {**info, "base_model": recipe.model, "rl_recipe": recipe.name})
        publish(tmp, final)
        curve = reward_curve(history, out / "reward.png")
        if curve:
            metrics["reward_curve"] = str(curve)
        write_atomic(out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    return metrics


def epoch_seeded(trainer_cls: type[Any]) -> type[Any]:
    """A subclass of TRL's GRPO trainer whose task order in epoch e depends on (seed, e) only.

    TRL's `RepeatSampler` shuffles every epoch from one generator seeded once, and transformers
    resumes at the first unfinished epoch without replaying the earlier ones: a run resumed after
    epoch 1 would see epoch 1's order again where the uninterrupted run sees epoch 2's, and train on
    other contexts from there. The trainer calls `set_epoch(e)` on the sampler at the start of every
    epoch (resumed or not); reseeding there makes a resumed run the uninterrupted one. Epoch 0 keeps
    TRL's own order (`seed`)."""
    from trl.trainer.utils import RepeatSampler

    from agentflan.seeds import unit

    class EpochSeededSampler(RepeatSampler):  # type: ignore[misc]
        def set_epoch(self, epoch: int) -> None:
            if self.shuffle and self.seed is not None:
                self.generator.manual_seed(self.seed if epoch == 0 else int(unit(self.seed, "grpo-epoch", epoch) * 2**53))

    class EpochSeededTrainer(trainer_cls):  # type: ignore[misc]
        def _get_train_sampler(self, dataset: Any = None) -> Any:
            s = super()._get_train_sampler(dataset)
            return EpochSeededSampler(s.data_source, mini_repeat_count=s.mini_repeat_count, batch_size=s.batch_size,
                                      repeat_count=s.repeat_count, shuffle=s.shuffle, seed=s.seed)

    return EpochSeededTrainer


def reward_curve(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Reward and success per step (`reward.png`)."""
    from agentflan.io.charts import plot_curves

    series = {"reward": [(h["step"], h["reward"]) for h in history if "reward" in h and "step" in h],
              "success": [(h["step"], h["rl/success"]) for h in history if "rl/success" in h and "step" in h]}
    series = {k: v for k, v in series.items() if v}
    return plot_curves(series, path, "mean per rollout", "GRPO reward and success") if series else None
