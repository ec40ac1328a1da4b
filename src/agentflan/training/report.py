"""What a training run leaves behind: model, merged LoRA, tokenizer + template, curve, card."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from agentflan import __version__
from agentflan.formats.jinja import jinja_for

log = logging.getLogger(__name__)


def save_outputs(recipe: Any, trainer: Any, tokenizer: Any, metrics: dict[str, Any]) -> None:
    """Write the outputs (on the main process only, when several processes trained)."""
    out = Path(recipe.output_dir)
    final = out / "final"
    template = jinja_for(recipe.data.template)
    if template is not None:  # serve with exactly the template that was trained
        tokenizer.chat_template = template
    trainer.save_model(str(final))  # collective under DeepSpeed/FSDP: every process calls it
    if not trainer.is_world_process_zero():
        return
    tokenizer.save_pretrained(str(final))
    if recipe.peft and recipe.merge_lora:
        merged = _merged_full_precision(recipe, final, tokenizer) if recipe.peft.type == "qlora" else \
            trainer.model.merge_and_unload()
        merged.save_pretrained(str(out / "merged"))
        tokenizer.save_pretrained(str(out / "merged"))
        metrics["merged"] = str(out / "merged")
    curve = loss_curve(metrics["log_history"], out / "loss.png")
    if curve:
        metrics["loss_curve"] = str(curve)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    (final / "README.md").write_text(model_card(recipe, metrics))


def _merged_full_precision(recipe: Any, adapter: Path, tokenizer: Any) -> Any:
    """QLoRA: the adapter merged into the base reloaded unquantized, in the recipe's dtype (merging
    into the 4-bit weights would round the merged weights to 4 bits again)."""
    from peft import PeftModel

    from agentflan.training.models import load_model

    base = load_model(recipe.model, tokenizer)
    return PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()


def loss_curve(history: list[dict[str, Any]], path: Path) -> Path | None:
    points = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    if not points:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no loss curve (pip install 'agentflan[report]')")
        return None
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3)
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    if evals:
        ax.plot([p[0] for p in evals], [p[1] for p in evals], marker="s", label="eval")
        ax.legend()
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (trained tokens only)")
    ax.set_title("Loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


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
- max length {recipe.data.max_length}, packing {recipe.data.packing} (efficiency {d.get('packing_efficiency', '?')})
- {d.get('samples', '?')} samples, {d.get('trained_tokens', '?')} trained tokens, {d.get('dropped:no_trainable_tokens', 0)} dropped without trained tokens
- training loss {metrics.get('train_loss'):.4f} after {metrics.get('global_step')} steps on {metrics.get('device')}
- TRL arguments: `{json.dumps(recipe.trl)}`

{recipe.description}
"""
