"""SmolLM2-135M LoRA on an `agentflan data build` output: agentflan's path vs TRL's own SFTTrainer path.

Same model, same data (the `train.jsonl` of a build), same LoRA, batch, sequence length and steps,
in one run:

* **agentflan**: our template rendering + per-message loss masks + best-fit-decreasing packing with
  restarting position ids, TRL's `SFTTrainer` on the prepared dataset;
* **TRL**: the conversational dataset (`messages` + `tools` as OpenAI dicts) given to `SFTTrainer`
  with `assistant_only_loss=True` (a ChatML training template with `{% generation %}` markers, since
  SmolLM2's own template has none) and `packing=True` (TRL's BFD packing).

Each arm runs in a fresh process; reported: input tokens/s, peak RSS, packing efficiency.

    python bench/train_throughput.py [--data out/agent-flan/native/train.jsonl] [--steps 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHATML_TRAINING = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{{ m['content'] }}<|im_end|>{% endgeneration %}\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

ARM = r"""
import json, resource, sys, time
arm, data, steps, batch, max_len, out = sys.argv[1:7]
steps, batch, max_len = int(steps), int(batch), int(max_len)
trl_args = {"max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": 2e-4, "use_cpu": True,
            "logging_steps": 1, "save_strategy": "no", "report_to": "none", "gradient_checkpointing": False,
            "disable_tqdm": True}
if arm == "agentflan":
    from agentflan.training.sft import TrainRecipe, run
    recipe = TrainRecipe.model_validate({"name": "bench", "output_dir": out,
        "model": {"name_or_path": "gguf:smollm2-135m-instruct"},
        "data": {"paths": [data], "template": "hf", "max_length": max_len, "packing": True},
        "peft": {"r": 16, "alpha": 32}, "merge_lora": False, "trl": trl_args})
    m = run(recipe)
    print("RESULT", json.dumps({"tokens_per_second": m["tokens_per_second"], "seconds": m["seconds"],
        "packing_efficiency": m["data"]["packing_efficiency"], "loss": m["train_loss"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
else:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer
    from agentflan.io import read
    from agentflan.training.models import ModelConfig, resolve
    from agentflan.io.writers.chat import OpenAIWriter
    path = resolve(ModelConfig(name_or_path="gguf:smollm2-135m-instruct"))
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = sys.argv[7]
    w = OpenAIWriter()
    rows = []
    for t in read(data, "native"):
        rec = w.record(t)
        msgs = [{"role": m["role"] if m["role"] != "tool" else "user", "content": m.get("content") or ""}
                for m in rec["messages"]]
        rows.append({"messages": msgs})
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa")
    cfg = SFTConfig(output_dir=out, max_length=max_len, packing=True, assistant_only_loss=True, **trl_args)
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tok,
                         peft_config=LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    ds = trainer.train_dataset
    tokens = sum(len(x) for x in ds["input_ids"])
    eff = tokens / (len(ds) * max_len)
    t = time.perf_counter(); res = trainer.train(); secs = time.perf_counter() - t
    mean_len = tokens / len(ds)
    print("RESULT", json.dumps({"tokens_per_second": steps * batch * mean_len / secs, "seconds": secs,
        "packing_efficiency": eff, "loss": res.training_loss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO / "out" / "bench-data" / "native" / "train.jsonl")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not args.data.exists():
        subprocess.run([sys.executable, "-m", "agentflan.cli.main", "data", "build", "agent-flan", "-o",
                        str(args.data.parents[1]), f"vars.data_dir={REPO.parent / 'shared' / 'data'}"], check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    results = {}
    for arm in ("agentflan", "trl"):
        with tempfile.TemporaryDirectory() as out:
            p = subprocess.run([sys.executable, "-c", ARM, arm, str(args.data), str(args.steps), str(args.batch),
                                str(args.max_length), out, CHATML_TRAINING], capture_output=True, text=True, env=env)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT")), None)
        if line is None:
            print(p.stdout[-2000:], p.stderr[-4000:])
            raise SystemExit(f"{arm} failed")
        results[arm] = json.loads(line.split(" ", 1)[1])
        print(arm, results[arm], flush=True)
    a, t = results["agentflan"], results["trl"]
    table = ("| path | input tokens/s | peak RSS MB | packing efficiency | train loss |\n|---|---|---|---|---|\n"
             + "".join(f"| {k} | {v['tokens_per_second']:.0f} | {v['peak_rss_mb']:.0f} | {v['packing_efficiency']:.3f} "
                       f"| {v['loss']:.3f} |\n" for k, v in results.items())
             + f"| ratio agentflan / TRL | {a['tokens_per_second'] / t['tokens_per_second']:.2f} | "
               f"{a['peak_rss_mb'] / t['peak_rss_mb']:.2f} | | |\n")
    print(table)
    if args.no_write:
        return
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, CPU only"
    with (REPO / "docs" / "benchmarks.md").open("a") as f:
        f.write(f"\n## SmolLM2-135M LoRA training throughput: agentflan vs TRL's own path ({time.strftime('%Y-%m-%d')})\n\n"
                f"Command: `python bench/train_throughput.py --steps {args.steps} --batch {args.batch} --max-length "
                f"{args.max_length}`  \nMachine: {machine}. Data: `train.jsonl` of `agentflan data build agent-flan` on "
                f"the shared samples. LoRA r=16 on all linear layers, fp32, batch {args.batch} x {args.max_length} "
                f"tokens, {args.steps} steps, each path in a fresh process. TRL's path: conversational dataset, "
                f"`assistant_only_loss=True` with a ChatML training template, `packing=True`. The losses differ "
                f"because the masks differ: agentflan trains only loss-bearing turns (balancing turns some "
                f"off), TRL trains every assistant turn.\n\n{table}")


if __name__ == "__main__":
    main()
