"""`agentflan train RL-RECIPE`: reinforcement learning on agentflan's environments with TRL's GRPO.

A recipe with an `rl:` section (passed verbatim to `trl.GRPOConfig`, as `trl:` is to `SFTConfig`)
starts from a model folder `agentflan train` wrote: its `agentflan.json` gives the chat template and
the protocols it was trained on. Each GRPO prompt is one training task of an environment
(`envs.get_env(name).generate(n, "train", seed)`); TRL repeats it `num_generations` times (a group).

Rollouts go through TRL's `rollout_func` extension point (no fork of the trainer): every episode is
the environment's own loop (`envs.base.play`) with the model's protocol, the one `eval` plays, and
each prompt is rendered by the same template (`training.masking.prompt_ids`). The policy samples
from a token context that this module keeps itself, so **the ids trained are the ids sampled**:

* turn 1: the context is the rendered prompt (`prompt_ids`);
* each model turn appends the sampled ids as they came out of the sampler (end-of-turn token
  included), never the text decoded and tokenized again;
* what follows (the end of the assistant turn, observations, elicits, the next generation prompt)
  is the re-render of the next prompt after its trained assistant segment: appended with
  `env_mask` 0, so TRL's loss (completion mask x tool mask) never trains environment text.

A template that is not prefix-preserving (a later prompt does not begin with the episode's first
prompt) raises `TemplateError`. Where the re-render of what the model wrote differs from the ids
it sampled (a reply the protocol normalizes, a thought a multi-generation protocol such as `tflan`
rewrites once the action is complete), the turn is counted as *drift* (`rl/drift_turns` in the
log; a drift persists into the later turns of its episode): the policy still trains on what it
sampled, in the context it sampled it in, but eval would show it the re-render. `exact_rollout` is the check
the tests run: a rollout without drift equals the re-render of its whole episode, token for token.

Reward = the environment's verdict (1 success, 0 otherwise: failure, error, a truncated episode),
plus `format_reward` x (every reply parsed by the protocol) when `format_reward` > 0 (logged apart as
`rewards/format_valid/mean`: watch it against `rewards/verdict/mean` for format hacking).
"""

from __future__ import annotations

import json
import logging
import resource
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from agentflan.errors import ConfigError, require
from agentflan.formats.templates import turn_ends
from agentflan.io.files import write_atomic
from agentflan.options import did_you_mean, validation_problems

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
    """Environments whose training tasks are rolled out (`envs.ENVIRONMENTS`)."""
    tasks: int = Field(64, ge=1)
    """Training tasks per environment (the first `tasks` of its `train` split)."""
    protocol: str | None = None
    """The protocol the model plays (default: its most trained protocol that fits the environment)."""
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
        from agentflan.envs import get_env

        for name in recipe.envs:
            get_env(name)
        if not recipe.envs:
            raise ConfigError("envs: list at least one environment")
        model_info(recipe.model)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
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


def pick_protocol(info: dict[str, Any], env: str, chosen: str | None) -> str:
    """The protocol the model plays in `env`: `chosen`, else its most trained one that fits."""
    from agentflan.formats.protocols import get_protocol

    if chosen is not None:
        get_protocol(chosen)
        return chosen
    counts = info.get("protocols") or {}
    for name, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        try:
            proto = get_protocol(name)
        except ConfigError:
            continue
        if proto.episodic and proto.plays_envs and proto.fits(env):
            return str(name)
    return "react"


# ---- the rollout ----------------------------------------------------------------------------------------------

Sampler = Callable[[list[list[int]], tuple[str, ...], int], list[tuple[list[int], list[float]]]]
"""`sample(contexts, stop_strings, max_new_tokens)`: per context, the sampled ids (end token
included) and their log-probabilities."""


@dataclass
class Rollout:
    """One episode as the trainer sees it."""

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    """1: a token the policy sampled (trained); 0: environment text (masked)."""
    logprobs: list[float] = field(default_factory=list)
    success: bool = False
    format_ok: bool = False
    drift_turns: int = 0
    turns: int = 0
    truncated: bool = False
    trajectory: Any = None
    """The episode's transcript (`envs.base.Episode.trajectory`; for `exact_rollout`)."""


@dataclass
class EpisodeSpec:
    env: str
    task: Any
    protocol: str


