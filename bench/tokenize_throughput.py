"""Tokenize + loss mask against the raw fast tokenizer on the same rendered texts, and `prepare`.

The texts are the `train.jsonl` of an `agentflan data build`, rendered once with a chat template
(rendering is not timed: both sides start from the same strings). In one run, best of
`--repeat`, interleaved:

* **agentflan**: `encode_segments_batch` (every segment tokenized on its own, all the segments
  of a batch in one call; ids, labels, truncation), in batches of 256 as `prepare` calls it;
* **raw**: the tokenizer's own batch call `tokenizer(texts, add_special_tokens=False)` on the
  same batches of whole texts (ids only, no mask): the peer;
* for reference, the same texts one by one, and its Rust core's `encode_batch` (the floor).

Then `prepare` end to end (read, render, tokenize, pack) with one process (the default), with 2
worker processes, and from its cache.

    python bench/tokenize_throughput.py [--data out/bench-data/native/train.jsonl] [--template hf]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _doc import machine, publish

REPO = Path(__file__).resolve().parents[1]


def best_of(n: int, fns: dict[str, Any]) -> dict[str, float]:
    """Fastest of `n` runs of each function, the functions interleaved."""
    out: dict[str, float] = {}
    for _ in range(n):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[name] = min(out.get(name, float("inf")), time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO / "out" / "bench-data" / "native" / "train.jsonl")
    from agentflan.formats.templates import TEMPLATES

    ap.add_argument("--template", default="hf", choices=TEMPLATES.names(ordered=True))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.data.exists():
        subprocess.run([sys.executable, "-m", "agentflan.cli.main", "data", "build", "agent-flan", "-o",
                        str(args.data.parents[1]), f"vars.data_dir={REPO.parent / 'shared' / 'data'}",
                        "vars.react_sources=[fireact]"], check=True)
    from agentflan.formats.templates import get_template
    from agentflan.io import read
    from agentflan.training.masking import encode_segments_batch, render
    from agentflan.training.models import ModelConfig, load_tokenizer
    from agentflan.training.sft import TrainRecipe, prepare

    model = {"name_or_path": "gguf:smollm2-135m-instruct"}
    tok = load_tokenizer(ModelConfig.model_validate(model))
    template = get_template(args.template, tok)
    segments = [render(t, template)[0] for t in read(str(args.data), "native")]
    texts = ["".join(s for s, _ in seg) for seg in segments]
    batches = [(segments[i:i + 256], texts[i:i + 256]) for i in range(0, len(texts), 256)]
    tokens = sum(len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"])
    backend = tok.backend_tokenizer
    load_before = os.getloadavg()[0]
    t = best_of(args.repeat, {
        "agentflan tokenize + mask (batches)": lambda: [encode_segments_batch(s, tok, add_bos=template.add_bos)
                                                        for s, _ in batches],
        "raw tokenizer(texts) (batches)": lambda: [tok(x, add_special_tokens=False) for _, x in batches],
        "raw tokenizer(text), one by one": lambda: [tok(x, add_special_tokens=False) for x in texts],
        "Rust core encode_batch, no Python objects kept": lambda: [backend.encode_batch(x, add_special_tokens=False)
                                                                   for _, x in batches],
    })
    peer = t["raw tokenizer(texts) (batches)"]
    rows = [f"| {name} | {secs:.2f} | {tokens / secs:,.0f} | {peer / secs:.2f} |" for name, secs in t.items()]

    with tempfile.TemporaryDirectory() as cache:
        os.environ["AGENTFLAN_CACHE"] = cache

        def recipe(**data: Any) -> Any:
            return TrainRecipe.model_validate({
                "name": "bench", "output_dir": cache, "model": model, "trl": {"per_device_train_batch_size": 4},
                "data": {"paths": [str(args.data)], "template": args.template, "max_length": 2048, **data}})

        p = best_of(args.repeat, {"one process (default)": lambda: prepare(recipe(cache=False), tok),
                                  "2 worker processes": lambda: prepare(recipe(num_proc=2, cache=False), tok)})
        prepare(recipe(), tok)
        p |= best_of(args.repeat, {"from the cache": lambda: prepare(recipe(), tok)})
    load_after = os.getloadavg()[0]
    prep = [f"| prepare: {name} | {secs:.2f} | {len(texts) / secs:,.0f} |" for name, secs in p.items()]
    table = ("| path | seconds | tokens/s | vs raw tokenizer(texts) |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
             "| prepare (read, render, tokenize, pack) | seconds | trajectories/s |\n|---|---|---|\n" + "\n".join(prep))
    publish("Tokenize + loss mask vs the raw fast tokenizer",
            f"Command: `python bench/tokenize_throughput.py --template {args.template} --repeat {args.repeat}`  \n"
            f"Machine: {machine()}; load average {load_before:.2f} before, {load_after:.2f} after. SmolLM2-135M's "
            f"tokenizer; {len(texts):,} trajectories ({tokens:,} tokens) of the `train.jsonl` of `agentflan "
            f"data build agent-flan vars.react_sources=[fireact]` on the shared samples, rendered once with the "
            f"`{args.template}` template. Best of {args.repeat}, interleaved.", table, write=not args.no_write)
    print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}")


if __name__ == "__main__":
    main()
