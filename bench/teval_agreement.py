"""agentflan's T-Eval scoring beside T-Eval's own evaluators, on the same predictions.

T-Eval's evaluators (`teval/evaluators/*.py` of a T-Eval checkout, run unmodified) need mmengine,
networkx, sentence-transformers and the `evaluate` package, so this runs in a venv that has them
(the agentflan source on PYTHONPATH):

    python3 -m venv /work/venv-teval  # + mmengine termcolor evaluate sentence-transformers networkx
    PYTHONPATH=src /work/venv-teval/bin/python bench/teval_agreement.py --teval-src T-EVAL_CHECKOUT \\
        [--data ~/.cache/agentflan/teval/data] [--items 150] [--out agreement.json]

Predictions, per variant:
* **T-Eval's public data** (the files `bench/fetch_teval.py --data` copies: `plan_json_v1`,
  `plan_str_v1`, `review_str_v1`): the gold answer written as a reply, and perturbations of it,
  drawn per item from a seeded generator (steps dropped, swapped, duplicated, renamed, arguments
  changed, a `FinishAction` added, fenced or Python-literal JSON, single quotes, truncation, prose
  around the answer, other review letters, empty and garbage replies, ...).
* **Variants whose data is not public offline** (`instruct`, `reason_str`, `retrieve_str`,
  `understand_str`, `rru_json`): items *synthesized in T-Eval's format* from the plan file's steps
  (a step's name and arguments as the gold call, a sentence about it as the gold thought, the json
  and string templates of T-Eval's instruct data), with the same kinds of perturbations. These
  check the scoring rules; they are not T-Eval's items.

Each prediction is scored per item by T-Eval's evaluator (its `_process_response` and `_evaluate`,
or `_post_process` on the one item for reason/retrieve/understand) and by `agentflan.eval.teval.judge`;
an item agrees when every metric is equal (similarity-based ones within 1e-5). Then each whole
predictions file is scored by T-Eval's `evaluate()` and by agentflan's summary (means), and the
aggregates compared. A prediction on which T-Eval's evaluator raises is counted apart (agentflan's
deliberate verdict: 0).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from agentflan.eval import teval

TOL = 1e-5
EVALUATORS = {"instruct": "InstructEvaluator", "plan_json": "PlanningEvaluator", "plan_str": "PlanningEvaluator",
              "review_str": "ReviewEvaluator", "reason_str": "ReasonRetrieveUnderstandEvaluator",
              "retrieve_str": "ReasonRetrieveUnderstandEvaluator",
              "understand_str": "ReasonRetrieveUnderstandEvaluator", "rru_json": "ReasonRetrieveUnderstandEvaluator"}
FILES = {"plan_json": "plan_json_v1.json", "plan_str": "plan_str_v1.json", "review_str": "review_str_v1.json"}
GARBAGE = ["", " ", "I cannot help with that.", "[", "{", "```json\n", "null", "[]", "{}", "[1, 2, 3]", '{"a": 1}',
           "Answer:", "\u0000\ud800", "[{'name': 'x', 'id': 'zero', 'args': {}}]", "9" * 5000, "[" * 3000]


# ---- perturbations -----------------------------------------------------------------------------------------

def plan_predictions(var: str, datum: dict[str, Any], rng: random.Random) -> list[str]:
    steps = [dict(s) for s in datum["ground_truth"]]
    apis = (datum.get("meta") or {}).get("API_list", [])
    variants: list[list[dict[str, Any]]] = [steps]
    if len(steps) > 1:
        k = rng.randrange(len(steps))
        variants.append(steps[:k] + steps[k + 1:])
        i, j = rng.sample(range(len(steps)), 2)
        swapped = list(steps)
        swapped[i], swapped[j] = swapped[j], swapped[i]
        variants.append(swapped)
    variants.append([*steps, steps[rng.randrange(len(steps))]])
    renamed = [dict(s) for s in steps]
    r = rng.randrange(len(renamed))
    renamed[r]["name"] = rng.choice([*apis, "Unknown.api", renamed[r]["name"].lower()]) if apis else "Unknown.api"
    variants.append(renamed)
    changed = [dict(s, args={k: f"{v}x" for k, v in (s.get("args") or {}).items()}) for s in steps]
    variants.append(changed)
    variants.append([s for s in steps if s["name"] != "FinishAction"])
    variants.append([{"id": 0, "prev": [], "name": "FinishAction", "args": {}}])
    variants.append(list(reversed(steps)))
    out: list[str] = []
    for v in variants:
        if var == "plan_json":
            out.append(json.dumps(v))
        else:
            out.append("\n".join(f"{k + 1}. Use {s['name']} to {json.dumps(s.get('args'))}" for k, s in enumerate(v)))
    if var == "plan_json":
        out += [f"```json\n{json.dumps(steps, indent=2)}\n```", repr(steps), json.dumps(steps).replace('"', "'"),
                "Here is the plan: " + json.dumps(steps) + " Done.", json.dumps(steps)[: rng.randrange(1, 60)],
                json.dumps([{k: v for k, v in s.items() if k != "id"} for s in steps]),
                json.dumps([dict(s, id=str(s["id"])) for s in steps]), json.dumps({"plan": steps})]
    else:
        names = " then ".join(s["name"] for s in steps)
        out += [names, ". ".join(f"call {s['name']}" for s in steps), "\n".join(s["name"] for s in reversed(steps)),
                f"Use {apis[0] if apis else 'x'} and {apis[-1] if apis else 'y'} on one line."]
    return out + rng.sample(GARBAGE, 3)


def review_predictions(datum: dict[str, Any], rng: random.Random) -> list[str]:
    gold = datum["ground_truth"]["answer"]
    other = rng.choice([c for c in "ABCDE" if c != gold])
    return [f"Answer: {gold}", f"Answer: {other}", gold, f"answer:{gold.lower()}", f"Answer: [{gold}]",
            f"The answer is: {other}. Because ...", f"Thought: fine\nAnswer: {gold}", f"Answer:   {gold} (success)",
            json.dumps({"is_finished": True}), f"Answer - {gold}", f"```\nAnswer: {gold}\n```", f": {gold}",
            *rng.sample(GARBAGE, 3)]


def synth_rru(plan: dict[str, dict[str, Any]], rng: random.Random, n: int) -> dict[str, list[tuple[str, Any, list[Any]]]]:
    """(variant -> [(key, datum, predictions)]) for the variants without public data, from plan steps."""
    out: dict[str, list[tuple[str, Any, list[Any]]]] = {v: [] for v in
                                                        ("instruct", "reason_str", "retrieve_str", "understand_str",
                                                         "rru_json")}
    keys = sorted(plan)[:n]
    for key in keys:
        steps = [s for s in plan[key]["ground_truth"] if s["name"] != "FinishAction"] or plan[key]["ground_truth"]
        s = rng.choice(steps)
        apis = plan[key]["meta"]["API_list"]
        thought = f"I need {s['name'].split('.')[-1].replace('_', ' ')} with {', '.join(map(str, s['args'].values()))}."
        gt = {"thought": thought, "name": s["name"], "args": s["args"]}
        prompt = [{"role": "system", "content": "synthetic"}, {"role": "user", "content": key}]
        wrong_api = rng.choice([a for a in apis if a != s["name"]] or ["Other.api"])
        bad_args = {k: f"{v}!" for k, v in s["args"].items()}
        extra_args = {**s["args"], "extra": 1}
        for var in ("reason_str", "retrieve_str", "understand_str", "rru_json"):
            fmt = "json" if var == "rru_json" else "str"
            datum = {"ground_truth": copy.deepcopy(gt) if rng.random() < 0.7 else json.dumps(gt),
                     "meta_data": {"response_format": fmt}, "origin_prompt": prompt}
            if var == "reason_str":
                preds: list[Any] = [thought, thought.upper(), "I will do something else entirely.", "",
                                    f"Thought: {thought}", thought[: len(thought) // 2]]
            elif var == "retrieve_str":
                preds = [s["name"], wrong_api, f"{s['name']} then {wrong_api}", f"call {s['name']}.",
                         s["name"].lower(), f"{s['name']} FinishAction", f"'{s['name']}'", ""]
            elif var == "understand_str":
                preds = [str(s["args"]), json.dumps(s["args"]), f"'{s['args']}'", str(bad_args), str(extra_args), "{}",
                         f'"{s["args"]}"', ""]
            else:
                preds = [json.dumps(gt), json.dumps({**gt, "name": wrong_api}), json.dumps({**gt, "args": bad_args}),
                         json.dumps({**gt, "args": extra_args}), json.dumps({**gt, "args": json.dumps(s["args"])}),
                         f"```json\n{json.dumps(gt)}\n```", repr(gt), json.dumps({"name": s["name"]}),
                         json.dumps({**gt, "args": {}}), "Sure! " + json.dumps(gt) + " Hope it helps.",
                         json.dumps({**gt, "thought": "no idea"})]
            out[var].append((f"{key}", datum, preds + rng.sample(GARBAGE, 3)))
        for fmt in ("json", "string"):
            template = ({"thought": "thought", "action": "name", "args": "args"} if fmt == "json" else
                        {"thought_start": "Thought:", "thought_end": "\n", "action_start": "Action:",
                         "action_end": "\n", "args_start": "Action Input:", "args_end": "\n"})
            datum = {"template": template, "meta_data": {"response_format": fmt}, "origin_prompt": prompt,
                     "ground_truth": {"action": s["name"], "args": s["args"]}}
            if fmt == "json":
                preds = [json.dumps({"thought": "t", "name": s["name"], "args": s["args"]}),
                         json.dumps({"thought": "t", "name": wrong_api, "args": bad_args}),
                         json.dumps({"thought": "t", "name": s["name"]}), repr({"thought": "t", "name": s["name"],
                                                                                "args": s["args"]}),
                         json.dumps({"thought": "t", "name": s["name"], "args": "x"}),
                         "```json\n" + json.dumps({"thought": "t", "name": s["name"], "args": extra_args}) + "\n```"]
            else:
                preds = [f"Thought: t\nAction: {s['name']}\nAction Input: {s['args']}\n",
                         f"Thought: t\nAction: {s['name']}\nAction Input: {json.dumps(s['args'])}\n",
                         f"Thought: t\nAction:  {wrong_api} \nAction Input: {bad_args}\n",
                         f"Thought: t\nAction: {s['name']}\nAction Input: not a dict\n",
                         f"Action: {s['name']}\nAction Input: {s['args']}\n",
                         f"Thought: t\nAction: {s['name']}\nAction Input: {s['args']}",
                         f"Thought: a\nThought: b\nAction: {s['name']}\nAction Input: {s['args']}\nmore\n"]
            out["instruct"].append((f"{key}-{fmt}", datum, preds + rng.sample(GARBAGE, 3)))
    return out


# ---- the two scorers ---------------------------------------------------------------------------------------

def official(var: str, cls: Any, path: Path, model: Path) -> Any:
    eval_type = {"reason_str": "reason", "retrieve_str": "retrieve", "understand_str": "understand",
                 "rru_json": "rru"}.get(var, var)
    prompt_type = "json" if var in ("rru_json", "plan_json", "instruct") else "str"
    return cls(str(path), default_prompt_type=prompt_type, eval_type=eval_type, bert_score_model=str(model))


def official_item(var: str, ev: Any, datum: dict[str, Any]) -> dict[str, Any]:
    d = copy.deepcopy(datum)
    if var.startswith("plan_") or var in ("instruct", "review_str"):
        sample = ev._process_response(d)
        if isinstance(sample, tuple):
            sample = sample[0]
        return dict(ev._evaluate(sample))
    sample, _ = ev._process_response(d)
    return _rru_one(ev, sample)


def _rru_one(ev: Any, sample: Any) -> dict[str, Any]:
    """The per-item metrics of T-Eval's batched `_post_process`, run on one item (its only entry
    point: the evaluator keeps no per-item results)."""
    import numpy as np

    keys = {"reason": ["thought", "parse_rate"], "retrieve": ["name", "parse_rate"],
            "understand": ["args", "parse_rate"]}.get(ev.eval_type, ["thought", "name", "args", "parse_rate"])
    if ev.default_prompt_type == "json":
        keys = ["thought", "name", "args", "parse_rate"]
    return {k: float(np.asarray(v)) for k, v in ev._post_process([sample]).items() if k in keys}


class SharedEncodings:
    """`SentenceTransformer.encode` over a table of per-text embeddings, filled in large batches
    before scoring (the machine this runs on is small: encoding each item's few texts apart, on
    both sides, takes hours). Both scorers get the same vector for the same text, so what is
    compared is everything between the texts and the numbers: parsing, which texts are embedded,
    weights, thresholds, matching, the longest run. A text no prepass saw is encoded on demand."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.table: dict[str, Any] = {}

    def fill(self, texts: list[str]) -> None:
        for t in texts:  # as the tokenizer does (T-Eval's run stops there; agentflan embeds them as "?")
            if any("\ud800" <= c <= "\udfff" for c in t):
                raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        todo = sorted({t for t in texts if t not in self.table}, key=len)
        if todo:
            embs = self.model.encode(todo, batch_size=64, convert_to_tensor=True, show_progress_bar=False)
            self.table.update(zip(todo, embs, strict=True))

    def encode(self, texts: Any, convert_to_tensor: bool = True, **_: Any) -> Any:
        import torch

        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        self.fill(batch)
        out = torch.stack([self.table[t] for t in batch]) if batch else torch.zeros(0, 768)
        return out[0] if single else out


