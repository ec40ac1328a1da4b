"""`agentflan train RECIPE`: supervised fine-tuning with exact templates, loss masks and packing.

Read top to bottom, this is the whole recipe:

1. read the trajectories (any readable format; usually a `data build` output);
2. render each with the chosen chat template into trained / untrained segments and tokenize them
   into `input_ids` and `labels` (-100 outside the trained spans; a sample without any trained
   token is dropped and counted, never silently);
3. pack them (best-fit decreasing; position ids restart per sample; the collator gives each row a
   block-diagonal causal mask, so no token attends to another sample);
4. train with TRL's `SFTTrainer` on the prepared dataset, with the `trl:` section of the recipe
   passed verbatim to `SFTConfig` (learning rate, epochs, checkpoints, gradient checkpointing...),
   optionally with a PEFT LoRA adapter;
5. save the model (and the LoRA weights merged), the tokenizer with the same chat template as a
   Jinja template (what is trained is what is served), a loss curve, metrics and a model card.
"""

from __future__ import annotations

import logging
import resource
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentflan.errors import ConfigError, MissingDependencyError, require
from agentflan.io.files import write_atomic
from agentflan.options import did_you_mean, validation_problems
from agentflan.training.models import ModelConfig, check_local_model

log = logging.getLogger(__name__)


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str]
    format: str | None = None
    """Reader name (detected when unset)."""

    @field_validator("paths")
    @classmethod
    def _some_data(cls, paths: list[str]) -> list[str]:
        if not paths:  # training on nothing would end deep in the trainer, not here
            raise ValueError("no training data given: list at least one file, glob or folder")
        return paths

    @field_validator("template")
    @classmethod
    def _known_template(cls, name: str) -> str:
        from agentflan.formats.templates import TEMPLATES

        return TEMPLATES.known(name)
    template: str = "hf"
    """A chat template (`agentflan.formats.templates.TEMPLATES`: agentflan, llama2, hf)."""
    max_length: int = Field(2048, gt=8)
    packing: bool = True
    block_mask: bool = False
    """Pass an explicit 4D block-diagonal mask instead of relying on packed position ids."""
    limit: int | None = None
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    num_proc: int | None = Field(None, ge=1)
    """Processes that render and tokenize (default 1: see docs/training.md)."""
    cache: bool = True
    """Reuse the tokenized rows of an earlier run with the same data, tokenizer and code (and build
    them once for all the ranks of a distributed run)."""


class PeftSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["lora", "qlora"] = "lora"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"


class TrainRecipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["train"] = "train"
    name: str
    description: str = ""
    model: ModelConfig
    data: DataConfig
    peft: PeftSection | None = None
    trl: dict[str, Any] = Field(default_factory=dict)
    """Passed verbatim to `trl.SFTConfig` (TRL validates it)."""
    output_dir: str
    resume: bool | str = False
    """True: the last complete checkpoint in output_dir (from step 0 when there is none); a path:
    that checkpoint. Incomplete checkpoints (a run killed while saving) are removed, never resumed."""
    merge_lora: bool = True
    seed: int = 17
    data_recipe: str | None = None
    """The data recipe that built the training data, for the model card."""
    capability_loss: bool = True
    """Log the training loss of each capability (`loss_reasoning`, ...; `loss_by_capability.png`)."""


def read_train_recipe(ref: str | Path, overrides: list[str] | None = None) -> tuple[Path, dict[str, Any]]:
    """The recipe file `ref` names (a file, or a packaged recipe's name) and its mapping, overrides applied.

    Raises:
        ConfigError: No such file or packaged recipe; not a mapping.
    """
    from importlib import resources

    from agentflan.overrides import apply_overrides, load_yaml_file

    path = Path(ref)
    if not path.is_file():
        # a name is looked up among the packaged recipes, never joined to their folder (`../x` stays out)
        root = resources.files("agentflan") / "recipes" / "train"
        packaged = {p.name.removesuffix(".yaml"): p for p in root.iterdir() if p.name.endswith(".yaml")}
        if str(ref) not in packaged:
            raise ConfigError(f"no training recipe {str(ref)!r}: not a file, not a packaged recipe"
                              f"{did_you_mean(str(ref), packaged)} (packaged: {', '.join(sorted(packaged))})")
        path = Path(str(packaged[str(ref)]))
    data = load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training recipe is a mapping, found {type(data).__name__}")
    return path, apply_overrides(data, overrides or [])


def load_train_recipe(ref: str | Path, overrides: list[str] | None = None) -> TrainRecipe:
    path, data = read_train_recipe(ref, overrides)
    return validate_train_recipe(path, data)


