"""Token-exact RL rollouts on BFCL multi-turn: BFCL's ground truth, sampled as a perfect policy would.

For each entry `bfcl-multi` trains on (`multi_turn_base_100` ... ; `rl/sources.py`), BFCL's
ground truth is written by the protocol as the model would write it (`eval.bfcl_multi.gold_responder`),
each reply tokenized with the template's end of turn and "sampled" by a scripted sampler through
the RL rollout (`rl.rollout.EnvRollout`, driven by `models.driver.drive`). Per template and
protocol it counts the episodes BFCL's checker passes (the reward), those whose rollout equals the
re-render of the whole episode (`exact_rollout`) and those with drift. A perfect policy must get
reward 1 on every entry with no drift: anything else is a bug in the rollout, the protocol or the
template.

    python bench/rl_bfcl_exact.py --tokenizer ~/.cache/agentflan/smollm2-135m-instruct \\
        --templates agentflan,hf --protocols react,json,bfcl [--publish]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _doc


def gold_texts(episode: Any, proto: Any) -> list[str]:
    """The ground truth's replies in `proto`, in the order the episode asks for them."""
    from agentflan.eval import bfcl_multi as bm
    from agentflan.models.driver import drive
    from agentflan.models.engines import ScriptedEngine

    gold = bm.gold_responder(episode.entry, proto, episode.backends)
    texts: list[str] = []

    def respond(prompt: Any) -> Any:
        c = gold(prompt)
        texts.append(c.text)
        return c

    drive([bm.play(episode.entry, proto, episode.backends)], ScriptedEngine(respond=respond))
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="a model or tokenizer folder")
    ap.add_argument("--templates", default="agentflan,hf")
    ap.add_argument("--protocols", default="react,json,bfcl")
    ap.add_argument("-n", type=int, default=100, help="training entries (from multi_turn_base_100)")
    ap.add_argument("--publish", action="store_true", help="append the table to docs/benchmarks.md")
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from agentflan.formats.protocols import get_protocol
    from agentflan.formats.templates import get_template, turn_ends
    from agentflan.rl.rollout import EnvRollout, exact_rollout
    from agentflan.rl.sources import episode_source

    tok = AutoTokenizer.from_pretrained(args.tokenizer)
    rows = ["| template | protocol | episodes | BFCL pass (reward 1) | exact | drifting | model turns | seconds |",
            "|---|---|---|---|---|---|---|---|"]
    for tname in args.templates.split(","):
        template = get_template(tname, tok)
        end = turn_ends(template, tok)[0][0]  # the template's own end of turn, as a model trained on it writes it
        for pname in args.protocols.split(","):
            start = time.perf_counter()
            proto = get_protocol(pname, template)
            episodes = episode_source("bfcl-multi").episodes(args.n, 0, pname)
            passed = exact = drifting = turns = 0
            for ep in episodes:
                texts = gold_texts(ep, proto)
                k = [0]

                def sample(contexts: list[list[int]], stops: tuple[str, ...], max_new: int, texts: list[str] = texts,
                           k: list[int] = k, end: str = end) -> list[tuple[list[int], list[float]]]:
                    out = []
                    for _ in contexts:
                        ids = tok(texts[min(k[0], len(texts) - 1)] + end, add_special_tokens=False)["input_ids"]
                        k[0] += 1
                        out.append((ids, [0.0] * len(ids)))
                    return out

                roll = EnvRollout({ep.key: ep}, template, tok, max_turns=6, max_new_tokens=10**6,
                                  max_completion_length=10**7)
                [r] = roll.play([ep.key], sample)
                passed += r.success
                exact += exact_rollout(r, template, tok, proto)
                drifting += r.drift_turns > 0
                turns += r.turns
            rows.append(f"| {tname} | {pname} | {len(episodes)} | {passed} | {exact} | {drifting} | {turns} | "
                        f"{time.perf_counter() - start:.0f} |")
    _doc.publish("RL rollouts on BFCL multi-turn: ground truth through the token-exact rollout",
                 f"`python bench/rl_bfcl_exact.py --tokenizer {args.tokenizer} --templates {args.templates} "
                 f"--protocols {args.protocols} -n {args.n}` ({_doc.machine()}; tokenizer {Path(args.tokenizer).name}).",
                 "\n".join(rows), write=args.publish)


if __name__ == "__main__":
    main()
