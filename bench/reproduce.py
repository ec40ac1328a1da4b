"""The verdict: does the Agent-FLAN recipe beat its baseline? A paired study, one command.

`agentflan demo` runs once per seed with the arms of the chosen studies; every arm of a seed plays
the same held-out tasks and Agent-H items, so arms are compared item by item (`eval.paired`):
per seed, and pooled over the seeds (an item is a (seed, task) pair), with a 95% bootstrap
interval, McNemar's exact p (a sign-flip test for graded scores), Holm's adjustment and the
smallest difference the study could detect. The per-seed means (min-max) are kept beside them.

Studies (each a set of arms; a seed trains every arm of every chosen study once):

* `main`: Agent-FLAN (`builtin`) vs AgentTuning (`builtin-agenttuning`) on the same episodes;
* `ladder`: ReAct (`builtin-agenttuning`) -> +align (`builtin-align`) -> +balance
  (`builtin-no-negatives`) -> +negatives (`builtin`), each rung against the one below;
* `balance`: balancing by masking turns (`builtin`) vs dropping them (`builtin-balance-drop`);
* `negatives`: with (`builtin`) vs without (`builtin-no-negatives`) negatives, on HScore and
  over-refusal.

Presets (any flag given overrides the preset's value):

* `cpu`: the main comparison on 2 CPU cores in about two hours: SmolLM2-135M, one seed, 300
  verified episodes per environment, 80 steps of 2 x 1024 tokens, 100 paired held-out tasks per
  environment, 100 Agent-H items per style, no untrained model;
* `gpu`: the full study on one GPU: main + ladder + negatives, 3 seeds, 1,000 verified episodes
  per environment, 150 steps of 16 x 1024 tokens, 100 held-out tasks per environment and protocol,
  Agent-H 100 items per style, the step-level suite and BFCL, seeds in parallel processes;
* `tiny`: the same pipeline as `gpu` on a random two-layer model, for testing the command on CPU.

`--field SUITE` (repeatable: `bfcl`, `bfcl-multi`, `teval`, `dbbench`) plays every model of each
seed on the field's own benchmarks as well (`bench/field.py`, into `seed-N/field/`), and the report
pairs the arms there too, pooled over the seeds.

`--rl ARM` adds GRPO on top of an arm (issue 26): after a seed's demo, `agentflan train` with the
model's RL recipe (`RL_RECIPES`) starts from that seed's ARM model and trains on the environments'
training tasks (`--rl-env` to pick) in the protocols ARM was evaluated in; the result, `ARM-grpo`, plays the same held-out
tasks with the same settings, and the report pairs `ARM-grpo - ARM`. `--rl-override KEY=VALUE`
passes recipe overrides (e.g. `rl.max_steps=40`). The dry run's budget leaves RL out: its cost on a
GPU has not been measured (on 2 CPU cores, about 45 s per step of 8 db rollouts: docs/results.md).

Every stage is resumable (an interrupted study goes on where it stopped). `--dry-run` prints the
plan and a time budget from the datasets' token counts and the throughputs in `THROUGHPUT`.

    python bench/reproduce.py --preset cpu -o out/study-cpu
    python bench/reproduce.py --preset gpu -o out/study-gpu --dry-run      # the plan and its budget
    python bench/reproduce.py --preset gpu -o out/study-gpu                # on the GPU machine
    python bench/reproduce.py --report-only --study main -o out/study-cpu  # the report from what is there
    python bench/reproduce.py --preset gpu --study main --seeds 0 --rl agenttuning -o out/study-gpu  # + GRPO
    python bench/reproduce.py --preset cpu --field bfcl --field teval --field dbbench -o out/study-cpu
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STUDIES = {
    "main": {"agent-flan": "builtin", "agenttuning": "builtin-agenttuning"},
    "ladder": {"agenttuning": "builtin-agenttuning", "align": "builtin-align", "balance": "builtin-no-negatives",
               "agent-flan": "builtin"},
    "balance": {"agent-flan": "builtin", "balance-drop": "builtin-balance-drop"},
    "negatives": {"agent-flan": "builtin", "balance": "builtin-no-negatives"},
}
PAIRS = {  # (A, B): the paired comparisons of a study, A - B
    "main": [("agent-flan", "agenttuning")],
    "ladder": [("align", "agenttuning"), ("balance", "align"), ("agent-flan", "balance")],
    "balance": [("agent-flan", "balance-drop")],
    "negatives": [("agent-flan", "balance")],
}


@dataclass(frozen=True)
class Preset:
    studies: tuple[str, ...]
    seeds: tuple[int, ...]
    model: str
    device: str
    steps: int
    train_tasks: int
    eval_tasks: int
    agent_h_items: int
    suites: tuple[str, ...] = ()
    base: bool = False
    parallel: int = 1


PRESETS = {
    "cpu": Preset(("main",), (0,), "smollm2", "cpu", steps=80, train_tasks=300, eval_tasks=100, agent_h_items=100),
    "gpu": Preset(("main", "ladder", "negatives"), (0, 1, 2), "smollm2", "cuda", steps=150, train_tasks=1000,
                  eval_tasks=100, agent_h_items=100, suites=("steps", "bfcl"), parallel=3),
    "tiny": Preset(("main", "ladder", "negatives"), (0, 1), "tiny", "cpu", steps=4, train_tasks=16, eval_tasks=4,
                   agent_h_items=6, suites=("steps",), parallel=1),
}

# Throughputs the budget is computed from (tokens/s of training; seconds per 100 held-out episodes of
# generation in lockstep), as measured (docs/results.md, ../shared/docs/machine-notes.md):
# cpu: SmolLM2 full fine-tune 155 tokens/s, ~3.5 s per episode at batch 16; cuda (H100): 48-53k
# tokens/s at batch 16 x 1024, 100 held-out episodes in 6-60 s.
THROUGHPUT = {"cpu": {"train_tokens_s": 155.0, "s_per_100_episodes": 350.0, "setup_s": 60.0},
              "cuda": {"train_tokens_s": 48000.0, "s_per_100_episodes": 60.0, "setup_s": 120.0}}
TOKENS_PER_STEP = {"cpu": 2 * 1024, "cuda": 16 * 1024}
RL_RECIPES = {"smollm2": "smollm2-135m-rl", "tiny": "tiny-rl-smoke"}
"""The GRPO recipe `--rl` trains with, by demo model."""
RL_GPU_OVERRIDES = ("rl.use_cpu=false", "rl.bf16=true")


def arms_of(studies: Sequence[str]) -> dict[str, str]:
    arms: dict[str, str] = {}
    for s in studies:
        arms.update(STUDIES[s])
    return arms


def pairs_of(studies: Sequence[str], rl: str | None = None) -> list[tuple[str, str]]:
    pairs = list(dict.fromkeys(p for s in studies for p in PAIRS[s]))
    return [*pairs, (f"{rl}-grpo", rl)] if rl else pairs


def demo_command(out: Path, seed: int, args: argparse.Namespace, *, no_train: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "agentflan.cli.main", "demo", "-o", str(out / f"seed-{seed}"), "--seed", str(seed),
           "--model", args.model, "--device", args.device, "--steps", str(args.steps),
           "--train-tasks", str(args.train_tasks), "--eval-tasks", str(args.eval_tasks),
           "--agent-h-items", str(args.agent_h_items),
           *[x for name, recipe in arms_of(args.studies).items() for x in ("--arm", f"{name}={recipe}")],
           *[x for s in args.suites for x in ("--suite", s)]]
    if not args.base:
        cmd.append("--no-base")
    if no_train:
        cmd.append("--no-train")
    return cmd


def run_seed(out: Path, seed: int, args: argparse.Namespace) -> float:
    cmd = demo_command(out, seed, args)
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    log = out / f"seed-{seed}.log"
    out.mkdir(parents=True, exist_ok=True)
    with log.open("a", encoding="utf-8") as f:  # parallel seeds: each its own log; progress on the terminal
        proc = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"},
                              stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        raise SystemExit(f"seed {seed} failed (exit {proc.returncode}); see {log}; run the same command to resume")
    seconds = time.perf_counter() - start
    print(f"seed {seed}: done in {seconds:.0f} s ({log})", flush=True)
    return seconds


def _agentflan(args: Sequence[str], log: Path) -> None:
    """`agentflan ARGS` in a child process, its output appended to `log`; a failure ends the study."""
    import field

    field.run_agentflan(args, log, f"`agentflan {args[0]}`")


def sft_runs(seed_dir: Path, arm: str) -> list[dict[str, Any]]:
    """The environment runs of `arm`'s evaluation in a seed (their `config.json`: environment,
    protocol, tasks, engine settings), in a fixed order."""
    runs = [json.loads(p.read_text()) for p in sorted((seed_dir / "eval" / arm).glob("*/config.json"))]
    return [c for c in runs if c.get("env") in ("toolapi", "db") and c.get("policy") == "model"]


def run_rl(out: Path, seed: int, args: argparse.Namespace) -> float:
    """GRPO from the seed's `args.rl` model, then the held-out evaluation of the result exactly as the
    arm's was run (same environments, protocols, tasks, engine settings); resumable."""
    from agentflan.eval.demo import PRESETS as DEMO_PRESETS

    start = time.perf_counter()
    seed_dir, arm = out / f"seed-{seed}", args.rl
    runs = sft_runs(seed_dir, arm)
    if not runs:
        raise SystemExit(f"--rl {arm}: {seed_dir / 'eval' / arm} holds no environment run of {arm} (arms: "
                         f"{', '.join(arms_of(args.studies))})")
    protocols = {c["env"]: c["protocol"] for c in runs if not args.rl_envs or c["env"] in args.rl_envs}
    if not protocols:
        raise SystemExit(f"--rl-env {' '.join(args.rl_envs)}: {arm} was evaluated in {', '.join(c['env'] for c in runs)}")
    model, name = seed_dir / "runs" / arm / "final", f"{arm}-grpo"
    log = out / f"seed-{seed}-rl.log"
    if not (seed_dir / "runs" / name / "final" / "agentflan.json").exists():
        gpu = RL_GPU_OVERRIDES if args.device.startswith("cuda") else ()
        _agentflan(["train", RL_RECIPES.get(args.model, RL_RECIPES["smollm2"]), f"model={model}",
                    f"output_dir={seed_dir / 'runs' / name}", f"envs={json.dumps(sorted(protocols))}",
                    f"protocol={json.dumps(protocols, sort_keys=True)}", f"seed={seed}", "resume=true", *gpu,
                    *args.rl_overrides], log)
    dtype = DEMO_PRESETS[args.model].dtype if args.device == "cpu" else "bfloat16"  # as the demo evaluated
    for c in runs:
        engine = c["engine"]
        _agentflan(["eval", c["env"], "--model", str(seed_dir / "runs" / name / "final"), "--protocol", c["protocol"],
                    "-n", str(c["n"]), "--seed", str(c["seed"]), "--split", c["split"],
                    "--max-steps", str(c["max_steps"]), "--max-new-tokens", str(engine["max_new_tokens"]),
                    "--batch-size", str(engine["batch_size"]), "--device", engine["device"], "--dtype", dtype,
                    "-o", str(seed_dir / "eval" / name)], log)
    seconds = time.perf_counter() - start
    print(f"seed {seed}: GRPO from {arm} and its evaluation in {seconds:.0f} s ({log})", flush=True)
    return seconds


