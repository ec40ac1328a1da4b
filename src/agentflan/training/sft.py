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
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from agentflan.errors import ConfigError, MissingDependencyError, require
from agentflan.training.models import ModelConfig

log = logging.getLogger(__name__)


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str]
    format: str | None = None
    """Reader name (detected when unset)."""
    template: Literal["agentflan", "llama2", "hf"] = "hf"
    max_length: int = Field(2048, gt=8)
    packing: bool = True
    block_mask: bool = False
    """Pass an explicit 4D block-diagonal mask instead of relying on packed position ids."""
    limit: int | None = None
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    num_proc: int | None = Field(None, ge=1)
    """Processes that render and tokenize (default: the CPUs for 1000 trajectories or more)."""
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
    """True: the last checkpoint in output_dir; a path: that checkpoint."""
    merge_lora: bool = True
    seed: int = 17
    data_recipe: str | None = None
    """The data recipe that built the training data, for the model card."""


def load_train_recipe(ref: str | Path, overrides: list[str] | None = None) -> TrainRecipe:
    from importlib import resources

    from agentflan.pipeline.recipe import apply_overrides

    path = Path(ref)
    if not path.exists():
        packaged = resources.files("agentflan") / "recipes" / "train" / f"{ref}.yaml"
        if not packaged.is_file():
            raise ConfigError(f"no training recipe {ref!r} (a file, or one of `agentflan recipes list`)")
        path = Path(str(packaged))
    data = apply_overrides(yaml.safe_load(path.read_text()) or {}, overrides or [])
    from pydantic import ValidationError

    try:
        return TrainRecipe.model_validate(data)
    except ValidationError as e:
        lines = [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()]
        raise ConfigError(f"{path}: {len(lines)} problem(s):\n  " + "\n  ".join(lines)) from e


def prepare(recipe: TrainRecipe, tokenizer: Any = None) -> tuple[Any, list[dict[str, Any]], dict[str, Any]]:
    """Tokenizer, training rows and data statistics (steps 1-3).

    The rows are cached (`data.cache`) by a fingerprint of the data section, the batch size, the
    input files, the tokenizer and agentflan's code: a rerun, and every rank of a distributed run
    but the first, load them instead of tokenizing again.
    """
    from itertools import islice

    from agentflan.formats.templates import get_template, with_tools_in_system
    from agentflan.io import make_reader
    from agentflan.training.models import cache_dir, load_tokenizer
    from agentflan.training.prepared import PreparedCache, cache_key, files_signature, tokenizer_fingerprint

    def reader() -> Any:
        return make_reader(recipe.data.paths, recipe.data.format, on_error="skip", limit=recipe.data.limit)

    if tokenizer is None:
        first = list(islice(reader().read(recipe.data.paths), 2000))
        if not first:
            raise ConfigError(f"no training data in {recipe.data.paths}")
        texts = [m.content for t in first for m in with_tools_in_system(t.messages, t.tools)]
        tokenizer = load_tokenizer(recipe.model, texts)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    template = get_template(recipe.data.template, tokenizer)
    batch = int(recipe.trl.get("per_device_train_batch_size", 8))
    if not recipe.data.cache:
        rows, stats = _tokenize(recipe, reader(), template, tokenizer, batch)
        return tokenizer, rows, stats | {"cache": "off"}
    data = recipe.data.model_dump(mode="json", exclude={"num_proc", "cache", "block_mask", "eval_fraction"})
    cache = PreparedCache(cache_dir() / "prepared", cache_key(
        data, batch, files_signature(recipe.data.paths), tokenizer_fingerprint(tokenizer)))
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
    from agentflan.training.packing import pack, unpacked_stats
    from agentflan.training.prepared import encode_all

    start = time.perf_counter()
    trajs = list(reader.read(recipe.data.paths))
    if not trajs:
        raise ConfigError(f"no training data in {recipe.data.paths}")
    samples, dropped, truncated = [], 0, 0
    for enc in encode_all(trajs, template, tokenizer, recipe.data.max_length, recipe.data.num_proc):
        if enc is None:
            dropped += 1
            continue
        truncated += enc.truncated
        samples.append({"input_ids": enc.input_ids, "labels": enc.labels})
    if not samples:
        raise ConfigError("no sample has a trained token: check the loss flags and max_length")
    if recipe.data.packing:
        rows, st = pack(samples, recipe.data.max_length)
    else:
        rows, st = samples, unpacked_stats(samples, batch)
    stats = {"trajectories": len(trajs), "samples": len(samples), "dropped:no_trainable_tokens": dropped,
             "truncated": truncated, "rows": len(rows), "tokens": st.tokens,
             "trained_tokens": sum(sum(x != -100 for x in s["labels"]) for s in samples),
             "packing": recipe.data.packing, "packing_efficiency": round(st.efficiency, 4),
             "padding_waste": round(1 - st.efficiency, 4), "template": template.name,
             "reading": reader.report.to_dict(), "tokenize_seconds": round(time.perf_counter() - start, 2)}
    return rows, stats


