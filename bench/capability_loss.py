"""The cost of logging the loss per capability: `agentflan train` with `capability_loss` on vs off.

Same data (the `train.jsonl` of a build), same model, batch, length, steps and seed; the arms
alternate, each run in a fresh process on one thread, `--repeats` times each; reported: the median
input tokens per CPU second of the training loop (`trainer.train()`: data preparation, model
loading, saving and charts left out) and per wall second, and the ratios. CPU time is the measure that a shared, loaded machine leaves comparable. The model is a small random Llama (`tiny` with `--hidden` x
`--layers`), so that the per-step bookkeeping weighs as much as it ever will: on a real model the
forward and backward take longer and the ratio is closer to 1.

    python bench/capability_loss.py [--data out/demo/data/native/train.jsonl] [--steps 12] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _doc import machine, publish

REPO = Path(__file__).resolve().parents[1]

ARM = r"""
import json, resource, sys, torch
torch.set_num_threads(1)  # one core each: CPU time is then comparable on a shared machine
on, data, steps, batch, max_len, hidden, layers, out = sys.argv[1:9]
from agentflan.training.sft import TrainRecipe, prepare, run
recipe = TrainRecipe.model_validate({"name": "bench", "output_dir": out, "capability_loss": on == "on",
    "model": {"name_or_path": "tiny", "tiny": {"hidden_size": int(hidden), "intermediate_size": 4 * int(hidden),
              "num_hidden_layers": int(layers), "num_attention_heads": 8, "num_key_value_heads": 4}},
    "data": {"paths": [data], "template": "agentflan", "max_length": int(max_len), "packing": True},
    "trl": {"max_steps": int(steps), "per_device_train_batch_size": int(batch), "learning_rate": 1e-3,
            "use_cpu": True, "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True}})
import trl
tok, rows, _ = prepare(recipe)
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
spent = []
train = trl.SFTTrainer.train
def timed(self, *a, **k):  # the training loop's CPU time only (not loading, saving or plotting)
    c0 = cpu()
    try:
        return train(self, *a, **k)
    finally:
        spent.append(cpu() - c0)
trl.SFTTrainer.train = timed
m = run(recipe, rows=rows, tokenizer=tok)
cpu_s = spent[0]
caps = sorted({k for h in m["log_history"] for k in h if k.startswith("loss_")})
tokens = m["tokens_per_second"] * m["seconds"]
print("RESULT", json.dumps({"tokens_per_second": m["tokens_per_second"], "seconds": m["seconds"],
                            "tokens_per_cpu_second": tokens / cpu_s, "loss": m["train_loss"], "logged": caps}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO / "out" / "bench-capability" / "data" / "native" / "train.jsonl")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if not args.data.exists():
        root = args.data.parents[2]
        for env, n in (("toolapi", 300), ("db", 300)):
            subprocess.run([sys.executable, "-m", "agentflan.cli.main", "env", "synth", env, "-n", str(n), "--split",
                            "train", "-o", str(root / "env")], check=True, capture_output=True)
        subprocess.run([sys.executable, "-m", "agentflan.cli.main", "data", "build", "builtin", "-o",
                        str(args.data.parents[1]), f"vars.env_dir={root / 'env'}"], check=True, capture_output=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    runs: dict[str, list[dict[str, object]]] = {"on": [], "off": []}
    for _ in range(args.repeats):
        for arm in ("on", "off"):
            with tempfile.TemporaryDirectory() as out:
                p = subprocess.run([sys.executable, "-c", ARM, arm, str(args.data), str(args.steps), str(args.batch),
                                    str(args.max_length), str(args.hidden), str(args.layers), out],
                                   capture_output=True, text=True, env=env)
            line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT")), None)
            if line is None:
                print(p.stdout[-2000:], p.stderr[-4000:])
                raise SystemExit(f"arm {arm} failed")
            runs[arm].append(json.loads(line.split(" ", 1)[1]))
            print(arm, runs[arm][-1], flush=True)
    def median(arm: str, key: str) -> float:
        return statistics.median(float(r[key]) for r in runs[arm])  # type: ignore[arg-type]

    assert runs["on"][0]["logged"] and not runs["off"][0]["logged"]
    cpu_ratio = median("on", "tokens_per_cpu_second") / median("off", "tokens_per_cpu_second")
    wall_ratio = median("on", "tokens_per_second") / median("off", "tokens_per_second")
    rows = []
    for arm, rs in runs.items():
        each = ", ".join(str(round(float(r["tokens_per_cpu_second"]))) for r in rs)  # type: ignore[arg-type]
        rows.append(f"| {arm} | {median(arm, 'tokens_per_cpu_second'):.0f} | {each} | "
                    f"{median(arm, 'tokens_per_second'):.0f} | {float(rs[0]['loss']):.4f} |\n")  # type: ignore[arg-type]
    table = (f"| capability_loss | input tokens per CPU second (median of {args.repeats}) | runs | input tokens "
             "per wall second (median) | train loss |\n|---|---|---|---|---|\n" + "".join(rows)
             + f"| ratio on / off | {cpu_ratio:.3f} | | {wall_ratio:.3f} | |\n")
    publish("Training throughput with the loss per capability",
            f"Command: `python bench/capability_loss.py --steps {args.steps} --batch {args.batch} --max-length "
            f"{args.max_length} --hidden {args.hidden} --layers {args.layers} --repeats {args.repeats}`  \n"
            f"Machine: {machine('CPU only')}. Data: `train.jsonl` of `agentflan data build builtin` (300 + 300 expert "
            f"episodes). A random Llama {args.hidden} wide, {args.layers} layers, fp32, batch {args.batch} x "
            f"{args.max_length} tokens packed, {args.steps} steps; the arms alternate, each run in a fresh "
            f"process on one thread (load average during the run: {os.getloadavg()[0]:.1f}). `on` logs `loss_<capability>` every step from the log-probabilities TRL's fused LM head "
            f"computes for the loss (no extra forward); the training losses are identical.", table,
            write=not args.no_write)


if __name__ == "__main__":
    main()