def validate_train_recipe(path: Path, data: dict[str, Any]) -> TrainRecipe:
    """Validate an SFT recipe read from `path` (`ConfigError` naming the file and the key)."""
    from pydantic import ValidationError

    try:
        recipe = TrainRecipe.model_validate(data)
    except ValidationError as e:
        lines = validation_problems(e, TrainRecipe)
        if len(lines) == 1:
            raise ConfigError(f"{path}: {lines[0]}") from e
        raise ConfigError(f"{path}: {len(lines)} problems:\n  " + "\n  ".join(lines)) from e
    try:
        check_trl_section(recipe.trl)
        if recipe.model.name_or_path != "tiny" and not recipe.model.name_or_path.startswith("gguf:"):
            check_local_model(recipe.model.name_or_path, need=None)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e
    return recipe


# set by agentflan itself: a value in `trl:` would be overridden or would break the prepared data
_TRL_RESERVED = {
    "output_dir": "the recipe's top-level output_dir",
    "dataset_kwargs": "agentflan (the data is tokenized and masked already)",
    "remove_unused_columns": "agentflan (the collator needs every column)",
}


def check_trl_section(trl: dict[str, Any]) -> None:
    """The `trl:` keys are `SFTConfig` fields (checked by name when TRL is installed).

    Raises:
        ConfigError: Unknown keys, with the closest field names (`max_step` -> `max_steps`).
    """
    import dataclasses
    import importlib.util

    if not trl or importlib.util.find_spec("trl") is None:
        return  # `run` says which extra is missing
    from trl import SFTConfig

    fields = sorted(f.name for f in dataclasses.fields(SFTConfig) if f.init)
    problems = []
    for key in trl:
        if key in _TRL_RESERVED:
            problems.append(f"trl.{key} is set by {_TRL_RESERVED[key]}")
        elif key not in fields:
            problems.append(f"trl.{key}: not an SFTConfig field{did_you_mean(key, fields)}")
    if problems:
        raise ConfigError("; ".join(problems))


def prepare(recipe: TrainRecipe, tokenizer: Any = None) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """Tokenizer, training rows and data statistics (steps 1-3).

    The rows are cached (`data.cache`) by a fingerprint of the data section, the batch size, the
    loss per capability, the input files, the tokenizer and agentflan's code: a rerun, and every
    rank of a distributed run but the first, load them instead of tokenizing again.
    """
    from itertools import islice

    from agentflan.formats.protocols import training_texts
    from agentflan.formats.templates import get_template
    from agentflan.io import make_reader
    from agentflan.training.models import cache_dir, load_tokenizer
    from agentflan.training.prepared import PreparedCache, cache_key, files_signature, tokenizer_fingerprint

    def reader() -> Any:
        return make_reader(recipe.data.paths, recipe.data.format, on_error="skip", limit=recipe.data.limit)

    if tokenizer is None:
        first = list(islice(reader().read(recipe.data.paths), 2000))  # what `training_texts` takes
        if not first:
            raise ConfigError(f"no training data in {recipe.data.paths}")
        tokenizer = load_tokenizer(recipe.model, training_texts(first))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = get_template(recipe.data.template, tokenizer)
    batch = int(recipe.trl.get("per_device_train_batch_size", 8))
    if not recipe.data.cache:
        rows, stats = _tokenize(recipe, reader(), template, tokenizer, batch)
        return tokenizer, rows, stats | {"cache": "off"}
    data = recipe.data.model_dump(mode="json", exclude={"num_proc", "cache", "block_mask", "eval_fraction"})
    cache = PreparedCache(cache_dir() / "prepared", cache_key(
        data, batch, recipe.capability_loss, files_signature(recipe.data.paths), tokenizer_fingerprint(tokenizer)))
    with cache.locked():
        loaded = cache.load()
        if loaded is not None:
            log.info("tokenized data from the cache: %s", cache.path)
            rows, stats = loaded
            return tokenizer, rows, stats | {"cache": "hit"}
        rows, stats = _tokenize(recipe, reader(), template, tokenizer, batch)
        cache.save(rows, stats)
    return tokenizer, rows, stats | {"cache": "miss"}


