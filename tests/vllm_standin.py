"""A stand-in for TRL 1.16's `VLLMGeneration` (vLLM cannot be installed here), for `rl.rollout.VLLMSampler`.

It has `VLLMGeneration.generate`'s signature and return value (prompt ids, completion ids, per-token
log-probability lists with the sampled token's first, top-logprob ids) and its two behaviours that
matter to a caller: `generate` reads `max_completion_length` on each call as vLLM's `max_tokens`
and takes no stop strings; in `server` mode it is a collective like TRL's: every process's prompts
are gathered (`accelerate.utils.gather_object`), the main process "generates" `num_generations`
completions per `num_generations`-th prompt, broadcasts them (`broadcast_object_list`) and every
process keeps the slice `process_index * len(prompts)` ... of the result, which assumes that every
process sent as many prompts as itself. Its "model" is a deterministic function of the context
(`completion`), so a caller can tell which context a completion belongs to.

Run as `torchrun --nproc_per_node 2 -m tests.vllm_standin OUT`: a `VLLMSampler` on the stand-in in
server mode, with rounds that differ in number and size per process; writes `OUT/rank-R.json`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

STOP = 7
"""The end-of-turn id the stand-in's completions contain."""


def completion(context: list[int], max_tokens: int) -> tuple[list[int], list[list[float | None]]]:
    """The stand-in model's completion of `context`: `max_tokens` ids (it does not stop by itself),
    with `STOP` at a place that depends on the context, and a log-probability list per id."""
    ids = [100 + (sum(context) + i) % 50 for i in range(max_tokens)]
    if max_tokens > 2:
        ids[1 + sum(context) % (max_tokens - 1)] = STOP
    return ids, [[-(t / 1000)] for t in ids]


class VLLMGenerationStandIn:
    """`trl.generation.vllm_generation.VLLMGeneration` as the rollout sees it (see the module docstring)."""

    def __init__(self, accelerator: Any, mode: str = "server", max_completion_length: int = 16,
                 tensor_parallel_size: int = 1) -> None:
        self.accelerator = accelerator
        self.mode = mode
        self.max_completion_length = max_completion_length
        self.tensor_parallel_size = tensor_parallel_size
        self.budgets: list[int] = []
        """`max_completion_length` at each call (what vLLM's `max_tokens` would have been)."""

    def generate(self, prompts: list[list[int]], images: list[list[Any] | None] | None, num_generations: int,
                 profiler: Any = None) -> tuple[Any, Any, Any, Any]:
        self.budgets.append(self.max_completion_length)
        if self.mode == "server":
            from accelerate.utils import broadcast_object_list, gather_object

            every = gather_object(prompts)
            payload: Any = None
            if self.accelerator.is_main_process:
                unique = every[::num_generations]
                outs = [completion(p, self.max_completion_length) for p in unique for _ in range(num_generations)]
                payload = (unique, [o[0] for o in outs], [o[1] for o in outs], None)
            box = [payload]
            broadcast_object_list(box, from_process=0)
            unique, ids, lps, _ = box[0]
            prompt_ids = [p for p in unique for _ in range(num_generations)]
            cut = slice(self.accelerator.process_index * len(prompts), (self.accelerator.process_index + 1) * len(prompts))
            return prompt_ids[cut], ids[cut], lps[cut], None
        outs = [completion(p, self.max_completion_length) for p in prompts for _ in range(num_generations)]
        return [p for p in prompts for _ in range(num_generations)], [o[0] for o in outs], [o[1] for o in outs], None


class Tok:
    """The little of a tokenizer `VLLMSampler` uses without stop strings."""

    pad_token_id = 0
    eos_token_id = 1

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return " ".join(map(str, ids))


PLANS = {0: [3, 2, 1], 1: [2]}
"""Contexts per round on each process: process 0 plays 3 rounds (3, 2, 1 contexts), process 1 one of 2."""


def main() -> None:
    from accelerate import Accelerator

    from agentflan.rl.rollout import VLLMSampler

    acc = Accelerator(cpu=True)
    gen = VLLMGenerationStandIn(acc, mode="server", max_completion_length=99)
    sampler = VLLMSampler(gen, acc, Tok(), {STOP}, max_new_tokens=6)
    rank = acc.process_index
    rounds = []
    for r, size in enumerate(PLANS[rank]):
        contexts = [[rank * 100 + r * 10 + j, 5, 6] for j in range(size)]
        rounds.append({"contexts": contexts, "results": sampler(contexts, (), 6)})
    sampler.finish()
    out = {"rounds": rounds, "calls": len(gen.budgets), "budgets": sorted(set(gen.budgets)),
           "restored": gen.max_completion_length, "lockstep": sampler.lockstep}
    (Path(sys.argv[1]) / f"rank-{rank}.json").write_text(json.dumps(out))
    acc.wait_for_everyone()
    import torch.distributed

    torch.distributed.destroy_process_group()  # else gloo's threads may abort the exit


if __name__ == "__main__":
    main()