def field_models(seed_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    """The models of a seed that `--field` plays: the arms, the untrained model (with `--base`) and
    the GRPO model (with `--rl`)."""
    from agentflan.eval.demo import PRESETS as DEMO_PRESETS
    from agentflan.training.models import ModelConfig, resolve

    models = {arm: str(seed_dir / "runs" / arm / "final") for arm in arms_of(args.studies)}
    base = DEMO_PRESETS[args.model].base
    if args.base and base:
        models = {"base": resolve(ModelConfig(name_or_path=base)), **models}
    if args.rl:
        models[f"{args.rl}-grpo"] = str(seed_dir / "runs" / f"{args.rl}-grpo" / "final")
    return models


def run_field(out: Path, seed: int, args: argparse.Namespace) -> float:
    """The seed's models on the field's benchmarks (`bench/field.py`), as the demo evaluated them
    (device, dtype); resumable."""
    import field

    from agentflan.eval.demo import PRESETS as DEMO_PRESETS

    start = time.perf_counter()
    seed_dir = out / f"seed-{seed}"
    cpu = args.device == "cpu"
    settings = field.Settings(suites=tuple(args.field), explicit=True, device=args.device,
                              dtype=DEMO_PRESETS[args.model].dtype if cpu else "bfloat16",
                              batch_size=DEMO_PRESETS[args.model].batch_size if cpu else 128, seed=seed)
    field.play(field_models(seed_dir, args), settings, seed_dir / "field")
    seconds = time.perf_counter() - start
    print(f"seed {seed}: the field's benchmarks in {seconds:.0f} s ({seed_dir / 'field' / 'field.log'})", flush=True)
    return seconds


def field_report(out: Path, pairs: list[tuple[str, str]], strata: bool = True) -> tuple[str, list[Any]]:
    """Markdown: the field's benchmarks of every seed (`seed-N/field/`), paired and pooled over the
    seeds, then each seed's scores; and the pooled rows. Empty where no seed has them."""
    import field

    from agentflan.eval import paired
    from agentflan.eval.report import paired_section
    from agentflan.eval.suites import combined_runs

    seeds = {p.name: field.rescored(sorted(d for d in (p / "field").iterdir() if d.is_dir()))
             for p in _seed_dirs(out) if (p / "field").is_dir()}
    seeds = {name: scored for name, scored in seeds.items() if scored}
    if not seeds:
        return "", []
    rows = paired.compare_runs(pooled_runs(seeds), pairs=pairs, combine=combined_runs)
    lines = ["### The field's benchmarks, paired, pooled over the seeds", "",
             paired_section(rows if strata else [r for r in rows if r.stratum == "all"], pairs),
             "### The field's benchmarks per seed", ""]
    for name, scored in seeds.items():
        lines += [f"{name}:", "", *field.scores_table(scored), ""]
    return "\n".join(lines) + "\n", rows


# ---- the budget ------------------------------------------------------------------------------------------------

def budget(out: Path, args: argparse.Namespace) -> str:
    """The plan and its time on `args.device`: the seed-0 datasets are built (no training) to count
    their tokens; training and evaluation times follow from `THROUGHPUT`."""
    subprocess.run(demo_command(out, args.seeds[0], args, no_train=True), check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.DEVNULL)
    rate = THROUGHPUT["cuda" if args.device.startswith("cuda") else "cpu"]
    per_step = TOKENS_PER_STEP["cuda" if args.device.startswith("cuda") else "cpu"]
    arms = arms_of(args.studies)
    lines = [f"Plan: studies {', '.join(args.studies)}; arms {', '.join(f'{a} ({r})' for a, r in arms.items())}; "
             f"seeds {' '.join(map(str, args.seeds))} ({args.parallel} at a time); model {args.model} on {args.device}.",
             "", "| arm | records | processed tokens (approx.) | epochs at the steps | train s | eval s |",
             "|---|---|---|---|---|---|"]
    total_train = total_eval = 0.0
    suites_items = 2 * args.agent_h_items + sum(args.eval_tasks for _ in args.suites)
    episodes = 2 * args.eval_tasks  # toolapi and db, in the arm's protocol (db in AgentBench's dialect)
    for arm in arms:
        stats = json.loads((out / f"seed-{args.seeds[0]}" / "data" / arm / "stats.json").read_text())
        tokens = stats["mix"]["processed_approx_tokens"]
        train_s = args.steps * per_step / rate["train_tokens_s"]
        # a single-action item costs about a fifth of an episode (one prompt, no environment turns)
        eval_s = (episodes + suites_items / 5) / 100 * rate["s_per_100_episodes"]
        total_train += train_s
        total_eval += eval_s
        lines.append(f"| {arm} | {stats['mix']['records']} | {tokens:,} | {args.steps * per_step / tokens:.2f} | "
                     f"{train_s:.0f} | {eval_s:.0f} |")
    per_seed = total_train + total_eval
    waves = -(-len(args.seeds) // args.parallel)
    lines += ["", f"Per seed: {per_seed:.0f} s; {len(args.seeds)} seeds in {waves} wave(s) of up to {args.parallel} "
              f"(on one GPU parallel seeds share it: the bound below assumes no speed-up from sharing) -> "
              f"{rate['setup_s'] + len(args.seeds) * per_seed:.0f} s at most, "
              f"{rate['setup_s'] + waves * per_seed:.0f} s if sharing costs nothing, setup included.",
              f"Throughputs assumed ({args.device}): {rate}."]
    return "\n".join(lines)


# ---- the report ------------------------------------------------------------------------------------------------

def _seed_dirs(out: Path) -> list[Path]:
    return sorted((p for p in out.glob("seed-*") if p.is_dir() and (p / "eval").exists()),
                  key=lambda p: int(p.name.split("-")[1]))


def _rescored(seed_dir: Path) -> list[Any]:
    from agentflan.cli.evaluate import find_logs
    from agentflan.eval.suites import rescore_logs

    scored, mismatches = rescore_logs(find_logs((seed_dir / "eval",)))
    if mismatches:
        raise SystemExit(f"{seed_dir}: {mismatches} logged verdicts differ from the re-scored ones")
    return scored


def pooled_runs(seeds: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Each arm's outcomes over every seed, an item being (seed, task): runs of the same arm, suite
    group and protocol are merged."""
    from agentflan.eval.paired import RunOutcomes
    from agentflan.eval.suites import outcomes_of

    merged: dict[tuple[str, str, str], RunOutcomes] = {}
    for seed, scored in seeds.items():
        for s in scored:
            got = outcomes_of(s.run, s.records)
            if got is None:
                continue
            key = (got.run, got.group, got.protocol)
            into = merged.setdefault(key, RunOutcomes(got.run, got.group, got.protocol, environment=got.environment))
            into.items.update({f"{seed}:{i}": v for i, v in got.items.items()})
    runs: dict[str, list[RunOutcomes]] = {}
    for (run, _, _), r in merged.items():
        runs.setdefault(run, []).append(r)
    return runs


def _primary(summaries: list[dict[str, Any]], run: str, env: str) -> dict[str, Any] | None:
    """The run's score in `env` under its main protocol: AgentBench's dialect for db when played,
    else the first protocol logged (the demo plays each arm's most trained protocol first)."""
    runs = [s for s in summaries if s.get("suite") == "env" and s.get("run") == run and s.get("env") == env]
    if env == "db":
        runs.sort(key=lambda s: s.get("protocol") != "agentinstruct:db")
    else:
        runs.sort(key=lambda s: s.get("protocol") not in ("tflan", "toolllama"))
    return runs[0] if runs else None


def scores(scored: list[Any]) -> dict[str, dict[str, Any]]:
    """Per model of one seed: toolapi/db success (main protocol), H_ReAct, H_General, HScore, over-refusal."""
    from agentflan.eval.agent_h import _by_run, hscore

    summaries = [s.summary for s in scored]
    out: dict[str, dict[str, Any]] = {}
    for run in sorted({str(s.get("run")) for s in summaries}):
        row: dict[str, Any] = {}
        for env in ("toolapi", "db"):
            s = _primary(summaries, run, env)
            row[env] = s["success"]["rate"] if s else None
            row[f"{env}_protocol"] = s["protocol"] if s else None
        h = hscore(_by_run([s for s in summaries if s.get("suite") == "agent-h"]).get(run, []))
        row.update(h_react=h["h_react"], h_general=h["h_general"], hscore=h["hscore"],
                   over_refusal=h["over_refusal"]["rate"] if h["over_refusal"]["n"] else None)
        out[run] = row
    return out


def _agg(values: list[float | None]) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    mean = 100 * statistics.fmean(vals)
    return f"{mean:.1f} ({100 * min(vals):.0f}-{100 * max(vals):.0f})" if len(vals) > 1 else f"{mean:.1f}"


def report(out: Path, studies: Sequence[str], strata: bool = True, rl: str | None = None) -> tuple[str, list[Any]]:
    """Markdown: the pooled paired comparisons of every study's pairs (headline sentences, then the
    table), the per-seed paired headlines, and the per-seed means (min-max); and the pooled rows."""
    from agentflan.eval import paired
    from agentflan.eval.report import paired_section
    from agentflan.eval.suites import combined_runs
    from agentflan.eval.suites import paired as pair_runs

    seeds = {p.name: _rescored(p) for p in _seed_dirs(out)}
    if not seeds:
        raise SystemExit(f"no evaluated seed under {out}")
    pairs = pairs_of(studies, rl)
    rows = paired.compare_runs(pooled_runs(seeds), pairs=pairs, combine=combined_runs)
    lines = [f"Seeds: {', '.join(seeds)}. Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}. Pooled over the seeds: an item is a (seed, task) pair.", "",
             "### Paired, pooled over the seeds", "",
             paired_section(rows if strata else [r for r in rows if r.stratum == "all"], pairs)]
    if len(seeds) > 1:
        lines += ["### Paired, per seed", ""]
        for name, scored in seeds.items():
            per = pair_runs(scored, pairs=pairs)
            lines += [f"- {name}: " + " ".join(paired.headline(per, a, b) for a, b in pairs)]
        lines.append("")
    per_seed = {name: scores(scored) for name, scored in seeds.items()}
    keys = [("toolapi", "toolapi success %"), ("db", "db success %"), ("h_react", "H_ReAct %"),
            ("h_general", "H_General %"), ("hscore", "HScore %"), ("over_refusal", "over-refusal %")]
    lines += ["### Per-seed means (min-max over seeds)", ""]
    head = ["model", "protocols", *[label for _, label in keys]]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in ["base", *arms_of(studies), *([f"{rl}-grpo"] if rl else [])]:
        got = [s[arm] for s in per_seed.values() if arm in s]
        if not got:
            continue
        protos = sorted({f"{r['toolapi_protocol']} / {r['db_protocol']}" for r in got})
        lines.append(f"| {arm} | {', '.join(protos)} | " + " | ".join(_agg([r[k] for r in got]) for k, _ in keys) + " |")
    return "\n".join(lines) + "\n", rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    ap.add_argument("--study", dest="studies", action="append", choices=sorted(STUDIES))
    ap.add_argument("--seeds", type=int, nargs="+")
    ap.add_argument("--model")
    ap.add_argument("--device")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--train-tasks", type=int)
    ap.add_argument("--eval-tasks", type=int)
    ap.add_argument("--agent-h-items", type=int)
    ap.add_argument("--suite", dest="suites", action="append", choices=["steps", "bfcl"])
    ap.add_argument("--base", action="store_true", default=None, help="Evaluate the untrained model too.")
    ap.add_argument("--parallel", type=int, help="Seeds run at once (separate processes).")
    ap.add_argument("--rl", metavar="ARM", help="Also train ARM further with GRPO and pair ARM-grpo with ARM.")
    ap.add_argument("--rl-env", dest="rl_envs", action="append", default=[], choices=["toolapi", "db"],
                    help="Train GRPO on this environment only (repeatable; default: every environment the arm was "
                         "evaluated in). The GRPO model is still played in all of them.")
    ap.add_argument("--rl-override", dest="rl_overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="An override of the RL recipe (repeatable), e.g. rl.max_steps=40.")
    ap.add_argument("--field", action="append", default=[], choices=["bfcl", "bfcl-multi", "teval", "dbbench"],
                    help="Also play every model on this benchmark of the field (repeatable; bench/field.py's data and "
                         "defaults) and pair the arms there.")
    ap.add_argument("-o", "--output", type=Path, default=Path("out/reproduce"))
    ap.add_argument("--dry-run", action="store_true", help="Build the seed-0 datasets, print the plan and its budget.")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--no-strata", action="store_true", help="Leave the per-kind rows out of the report.")
    args = ap.parse_args()
    preset = PRESETS[args.preset]
    for name in ("studies", "seeds", "model", "device", "steps", "train_tasks", "eval_tasks", "agent_h_items",
                 "suites", "base", "parallel"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(preset, name))
    for name in ("steps", "train_tasks", "eval_tasks", "agent_h_items", "parallel"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.rl and args.rl not in arms_of(args.studies):
        ap.error(f"--rl {args.rl}: not an arm of the studies ({', '.join(arms_of(args.studies))})")
    if args.dry_run:
        print(budget(args.output, args))
        if args.rl:
            print(f"Plus GRPO from {args.rl} per seed ({RL_RECIPES.get(args.model, RL_RECIPES['smollm2'])}): not in "
                  "the budget (its GPU cost is not measured yet).")
        return
    if not args.report_only:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(lambda seed: run_seed(args.output, seed, args), args.seeds))
            if args.rl:
                list(pool.map(lambda seed: run_rl(args.output, seed, args), args.seeds))
            if args.field:
                list(pool.map(lambda seed: run_field(args.output, seed, args), args.seeds))
        print(f"study: {time.perf_counter() - start:.0f} s wall", flush=True)
    md, rows = report(args.output, args.studies, strata=not args.no_strata, rl=args.rl)
    field_md, field_rows = field_report(args.output, pairs_of(args.studies, args.rl), strata=not args.no_strata)
    md += "\n" + field_md if field_md else ""
    (args.output / "results.md").write_text(md)
    (args.output / "paired.json").write_text(json.dumps([r.to_json() for r in rows], indent=1) + "\n")
    if field_rows:
        (args.output / "field_paired.json").write_text(json.dumps([r.to_json() for r in field_rows], indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
