"""The paper's claims at small scale, several seeds: `agentflan demo` run once per seed with the arms of
the chosen studies, then every arm's scores aggregated across seeds (mean, and the spread as
min-max), as Markdown for docs/results.md.

Studies (each a set of arms; a seed trains every arm of every chosen study once):

* `main`: Agent-FLAN (`builtin`) vs AgentTuning (`builtin-agenttuning`) on the same episodes;
* `ladder`: ReAct (`builtin-agenttuning`) -> +align (`builtin-align`) -> +balance
  (`builtin-no-negatives`) -> +negatives (`builtin`);
* `balance`: balancing by masking turns (`builtin`) vs dropping them (`builtin-balance-drop`);
* `negatives`: with (`builtin`) vs without (`builtin-no-negatives`) negatives, on HScore and
  over-refusal.

Each arm is scored in the protocol it was trained with: its first trained protocol per
environment (T-FLAN for the aligned arms, ToolBench's ToolLLaMA prompt for the AgentTuning arm) and
AgentBench's own dialect for db; Agent-H in its two styles. Everything is re-scored from the logs.

    python bench/reproduce.py --study main --study ladder --seeds 0 1 [--steps 24] [-o out/reproduce]
    python bench/reproduce.py --report-only -o out/reproduce    # aggregate what is there
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

STUDIES = {
    "main": {"agent-flan": "builtin", "agenttuning": "builtin-agenttuning"},
    "ladder": {"agenttuning": "builtin-agenttuning", "align": "builtin-align", "balance": "builtin-no-negatives",
               "agent-flan": "builtin"},
    "balance": {"agent-flan": "builtin", "balance-drop": "builtin-balance-drop"},
    "negatives": {"agent-flan": "builtin", "balance": "builtin-no-negatives"},
}


def arms_of(studies: list[str]) -> dict[str, str]:
    arms: dict[str, str] = {}
    for s in studies:
        arms.update(STUDIES[s])
    return arms


def run_seed(out: Path, seed: int, arms: dict[str, str], args: argparse.Namespace) -> None:
    cmd = [sys.executable, "-m", "agentflan.cli.main", "demo", "-o", str(out / f"seed-{seed}"), "--seed", str(seed),
           "--model", args.model, "--device", args.device,
           *[x for name, recipe in arms.items() for x in ("--arm", f"{name}={recipe}")]]
    for flag, value in (("--steps", args.steps), ("--eval-tasks", args.eval_tasks),
                        ("--agent-h-items", args.agent_h_items)):
        if value is not None:
            cmd += [flag, str(value)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _primary(summaries: list[dict[str, Any]], run: str, env: str) -> dict[str, Any] | None:
    """The run's score in `env` under its main protocol: AgentBench's dialect for db when played,
    else the first protocol logged (the demo plays each arm's most trained protocol first)."""
    runs = [s for s in summaries if s.get("suite") == "env" and s.get("run") == run and s.get("env") == env]
    if env == "db":
        runs.sort(key=lambda s: s.get("protocol") != "agentinstruct:db")
    else:
        runs.sort(key=lambda s: s.get("protocol") not in ("tflan", "toolllama"))
    return runs[0] if runs else None


def scores(seed_dir: Path) -> dict[str, dict[str, float | None]]:
    """Per model of one seed: toolapi/db success (main protocol), H_ReAct, H_General, HScore, over-refusal."""
    from agentflan.cli.evaluate import find_logs
    from agentflan.eval.agent_h import _by_run, hscore
    from agentflan.eval.suites import score_logs

    summaries, mismatches = score_logs(find_logs((seed_dir / "eval",)))
    if mismatches:
        raise SystemExit(f"{seed_dir}: {mismatches} logged verdicts differ from the re-scored ones")
    out: dict[str, dict[str, float | None]] = {}
    for run in sorted({str(s.get("run")) for s in summaries}):
        row: dict[str, float | None] = {}
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


def report(out: Path, studies: list[str]) -> str:
    seeds = sorted(out.glob("seed-*"), key=lambda p: int(p.name.split("-")[1]))
    per_seed = {p.name: scores(p) for p in seeds if (p / "eval").exists()}
    if not per_seed:
        raise SystemExit(f"no evaluated seed under {out}")
    keys = [("toolapi", "toolapi success %"), ("db", "db success %"), ("h_react", "H_ReAct %"),
            ("h_general", "H_General %"), ("hscore", "HScore %"), ("over_refusal", "over-refusal %")]
    lines = [f"Seeds: {', '.join(per_seed)}. Cells: mean over seeds (min-max). Machine: {platform.machine()}, "
             f"{os.cpu_count()} cores, Python {platform.python_version()}.", ""]
    for study in [*studies, "base"]:
        arms = {"base": "base"} if study == "base" else {"base": "base", **STUDIES[study]}
        lines += [f"**{study}**" if study != "base" else "**untrained model, every protocol played**", ""]
        head = ["model", "protocols", *[label for _, label in keys]]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for arm in arms:
            rows = [s[arm] for s in per_seed.values() if arm in s]
            if not rows:
                continue
            protos = sorted({f"{r['toolapi_protocol']} / {r['db_protocol']}" for r in rows})
            lines.append(f"| {arm} | {', '.join(protos)} | " + " | ".join(_agg([r[k] for r in rows]) for k, _ in keys)
                         + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", action="append", choices=sorted(STUDIES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--eval-tasks", type=int)
    ap.add_argument("--agent-h-items", type=int)
    ap.add_argument("-o", "--output", type=Path, default=Path("out/reproduce"))
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args()
    studies = args.study or ["main"]
    if not args.report_only:
        for seed in args.seeds:
            run_seed(args.output, seed, arms_of(studies), args)
    md = report(args.output, studies)
    (args.output / "results.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