class EnvRollout:
    """TRL's `rollout_func`: plays one episode per prompt (see the module docstring).

    Args:
        specs: The episode of each dataset prompt (its text is the key).
        template: The chat template; tokenizer: the model's.
        max_turns, max_new_tokens, max_completion_length: Episode limits.
        sampler: How ids are sampled (default: the trainer's model, `hf_sampler`); tests script it.
    """

    def __init__(self, specs: dict[str, EpisodeSpec], template: Any, tokenizer: Any, *, max_turns: int,
                 max_new_tokens: int, max_completion_length: int, sampler: Sampler | None = None) -> None:
        self.specs = specs
        self.template = template
        self.tokenizer = tokenizer
        self.max_turns = max_turns
        self.max_new_tokens = max_new_tokens
        self.max_completion_length = max_completion_length
        self.sampler = sampler
        self.end_stops, self.stop_ids = turn_ends(template, tokenizer)  # where eval's engines stop
        self.pending_stats: list[Rollout] = []

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        sampler = self.sampler or hf_sampler(trainer, self.tokenizer, self.stop_ids)
        rollouts = self.play([str(p) for p in prompts], sampler)
        self.pending_stats += rollouts
        return {"prompt_ids": [r.prompt_ids for r in rollouts], "completion_ids": [r.completion_ids for r in rollouts],
                "logprobs": [r.logprobs for r in rollouts], "env_mask": [r.env_mask for r in rollouts],
                "verdict": [float(r.success) for r in rollouts], "format_ok": [float(r.format_ok) for r in rollouts]}

    def play(self, prompts: list[str], sampler: Sampler) -> list[Rollout]:
        """Play every prompt's episode in lockstep (one batched sampling per round)."""
        from agentflan.envs import get_env
        from agentflan.envs.base import play
        from agentflan.formats.protocols import Completion, get_protocol

        gens: dict[int, Generator[Any, Any, Any]] = {}
        out: list[Rollout | None] = [None] * len(prompts)
        state: dict[int, _Turns] = {}
        pending: dict[int, Any] = {}
        for i, p in enumerate(prompts):
            spec = self.specs.get(p)
            if spec is None:
                raise ConfigError(f"rollout: no task for the prompt {p[:80]!r}")
            info = get_env(spec.env)
            gen = play(info.make(), spec.task, get_protocol(spec.protocol, self.template), max_steps=self.max_turns)
            gens[i] = gen
            pending[i] = next(gen)
            state[i] = _Turns(self, pending[i])
        while pending:
            order = list(pending)
            contexts = [state[i].context() for i in order]
            stops = tuple(sorted({s for i in order for s in pending[i].stop}))
            sampled = sampler(contexts, stops, self.max_new_tokens)
            for i, context, (ids, lps) in zip(order, contexts, sampled, strict=True):
                st = state[i]
                text, stop = self._cut(ids, pending[i].stop)
                st.sampled(ids, lps)
                try:
                    nxt = gens[i].send(Completion(text=text, stop=stop, tokens=len(ids), prompt_tokens=len(context)))
                except StopIteration as done:
                    out[i] = st.finish(done.value)
                    del pending[i]
                    continue
                if st.length() >= self.max_completion_length:
                    gens[i].close()
                    out[i] = st.truncate()
                    del pending[i]
                    continue
                st.observe(nxt)
                pending[i] = nxt
        return [r for r in out if r is not None]

    def _cut(self, ids: list[int], protocol_stops: tuple[str, ...]) -> tuple[str, str | None]:
        text = self.tokenizer.decode(ids, skip_special_tokens=False)
        best, which = len(text), None
        for s in (*protocol_stops, *self.end_stops):
            at = text.find(s) if s else -1
            if 0 <= at < best:
                best, which = at, s
        return text[:best], which if which in protocol_stops else None


