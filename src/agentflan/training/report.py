"""What a training run leaves behind: model, merged LoRA, tokenizer + template, curve, card."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from agentflan import __version__
from agentflan.formats.jinja import jinja_for
from agentflan.io.charts import plot_curves
from agentflan.io.files import write_atomic

log = logging.getLogger(__name__)


def save_outputs(recipe: Any, trainer: Any, tokenizer: Any, metrics: dict[str, Any]) -> None:
    """Write the outputs (on the main process only, when several processes trained).

    `final/` and `merged/` are written into `.partial-final/` and `.partial-merged/` and renamed
    when complete, and `metrics.json` comes last: a run stopped while saving (killed, Ctrl-C, a
    full disk) leaves no model folder that looks finished.
    """
    from agentflan.training.checkpoints import publish, removed_on_failure, staging

    out = Path(recipe.output_dir)
    final = out / "final"
    zero = trainer.is_world_process_zero()
    template = jinja_for(recipe.data.template)
    if template is not None:  # serve with exactly the template that was trained
        tokenizer.chat_template = template
    final_tmp = staging(final) if zero else final.with_name(f".partial-{final.name}")
    with removed_on_failure(final_tmp, owner=zero):
        trainer.save_model(str(final_tmp))  # collective under DeepSpeed/FSDP: every process calls it
    if not zero:
        return
    info = model_info(recipe, metrics)
    with removed_on_failure(final_tmp):
        tokenizer.save_pretrained(str(final_tmp))
        write_model_info(final_tmp, info)
    if recipe.peft and recipe.merge_lora:
        merged_tmp = staging(out / "merged")
        with removed_on_failure(merged_tmp), removed_on_failure(final_tmp):
            merged = _merged_full_precision(recipe, final_tmp, tokenizer) if recipe.peft.type == "qlora" else \
                trainer.model.merge_and_unload()
            merged.save_pretrained(str(merged_tmp))
            tokenizer.save_pretrained(str(merged_tmp))
            write_model_info(merged_tmp, info)
        metrics["merged"] = str(out / "merged")
    curve = loss_curve(metrics["log_history"], out / "loss.png")
    if curve:
        metrics["loss_curve"] = str(curve)
    by_capability = capability_loss_curve(metrics["log_history"], out / "loss_by_capability.png")
    if by_capability:
        metrics["capability_loss_curve"] = str(by_capability)
    with removed_on_failure(final_tmp):
        write_atomic(final_tmp / "README.md", model_card(recipe, metrics))
    if recipe.peft and recipe.merge_lora:
        publish(out / ".partial-merged", out / "merged")
    publish(final_tmp, final)
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")  # last: the run is done


def model_info(recipe: Any, metrics: dict[str, Any]) -> dict[str, Any]:
    """What `eval`, `serve` and `env play` need to prompt the model as it was trained: its chat
    template and the protocols (with record counts) of its training data."""
    data = metrics.get("data", {})
    return {"agentflan": __version__, "template": recipe.data.template, "protocols": data.get("protocols", {}),
            "base_model": recipe.model.name_or_path, "data": recipe.data.paths, "data_recipe": recipe.data_recipe}


def write_model_info(folder: Path, info: dict[str, Any]) -> None:
    from agentflan.training.models import INFO_FILE

    write_atomic(folder / INFO_FILE, json.dumps(info, indent=2) + "\n")


def _merged_full_precision(recipe: Any, adapter: Path, tokenizer: Any) -> Any:
    """QLoRA: the adapter merged into the base reloaded unquantized, in the recipe's dtype (merging
    into the 4-bit weights would round the merged weights to 4 bits again)."""
    from peft import PeftModel

    from agentflan.training.models import load_model

    base = load_model(recipe.model, tokenizer)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def loss_curve(history: list[dict[str, Any]], path: Path) -> Path | None:
    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    series = {"train": points, **({"eval": evals} if evals else {})}
    return plot_curves(series, path, "training loss (trained tokens only)", "Loss") if points else None


def capability_loss_curve(history: list[dict[str, Any]], path: Path) -> Path | None:
    """The training loss of each capability against the step (the paper's Figure 3)."""
    series: dict[str, list[tuple[int, float]]] = {}
    for h in history:
        for k, v in h.items():
            if k.startswith("loss_") and "step" in h:
                series.setdefault(k.removeprefix("loss_"), []).append((h["step"], v))
    return plot_curves(dict(sorted(series.items())), path, "training loss (mean per token)", "Loss per capability") \
        if series else None


def model_card(recipe: Any, metrics: dict[str, Any]) -> str:
    d = metrics.get("data", {})
    peft = f"LoRA r={recipe.peft.r}, alpha={recipe.peft.alpha}" if recipe.peft else "full fine-tuning"
    return f"""---
library_name: transformers
tags: [agentflan, agent, tool-use, sft]
base_model: {recipe.model.name_or_path}
---
# {recipe.name}

Fine-tuned with [agentflan](https://pypi.org/project/agentflan/) {__version__} ({peft}) from
`{recipe.model.name_or_path}` on `{', '.join(recipe.data.paths)}`{f" (data recipe `{recipe.data_recipe}`)" if recipe.data_recipe else ""}.

- chat template: `{recipe.data.template}` (saved with the tokenizer: serve with the same template)
- trained protocols: {", ".join(f"`{k}` ({v})" for k, v in sorted(d.get("protocols", {}).items(), key=lambda kv: -kv[1])) or "-"}
  (`agentflan.json`; `agentflan eval`, `agentflan serve` and `agentflan env play` prompt in them)
- max length {recipe.data.max_length}, packing {recipe.data.packing} (efficiency {d.get('packing_efficiency', '?')})
- {d.get('samples', '?')} samples, {d.get('trained_tokens', '?')} trained tokens, {d.get('dropped:no_trainable_tokens', 0)} dropped without trained tokens
- training loss {metrics.get('train_loss'):.4f} after {metrics.get('global_step')} steps on {metrics.get('device')}
- TRL arguments: `{json.dumps(recipe.trl)}`

{recipe.description}
"""