class Recorder:
    """An embedder that only notes the texts asked for (the prepass), answering 0."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def similarity(self, a: Any, b: Any) -> list[list[float]]:
        self.texts += [*a, *b]
        return [[0.0] * len(b) for _ in a]


def same(a: dict[str, Any], b: dict[str, Any], keys: tuple[str, ...]) -> tuple[bool, float]:
    worst = 0.0
    ok = True
    for k in keys:
        if (k in a) != (k in b):
            return False, float("inf")
        if k not in a:
            continue
        d = abs(float(a[k]) - float(b[k]))
        worst = max(worst, d)
        ok = ok and d <= TOL
    return ok, worst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teval-src", type=Path, required=True, help="a T-Eval checkout (its teval/ package is imported)")
    ap.add_argument("--data", type=Path, default=teval.data_dir())
    ap.add_argument("--model", type=Path, default=teval.model_dir())
    ap.add_argument("--items", type=int, default=150, help="items per public plan file (gold + perturbations each; review: all)")
    ap.add_argument("--synth", type=int, default=120, help="synthesized items per variant without public data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--variants", default=",".join(teval.VARIANTS))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    sys.path.insert(0, str(args.teval_src))
    import teval.evaluators as official_evaluators  # type: ignore[import-not-found]  # T-Eval's, unmodified

    emb = teval.SentenceEmbedder(args.model)
    shared = SharedEncodings(emb.model)
    emb.model = shared
    rng = random.Random(args.seed)
    wanted = args.variants.split(",")
    jobs: dict[str, list[tuple[str, Any, list[Any]]]] = {}
    for var, name in FILES.items():
        if var in wanted and (args.data / name).is_file():
            _, items = teval.load_file(args.data / name, var)
            n = args.items if var.startswith("plan_") else 0  # review needs no embedding: every item
            picked = items if n <= 0 else rng.sample(items, min(n, len(items)))
            jobs[var] = [(k, d, review_predictions(d, rng) if var == "review_str" else plan_predictions(var, d, rng))
                         for k, d in picked]
    plan_file = args.data / FILES["plan_json"]
    if plan_file.is_file():
        plan = json.loads(plan_file.read_text(encoding="utf-8"))
        for var, rows in synth_rru(plan, rng, args.synth).items():
            if var in wanted:
                jobs[var] = rows
    report: dict[str, Any] = {}
    for var, rows in jobs.items():
        t0 = time.time()
        cls = getattr(official_evaluators, EVALUATORS[var])
        keys = teval.METRICS[var]
        flat = {f"{k}#{i}": {**d, "prediction": p} for k, d, preds in rows for i, p in enumerate(preds)}
        rec = Recorder()
        for datum in flat.values():
            teval.judge(var, datum, datum["prediction"], rec)
        shared.fill(rec.texts)
        teval.set_embedder(emb)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "predictions.json"
            path.write_text(json.dumps(flat), encoding="utf-8")
            ev = official(var, cls, path, args.model)
            if hasattr(ev, "sentence_model"):
                ev.sentence_model = shared  # the same embeddings for T-Eval's code (see SharedEncodings)
            agree = crashed = 0
            worst = 0.0
            examples = []
            ours_all = []
            crashed_keys = set()
            for key, datum in flat.items():
                ours = teval.judge(var, datum, datum["prediction"])
                ours_all.append({"verdict": ours, "variant": var, "error": None})
                try:
                    theirs = official_item(var, ev, datum)
                except Exception as e:
                    crashed += 1
                    crashed_keys.add(key)
                    if len(examples) < 5:
                        examples.append({"id": key, "prediction": str(datum["prediction"])[:120],
                                         "teval_raised": f"{type(e).__name__}: {e}"[:160], "agentflan": ours})
                    continue
                keys_here = tuple(k for k in keys if k in theirs or k in ours) if var == "instruct" else keys
                ok, d = same(ours, theirs, keys_here)
                worst = max(worst, d if d != float("inf") else worst)
                agree += ok
                if not ok and len(examples) < 10:
                    examples.append({"id": key, "prediction": str(datum["prediction"])[:160], "teval": theirs,
                                     "agentflan": ours})
            # whole-file aggregates, on the predictions T-Eval's evaluate() survives
            kept = {k: v for k, v in flat.items() if k not in crashed_keys}
            path.write_text(json.dumps(kept), encoding="utf-8")
            try:
                whole = official(var, cls, path, args.model)
                if hasattr(whole, "sentence_model"):
                    whole.sentence_model = shared
                theirs_total = {k: float(v) for k, v in whole.evaluate().items() if k in keys and v == v}
            except Exception as e:
                theirs_total = {"raised": f"{type(e).__name__}: {e}"[:160]}
            ours_total = teval.summarize([r for r, k in zip(ours_all, flat, strict=True) if k not in crashed_keys])
        report[var] = {"items": len(rows), "predictions": len(flat), "agree": agree,
                       "compared": len(flat) - crashed, "teval_raised": crashed,
                       "agreement": round(agree / max(1, len(flat) - crashed), 6), "max_abs_diff": worst,
                       "aggregate_teval": theirs_total,
                       "aggregate_agentflan": {k: v for k, v in ours_total["metrics"].items() if v is not None},
                       "source": "public" if var in FILES else "synthesized", "seconds": round(time.time() - t0, 1),
                       "examples": examples}
        r = report[var]
        print(f"{var:15s} {r['source']:11s} items {r['items']:4d} predictions {r['predictions']:5d} agree "
              f"{r['agree']}/{r['compared']} ({100 * r['agreement']:.2f}%) max|diff| {r['max_abs_diff']:.2e} "
              f"T-Eval raised {r['teval_raised']}  {r['seconds']}s", flush=True)
        print(f"    aggregate T-Eval    {theirs_total}\n    aggregate agentflan {r['aggregate_agentflan']}", flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