class _Turns:
    """The token context of one episode: sampled ids (trained) and environment text (masked)."""

    def __init__(self, rollout: EnvRollout, first: Any) -> None:
        from agentflan.training.masking import prompt_ids

        self.r = rollout
        self.out = Rollout(prompt_ids=prompt_ids(rollout.template, rollout.tokenizer, first.messages, first.tools))

    def context(self) -> list[int]:
        return self.out.prompt_ids + self.out.completion_ids

    def length(self) -> int:
        return len(self.out.completion_ids)

    def sampled(self, ids: list[int], lps: list[float]) -> None:
        self.out.completion_ids += ids
        self.out.env_mask += [1] * len(ids)
        self.out.logprobs += lps
        self.out.turns += 1

    def observe(self, prompt: Any) -> None:
        """Append what the environment adds before the next turn (masked): the re-render of the next
        prompt after its last trained (assistant) segment."""
        from agentflan.formats.templates import TemplateError
        from agentflan.training.masking import tokenize_segments

        tok, template = self.r.tokenizer, self.r.template
        ids, flags = tokenize_segments(template.render(prompt.messages, prompt.tools, add_generation_prompt=True), tok)
        if template.add_bos and tok.bos_token_id is not None:
            ids, flags = [tok.bos_token_id, *ids], [False, *flags]
        first = self.out.prompt_ids
        end = max((i for i, f in enumerate(flags) if f), default=-1) + 1
        if ids[:len(first)] != first or end <= len(first):
            raise TemplateError(f"template {template.name!r} is not prefix-preserving: the prompt of turn "
                                f"{self.out.turns + 1} does not begin with the episode's first prompt; "
                                "token-exact rollouts need a template that appends turns")
        if ids[:end] != self.context():
            # the re-render of what the model wrote (this turn or an earlier one) differs from the ids it
            # sampled: it goes on from its own ids, eval would show it the re-render
            self.out.drift_turns += 1
        tail = ids[end:]
        self.out.completion_ids += tail
        self.out.env_mask += [0] * len(tail)
        self.out.logprobs += [0.0] * len(tail)

    def finish(self, episode: Any) -> Rollout:
        self.out.success = bool(episode.verdict is not None and episode.verdict.success)
        self.out.format_ok = bool(episode.actions) and all(a["kind"] in ("call", "answer") for a in episode.actions)
        self.out.trajectory = episode.trajectory
        return self._capped()

    def truncate(self) -> Rollout:
        self.out.truncated = True
        return self._capped()

    def _capped(self) -> Rollout:
        n = self.r.max_completion_length
        if len(self.out.completion_ids) > n:
            self.out.truncated = True
            self.out.success = False
            self.out.completion_ids = self.out.completion_ids[:n]
            self.out.env_mask = self.out.env_mask[:n]
            self.out.logprobs = self.out.logprobs[:n]
        return self.out


def exact_rollout(rollout: Rollout, template: Any, tokenizer: Any, protocol: Any, key: str = "") -> bool:
    """Whether the rollout's ids equal the re-render of its whole episode through the protocol and the
    template (up to the template's text after the last assistant turn, which nothing sampled)."""
    from agentflan.formats.protocols import conversation_key
    from agentflan.training.masking import tokenize_segments

    traj = rollout.trajectory
    if traj is None:  # a truncated episode has no transcript to compare
        return False
    messages = protocol.render(traj, key or conversation_key(traj))
    ids, flags = tokenize_segments(template.render(messages, None), tokenizer)
    if template.add_bos and tokenizer.bos_token_id is not None:
        ids, flags = [tokenizer.bos_token_id, *ids], [False, *flags]
    last = max((i for i, f in enumerate(flags) if f), default=-1)
    return rollout.prompt_ids + rollout.completion_ids == ids[:last + 1]