def _peft_config(section: PeftSection) -> Any:
    require("peft", "train")
    from peft import LoraConfig

    if section.type == "qlora":
        import importlib.util

        import torch

        if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
            raise MissingDependencyError("QLoRA needs a CUDA GPU and bitsandbytes (pip install bitsandbytes); "
                                         "use peft.type: lora on CPU")
    return LoraConfig(r=section.r, lora_alpha=section.alpha, lora_dropout=section.dropout,
                      target_modules=section.target_modules, task_type="CAUSAL_LM")


def run(recipe: TrainRecipe, *, rows: list[dict[str, Any]] | None = None, tokenizer: Any = None) -> dict[str, Any]:
    """Train as the recipe says; return the metrics (also written to `output_dir/metrics.json`)."""
    require("trl", "train")
    import torch
    from datasets import Dataset
    from transformers import set_seed
    from trl import SFTConfig, SFTTrainer

    from agentflan.training.collator import BlockCausalCollator
    from agentflan.training.models import load_model
    from agentflan.training.report import save_outputs

    set_seed(recipe.seed)
    out = Path(recipe.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rows is None:
        tokenizer, rows, data_stats = prepare(recipe, tokenizer)
    else:
        data_stats = {"rows": len(rows)}
    (out / "train_recipe.yaml").write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))
    model = load_model(recipe.model, tokenizer)
    dataset = Dataset.from_list(rows)
    eval_dataset = None
    if recipe.data.eval_fraction:
        split = dataset.train_test_split(test_size=recipe.data.eval_fraction, seed=recipe.seed)
        dataset, eval_dataset = split["train"], split["test"]
    args = {"output_dir": str(out), "report_to": "none", "logging_steps": 1, "save_strategy": "no",
            "seed": recipe.seed, **recipe.trl,
            "dataset_kwargs": {"skip_prepare_dataset": True}, "remove_unused_columns": False}
    config = SFTConfig(**args)
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, eval_dataset=eval_dataset,
                         data_collator=BlockCausalCollator(tokenizer.pad_token_id, recipe.data.block_mask), processing_class=tokenizer,
                         peft_config=_peft_config(recipe.peft) if recipe.peft else None)
    resume = recipe.resume
    if resume is True:
        resume = bool(list(out.glob("checkpoint-*")))
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume or None)
    seconds = time.perf_counter() - start
    metrics = {
        "train_loss": result.training_loss, "global_step": trainer.state.global_step, "seconds": round(seconds, 2),
        "tokens_per_second": round(_tokens_seen(trainer, rows) / seconds, 1) if seconds else 0.0,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "device": "cuda" if torch.cuda.is_available() else "cpu", "world_size": trainer.args.world_size,
        "data": data_stats,
        "log_history": trainer.state.log_history,
    }
    save_outputs(recipe, trainer, tokenizer, metrics)
    return metrics


def _tokens_seen(trainer: Any, rows: list[dict[str, Any]]) -> float:
    """Input tokens processed: rows seen (steps x batch x accumulation x processes) x mean row length."""
    args = trainer.args
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * max(1, args.world_size)
    mean_len = sum(len(r["input_ids"]) for r in rows) / len(rows)
    return float(trainer.state.global_step * per_step * mean_len)
