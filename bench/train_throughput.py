"""SmolLM2-135M LoRA on an `agentflan data build` output: agentflan's path vs TRL's own SFTTrainer path.

Same model, same data (the `train.jsonl` of a build), same LoRA, batch, sequence length and steps,
in one run:

* **agentflan**: our template rendering + per-message loss masks + best-fit-decreasing packing with
  restarting position ids, TRL's `SFTTrainer` on the prepared dataset;
* **TRL**: the conversational dataset (`messages` + `tools` as OpenAI dicts) given to `SFTTrainer`
  with `assistant_only_loss=True` (a ChatML training template with `{% generation %}` markers, since
  SmolLM2's own template has none) and `packing=True` (TRL's BFD packing).

Each arm runs in a fresh process; reported: input tokens/s, peak RSS, packing efficiency.

    python bench/train_throughput.py [--data out/agent-flan/native/train.jsonl] [--steps 8] [--model tiny]
        [--baseline-python ../main/.venv/bin/python] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _doc import machine, publish

REPO = Path(__file__).resolve().parents[1]
CHATML_TRAINING = (
    "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}"
    "{{ m['content'] }}<|im_end|>{% endgeneration %}\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")

ARM = r"""
import json, resource, sys, time
arm, data, steps, batch, max_len, out, _, model = sys.argv[1:9]
steps, batch, max_len = int(steps), int(batch), int(max_len)
trl_args = {"max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": 2e-4, "use_cpu": True,
            "logging_steps": 1, "save_strategy": "no", "report_to": "none", "gradient_checkpointing": False,
            "disable_tqdm": True}
if arm.startswith("agentflan"):
    from agentflan.training.sft import TrainRecipe, run
    if model == "tiny":  # a random small Llama, full fine-tune
        spec = {"model": {"name_or_path": "tiny"}, "data": {"paths": [data], "template": "agentflan",
                "max_length": max_len, "packing": True}}
    else:
        spec = {"model": {"name_or_path": "gguf:smollm2-135m-instruct"}, "peft": {"r": 16, "alpha": 32},
                "merge_lora": False, "data": {"paths": [data], "template": "hf", "max_length": max_len, "packing": True}}
    recipe = TrainRecipe.model_validate({"name": "bench", "output_dir": out, "trl": trl_args, **spec})
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
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2",
                    help="tiny: a random small Llama, full fine-tune (no TRL arm: TRL's path needs a real tokenizer)")
    ap.add_argument("--baseline-python", type=Path,
                    help="also run agentflan's arm with this interpreter (another checkout's venv: its agentflan)")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each arm, interleaved; the fastest is kept")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not args.data.exists():
        subprocess.run([sys.executable, "-m", "agentflan.cli.main", "data", "build", "agent-flan", "-o",
                        str(args.data.parents[1]), f"vars.data_dir={REPO.parent / 'shared' / 'data'}",
                        "vars.react_sources=[fireact]"], check=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    arms = {"agentflan": sys.executable}
    if args.baseline_python:
        arms["agentflan (baseline checkout)"] = str(args.baseline_python)
    if args.model == "smollm2":
        arms["trl"] = sys.executable
    results: dict[str, dict[str, float]] = {}
    load_before = os.getloadavg()[0]
    for _ in range(args.repeat):
        for arm, python in arms.items():
            with tempfile.TemporaryDirectory() as out:
                # tokenization is not timed (only `trainer.train`): a hit of the prepared cache changes nothing
                p = subprocess.run([python, "-c", ARM, arm, str(args.data), str(args.steps), str(args.batch),
                                    str(args.max_length), out, CHATML_TRAINING, args.model], capture_output=True,
                                   text=True, env=env)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT")), None)
            if line is None:
                print(p.stdout[-2000:], p.stderr[-4000:])
                raise SystemExit(f"{arm} failed")
            r = json.loads(line.split(" ", 1)[1])
            print(arm, r, flush=True)
            if arm not in results or r["tokens_per_second"] > results[arm]["tokens_per_second"]:
                results[arm] = r
    load_after = os.getloadavg()[0]
    a = results["agentflan"]
    table = ("| path | input tokens/s | peak RSS MB | packing efficiency | train loss |\n|---|---|---|---|---|\n"
             + "".join(f"| {k} | {v['tokens_per_second']:.0f} | {v['peak_rss_mb']:.0f} | {v['packing_efficiency']:.3f} "
                       f"| {v['loss']:.3f} |\n" for k, v in results.items()))
    for peer in ("agentflan (baseline checkout)", "trl"):
        if peer in results:
            t = results[peer]
            table += (f"| ratio agentflan / {peer} | {a['tokens_per_second'] / t['tokens_per_second']:.2f} | "
                      f"{a['peak_rss_mb'] / t['peak_rss_mb']:.2f} | | |\n")
    cmd = (f"python bench/train_throughput.py --model {args.model} --steps {args.steps} --batch {args.batch} "
           f"--max-length {args.max_length} --repeat {args.repeat}"
           + (f" --baseline-python {args.baseline_python}" if args.baseline_python else ""))
    what = ("SmolLM2-135M LoRA r=16 on all linear layers" if args.model == "smollm2"
            else "a random small Llama (`tiny`), full fine-tune")
    peers = " vs ".join(["agentflan", *[k for k in arms if k != "agentflan"]])
    publish(f"Training throughput ({args.model}): {peers}",
            f"Command: `{cmd}`  \nMachine: {machine('CPU only')}; load average {load_before:.2f} before, {load_after:.2f} "
            f"after. Data: `train.jsonl` of `agentflan data build agent-flan vars.react_sources=[fireact]` on the "
            f"shared samples. {what[0].upper()}{what[1:]}, "
            f"fp32, batch {args.batch} x {args.max_length} tokens, {args.steps} steps, each arm in a fresh "
            f"process, the arms interleaved, the fastest of {args.repeat} kept. The baseline checkout is the "
            f"same arm run by another checkout's interpreter (its own agentflan). TRL's path: conversational "
            f"dataset, `assistant_only_loss=True` with a ChatML training template, `packing=True`. The losses "
            f"differ from TRL's because the masks differ: agentflan trains only loss-bearing turns (balancing "
            f"turns some off), TRL trains every assistant turn.", table.rstrip("\n"), write=not args.no_write)


if __name__ == "__main__":
    main()