def hf_sampler(trainer: Any, tokenizer: Any, stop_ids: set[int]) -> Sampler:
    """Sample from the trainer's model with `generate` (left padding; the trainer's temperature,
    top-p, top-k (0: off, as in TRL), min-p and repetition penalty); each row is cut after its first
    end token or protocol stop string. The draws come from torch's generator, which the trainer
    seeds (`seed`) and a checkpoint restores."""
    import torch

    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def sample(contexts: list[list[int]], stops: tuple[str, ...], max_new: int) -> list[tuple[list[int], list[float]]]:
        width = max(len(c) for c in contexts)
        batch = torch.full((len(contexts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for r, c in enumerate(contexts):
            batch[r, width - len(c):] = torch.tensor(c)
            mask[r, width - len(c):] = 1
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(
                    input_ids=batch.to(model.device), attention_mask=mask.to(model.device), do_sample=True,
                    temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                    repetition_penalty=args.repetition_penalty, max_new_tokens=max_new,
                    pad_token_id=pad, eos_token_id=sorted(stop_ids) or None, output_scores=True,
                    return_dict_in_generate=True, **({"stop_strings": list(stops), "tokenizer": tokenizer} if stops else {}))
        finally:
            model.train(was_training)
        seqs = out.sequences[:, width:].tolist()
        logps = [torch.log_softmax(s.float(), dim=-1) for s in out.scores]
        results = []
        for r, new in enumerate(seqs):
            n = _cut_len(new, stop_ids, stops, tokenizer)
            results.append((new[:n], [float(logps[t][r, new[t]]) for t in range(n)]))
        return results

    return sample


def _cut_len(new: list[int], stop_ids: set[int], stops: tuple[str, ...], tokenizer: Any) -> int:
    for n, t in enumerate(new, start=1):
        if t in stop_ids:
            return n
        if stops and any(s in tokenizer.decode(new[:n], skip_special_tokens=False) for s in stops):
            return n
    return len(new)


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
        """Adds the rollouts' success, drift, turns and truncation since the last log to the log."""

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            done = rollout.pending_stats
            if not done or not state.log_history:
                return
            rollout.pending_stats = []
            n = len(done)
            state.log_history[-1].update({
                "rl/success": sum(r.success for r in done) / n,
                "rl/drift_turns": sum(r.drift_turns for r in done) / n,
                "rl/turns": sum(r.turns for r in done) / n,
                "rl/truncated": sum(r.truncated for r in done) / n,
                "rl/format_ok": sum(r.format_ok for r in done) / n})

    return RolloutStats()


def run(recipe: RLRecipe, *, sampler: Sampler | None = None) -> dict[str, Any]:
    """Train as the RL recipe says; return the metrics (also written to `output_dir/metrics.json`)."""
    require("trl", "train")
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import GRPOConfig, GRPOTrainer

    from agentflan.envs import get_env
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
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(recipe.model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = get_template(info.get("template", "hf"), tokenizer)
    specs: dict[str, EpisodeSpec] = {}
    for env in recipe.envs:
        protocol = pick_protocol(info, env, recipe.protocol)
        for task in get_env(env).generate(recipe.tasks, "train", recipe.seed):
            specs[f"{env}/{task.id}"] = EpisodeSpec(env, task, protocol)
    args = {"output_dir": str(out), "report_to": "none", "logging_steps": 1, "save_strategy": "no",
            "seed": recipe.seed, **recipe.rl}
    try:
        config = GRPOConfig(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"the rl: section of {recipe.name!r}: {e}") from e
    write_atomic(out / "train_recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    model = AutoModelForCausalLM.from_pretrained(recipe.model, dtype=getattr(torch, recipe.dtype))
    rollout = EnvRollout(specs, template, tokenizer, max_turns=recipe.max_turns, max_new_tokens=recipe.max_new_tokens,
                         max_completion_length=config.max_completion_length or 1024, sampler=sampler)
    rewards: list[Callable[..., list[float]]] = [verdict]
    if recipe.format_reward > 0:
        rewards.append(format_term(recipe.format_reward))
    import os

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    trainer = with_safe_checkpoints(GRPOTrainer)(
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
               "protocols": {env: pick_protocol(info, env, recipe.protocol) for env in recipe.envs},
               "reward": [h["reward"] for h in history if "reward" in h],
               "success": [h["rl/success"] for h in history if "rl/success" in h],
               "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
               "device": "cuda" if torch.cuda.is_available() else "cpu", "log_history": history}
    if trainer.is_world_process_zero():
        final = out / "final"
        tmp = staging(final)
        with removed_on_failure(tmp):
            trainer.save_model(str(tmp))
            tokenizer.save_pretrained(str(tmp))
            from agentflan.training.report import write_model_info

            write_model_info(tmp, {**info, "base_model": recipe.model, "rl_recipe": recipe.name})
        publish(tmp, final)
        curve = reward_curve(history, out / "reward.png")
        if curve:
            metrics["reward_curve"] = str(curve)
        write_atomic(out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    return metrics


def reward_curve(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Reward and success per step (`reward.png`)."""
    from agentflan.io.charts import plot_curves

    series = {"reward": [(h["step"], h["reward"]) for h in history if "reward" in h and "step" in h],
              "success": [(h["step"], h["rl/success"]) for h in history if "rl/success" in h and "step" in h]}
    series = {k: v for k, v in series.items() if v}
    return plot_curves(series, path, "mean per rollout", "GRPO reward and success") if series else None