def _tokenize(recipe: TrainRecipe, reader: Any, template: Any, tokenizer: Any,
              batch: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Read, render, tokenize and pack (steps 1-3, without the cache)."""
    from agentflan.training.capability_loss import NAMES as CAP_NAMES
    from agentflan.training.packing import pack, unpacked_stats
    from agentflan.training.prepared import encode_all

    start = time.perf_counter()
    trajs = list(reader.read(recipe.data.paths))
    if not trajs:
        raise ConfigError(f"no training data in {recipe.data.paths}")
    samples, dropped, truncated, unmatched = [], 0, 0, 0
    protocols: Counter[str] = Counter()
    trained_by_protocol: Counter[str] = Counter()
    trained_by_capability: Counter[str] = Counter()
    # capabilities always: the trained-token shares per capability go into the stats
    for p in encode_all(trajs, template, tokenizer, recipe.data.max_length, recipe.data.num_proc, capabilities=True):
        if p is None:
            dropped += 1
            continue
        enc = p.encoded
        truncated += enc.truncated
        protocols[p.protocol] += 1
        samples.append({"input_ids": enc.input_ids, "labels": enc.labels})
        trained_by_protocol[p.protocol] += sum(x != -100 for x in enc.labels)
        caps = p.capabilities or []
        trained_by_capability.update(CAP_NAMES[c] for c in caps if c)
        unmatched += not p.matched
        if recipe.capability_loss:  # a parallel column: the capability of every token (training/capability_loss.py)
            samples[-1]["capabilities"] = caps
    if not samples:
        raise ConfigError("no sample has a trained token: check the loss flags and max_length")
    if dropped > 0.1 * len(trajs):
        log.warning("%d of %d trajectories have no trained token within max_length=%d and are not trained on; "
                    "raise data.max_length", dropped, len(trajs), recipe.data.max_length)
    if recipe.data.packing:
        rows, st = pack(samples, recipe.data.max_length)
    else:
        rows, st = samples, unpacked_stats(samples, batch)
    stats = {"trajectories": len(trajs), "samples": len(samples), "dropped:no_trainable_tokens": dropped,
             "truncated": truncated, "rows": len(rows), "tokens": st.tokens,
             "trained_tokens": sum(sum(x != -100 for x in s["labels"]) for s in samples),
             "packing": recipe.data.packing, "packing_efficiency": round(st.efficiency, 4),
             "padding_waste": round(1 - st.efficiency, 4), "template": template.name,
             "protocols": dict(sorted(protocols.items())),
             "trained_tokens_by_protocol": dict(sorted(trained_by_protocol.items())),
             "trained_tokens_by_capability": dict(sorted(trained_by_capability.items())),
             "reading": reader.report.to_dict(),
             "capabilities_unmatched": unmatched, "tokenize_seconds": round(time.perf_counter() - start, 2)}
    return rows, stats


def check_setup(recipe: TrainRecipe) -> None:
    """Refuse, before any data is read or model loaded, what cannot train as the recipe says.

    Raises:
        MissingDependencyError: QLoRA without a CUDA GPU or bitsandbytes.
        ConfigError: QLoRA on the random `tiny` model; a block mask with an attention kernel that
            ignores it.
    """
    import importlib.util

    if recipe.peft and recipe.peft.type == "qlora":
        import torch

        if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
            raise MissingDependencyError("peft.type: qlora quantizes the base model to 4 bits with bitsandbytes, "
                                         "which needs a CUDA GPU and pip install bitsandbytes; use peft.type: "
                                         "lora on CPU")
        if recipe.model.name_or_path == "tiny":
            raise ConfigError("peft.type: qlora needs a saved model to quantize while loading; the random tiny "
                              "model is built in memory (use peft.type: lora)")
    attn = recipe.model.attn_implementation
    if recipe.data.block_mask and attn not in (None, "sdpa", "eager"):
        raise ConfigError(f"data.block_mask: true needs attn_implementation sdpa or eager; {attn} ignores a 4D "
                          "mask (packed position ids already keep samples apart there: set block_mask: false)")


def _peft_config(section: PeftSection) -> Any:
    require("peft", "train")
    from peft import LoraConfig

    return LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                      target_modules=section.target_modules, task_type="CAUSAL_LM")


def run(recipe: TrainRecipe, *, rows: list[dict[str, Any]] | None = None, tokenizer: Any = None) -> dict[str, Any]:
    """Train as the recipe says; return the metrics (also written to `output_dir/metrics.json`)."""
    require("trl", "train")
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from agentflan.training.capability_loss import with_capability_loss
    from agentflan.training.checkpoints import (
        finished,
        last_checkpoint,
        resolve_resume,
        start_step,
        with_safe_checkpoints,
    )
    from agentflan.training.collator import BlockCausalCollator
    from agentflan.training.models import load_model
    from agentflan.training.report import save_outputs

    check_setup(recipe)
    set_seed(recipe.seed)
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rows is None:
        tokenizer, rows, data_stats = prepare(recipe, tokenizer)
    else:
        data_stats = {"rows": len(rows)}
    write_atomic(out / "train_recipe.yaml", yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    model = load_model(recipe.model, tokenizer, load_in_4bit=bool(recipe.peft and recipe.peft.type == "qlora"))
    dataset = Dataset.from_list(rows)
    eval_dataset = None
    if recipe.data.eval_fraction:
        split = dataset.train_test_split(test_size=recipe.data.eval_fraction, seed=recipe.seed)
        dataset, eval_dataset = split["train"], split["test"]
    args = {"output_dir": str(out), "report_to": "none", "logging_steps": 1, "save_strategy": "no",
            "seed": recipe.seed, **recipe.trl,
            "dataset_kwargs": {"skip_prepare_dataset": True}, "remove_unused_columns": False}
    try:
        config = SFTConfig(**args)
    except (TypeError, ValueError) as e:  # TRL's own checks of the values (the names were checked on load)
        raise ConfigError(f"the trl: section of {recipe.name!r}: {e}") from e
    # eager attention adds the 4D mask to the scores: it must be additive, in the model's dtype
    eager = getattr(model.config, "_attn_implementation", None) == "eager"
    collator = BlockCausalCollator(tokenizer.pad_token_id, recipe.data.block_mask,
                                   mask_dtype=model.dtype if recipe.data.block_mask and eager else None)
    trainer_cls = with_capability_loss(SFTTrainer) if recipe.capability_loss else SFTTrainer
    trainer = with_safe_checkpoints(trainer_cls)(
        model=model, args=config, train_dataset=dataset, eval_dataset=eval_dataset, data_collator=collator,
        processing_class=tokenizer, peft_config=_peft_config(recipe.peft) if recipe.peft else None)
    checkpoint = resolve_resume(out, recipe.resume, tidy=trainer.args.should_save)
    first_step = start_step(checkpoint)
    start = time.perf_counter()
    try:
        if checkpoint is not None and finished(checkpoint, trainer.args.max_steps, trainer.args.num_train_epochs):
            # stopped while saving the final model: what it trained is in the checkpoint, nothing to train again
            from transformers.trainer_callback import TrainerState

            log.warning("%s ends the training: loading it and saving the outputs", checkpoint)
            trainer._load_from_checkpoint(str(checkpoint))
            trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
            loss = float("nan")
        else:
            loss = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None).training_loss
    except KeyboardInterrupt:
        last = last_checkpoint(out)
        log.warning("training stopped at step %d: %s", trainer.state.global_step,
                    f"run again with resume=true to continue from {last.name}" if last else
                    "no checkpoint was saved yet (trl.save_strategy/save_steps), a new run starts from step 0")
        raise
    seconds = time.perf_counter() - start
    metrics = {
        "train_loss": _run_loss(trainer.state.log_history, loss, first_step),
        "global_step": trainer.state.global_step, "seconds": round(seconds, 2),
        "resumed_from": checkpoint.name if checkpoint else None,
        "tokens_per_second": round(_tokens_seen(trainer, rows, first_step) / seconds, 1) if seconds else 0.0,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": "cuda" if torch.cuda.is_available() else "cpu", "world_size": trainer.args.world_size,
        "load_in_4bit": bool(getattr(model, "is_loaded_in_4bit", False)),
        "data": data_stats,
        "log_history": trainer.state.log_history,
    }
    save_outputs(recipe, trainer, tokenizer, metrics)
    return metrics


def _tokens_seen(trainer: Any, rows: list[dict[str, Any]], first_step: int = 0) -> float:
    """Input tokens processed by this process: rows seen (steps trained here, after `first_step`, x
    batch x accumulation x processes) x mean row length."""
    args = trainer.args
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    mean_len = sum(len(r["input_ids"]) for r in rows) / len(rows)
    return float((trainer.state.global_step - first_step) * per_step * mean_len)


def _run_loss(history: list[dict[str, Any]], trainer_loss: float, first_step: int) -> float:
    """The mean training loss of the whole run. The trainer's own figure averages the steps this
    process trained: after a resume from step k it leaves out steps 1..k. Each logged `loss` is the
    mean over the steps since the previous log, so weighting them by those steps gives the mean of
    every step, resumed or not."""
    if not first_step:
        return trainer_loss
    total = weight = 0.0
    previous = 0
    for h in history:
        if "loss" in h and "step" in h:
            if previous < first_step < h["step"]:  # the resumed run's first log covers the steps since the checkpoint
                previous = first_step
            total += h["loss"] * (h["step"] - previous)
            weight += h["step"] - previous
            previous = h["step"]
    return total / weight if weight else trainer_loss
