"""The field's own benchmarks for several models, paired: BFCL (single- and multi-turn), T-Eval and
AgentBench DB, each played by every model on the same items and compared item by item.

    python bench/field.py --model agenttuning=runs/agenttuning/final --model agent-flan=runs/agent-flan/final \\
        --model base=smollm2 --pair agent-flan:agenttuning -o out/field
    python bench/field.py --report-only --pair agent-flan:agenttuning -o out/field   # the report from the logs

Per model, `agentflan eval` plays in a child process (as a user would run it; a rerun resumes):

* `bfcl`: BFCL's single-turn categories (simple, multiple, parallel, irrelevance; `--bfcl-n` items
  spread over them), under BFCL's own prompt and each protocol the model was trained with;
* `bfcl-multi`: BFCL's four multi-turn categories (`--bfcl-multi-n` entries), the same protocols;
* `teval`: each T-Eval data file in `--teval-data` (T-Eval's English file names, `--teval-n` items
  per file), prompted as T-Eval prompts; plan and reason files need T-Eval's sentence model
  (`bench/fetch_teval.py --model`) and are left out without it;
* `dbbench`: an AgentBench dbbench file (`--dbbench`, default `dev.jsonl` of ../shared/data) in
  AgentBench's dialect (`agentinstruct:db`), on `--db-engine`.

Without `--suite`, every suite but `bfcl-multi` (whose prompts are 4,000-8,000 tokens) is played
where its data is found, and each one left out is named in the report; a suite named with
`--suite` whose data is missing is an error. Then every log is re-scored without a model (a logged
verdict that differs from the re-derived one stops the report) and OUT/results.md gives each
model's scores and the paired comparisons (`eval/paired.py`: the per-item differences of the
`--pair` pairs, default every model against the first, with 95% bootstrap intervals, exact tests
and Holm's adjustment); OUT/paired.json has the rows and OUT/field.png the scores.
`bench/reproduce.py --field SUITE` runs the same after each seed of the study, on its arms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUITES = ("bfcl", "bfcl-multi", "teval", "dbbench")
DEFAULT_SUITES = ("bfcl", "teval", "dbbench")
SEMANTIC = ("plan_json", "plan_str", "reason_str", "rru_json")
"""T-Eval variants scored with the sentence model."""
TEVAL_TOKENS = {"review_str": 32}
"""Reply budget per T-Eval variant where T-Eval's answer is short (else `--max-new-tokens`)."""


def default_dbbench() -> Path:
    shared = Path(os.environ.get("AGENTFLAN_SHARED_DATA", REPO.parent / "shared" / "data"))
    return shared / "agentbench" / "dbbench" / "dev.jsonl"


@dataclass
class Settings:
    """How the models are played (the same for every model, so that they pair)."""

    suites: tuple[str, ...] = DEFAULT_SUITES
    explicit: bool = False  # the suites were named: missing data is an error, not a skip
    bfcl_n: int = 400
    bfcl_multi_n: int = 20
    teval_n: int = 100
    teval_data: Path | None = None
    dbbench: Path | None = None
    db_engine: str = "sqlite"
    sql_mode: str | None = None
    device: str = "cpu"
    dtype: str = "bfloat16"
    batch_size: int = 16
    max_new_tokens: int = 256
    seed: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


def _teval_files(s: Settings) -> list[Path]:
    from agentflan.eval import teval

    folder = s.teval_data or teval.data_dir()
    files = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        if "_zh" in f.stem:
            continue
        try:
            teval.variant_of(f)
        except Exception:  # not a T-Eval data file name
            continue
        files.append(f)
    return files


def plan(s: Settings) -> dict[str, list[tuple[str, list[str]]]]:
    """Per suite, the `agentflan eval` runs of one model: (label, arguments without --model/-o).
    Suites without data are left out and named in `s.skipped` (an error where named)."""
    from agentflan.eval import bfcl, bfcl_multi, teval

    common = ["--device", s.device, "--dtype", s.dtype, "--batch-size", str(s.batch_size), "--seed", str(s.seed)]
    out: dict[str, list[tuple[str, list[str]]]] = {}
    reasons: dict[str, str] = {}
    for suite in s.suites:
        if suite == "bfcl":
            missing = [f for f in bfcl.BFCL_FILES if not (bfcl.bfcl_data_dir() / f).is_file()]
            if missing:
                reasons[suite] = f"BFCL's files are not in {bfcl.bfcl_data_dir()} (python bench/fetch_bfcl.py)"
                continue
            out[suite] = [("bfcl", ["bfcl", "-n", str(s.bfcl_n), "--max-new-tokens", "128", *common])]
        elif suite == "bfcl-multi":
            source = bfcl.bfcl_data_dir()
            if not all((source / f"BFCL_v4_{c}.json").is_file() for c in bfcl_multi.CATEGORIES):
                reasons[suite] = f"BFCL's multi-turn files are not in {source} (python bench/fetch_bfcl.py)"
                continue
            out[suite] = [("bfcl-multi", ["bfcl-multi", "-n", str(s.bfcl_multi_n), "--max-new-tokens",
                                          str(s.max_new_tokens), *common])]
        elif suite == "teval":
            files = _teval_files(s)
            if not files:
                reasons[suite] = (f"no T-Eval data file in {s.teval_data or teval.data_dir()} "
                                  "(python bench/fetch_teval.py --data ...)")
                continue
            has_model = (teval.model_dir() / "modules.json").is_file()
            runs = []
            for f in files:
                variant = teval.variant_of(f)
                if variant in SEMANTIC and not has_model:
                    reasons[f"teval {f.name}"] = (f"T-Eval's sentence model is not in {teval.model_dir()} "
                                                  "(python bench/fetch_teval.py --model)")
                    continue
                tokens = TEVAL_TOKENS.get(variant, s.max_new_tokens)
                runs.append((f"teval {f.name}", ["teval", "--tasks", str(f), "-n", str(s.teval_n),
                                                  "--max-new-tokens", str(tokens), *common]))
            if runs:
                out[suite] = runs
            else:
                reasons[suite] = f"none of the T-Eval files in {files[0].parent} can be scored here"
        elif suite == "dbbench":
            tasks = s.dbbench or default_dbbench()
            if not tasks.is_file():
                reasons[suite] = f"no AgentBench dbbench file at {tasks} (--dbbench FILE)"
                continue
            engine = ["--db-engine", s.db_engine, *(["--sql-mode", s.sql_mode] if s.sql_mode else [])]
            n = sum(1 for line in tasks.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip())
            out[suite] = [("dbbench", ["db", "--tasks", str(tasks), "--protocol", "agentinstruct:db",
                                       "--max-steps", "8", "--max-new-tokens", "96", "-n", str(max(n, 1)), *engine,
                                       *common])]
    if s.explicit:  # a suite named that cannot run at all is an error (a T-Eval file left out is a note)
        named = [f"{k}: {v}" for k, v in reasons.items() if k.split(" ")[0] in s.suites and k.split(" ")[0] not in out]
        if named:
            raise SystemExit("field: " + "; ".join(named))
    s.skipped.update(reasons)
    return out


def run_agentflan(args: Sequence[str], log: Path, what: str) -> None:
    """`agentflan ARGS` in a child process, offline, as a user would run it: the command and its output
    appended to `log`; a failure ends the run naming `what` (the same command resumes)."""
    cmd = [sys.executable, "-m", "agentflan.cli.main", *args]
    print("$", " ".join(cmd), flush=True)
    with log.open("a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"},
                              stdout=f, stderr=subprocess.STDOUT, check=False)
    if proc.returncode:
        raise SystemExit(f"{what} failed (exit {proc.returncode}); see {log}; the same command resumes")


def play(models: dict[str, str], s: Settings, out: Path) -> None:
    """Every model on every planned run, each into OUT/<model>/ (resumable; a failure stops with the
    command to rerun)."""
    runs = plan(s)
    for what, why in s.skipped.items():
        print(f"field: left out {what}: {why}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "field.log"
    for calls in runs.values():
        for label, args in calls:
            for name, model in models.items():
                who = ["--policy", model.split(":", 1)[1]] if model.startswith("policy:") else ["--model", model]
                print(f"field: {name}: {label}", flush=True)
                run_agentflan(["eval", *args, *who, "-o", str(out / name)], log, f"field: {name}: {label}")
    (out / "skipped.json").write_text(json.dumps(s.skipped, indent=1, sort_keys=True) + "\n")


# ---- the report ------------------------------------------------------------------------------------------------

def rescored(roots: Sequence[Path]) -> list[Any]:
    """Every log under the model folders, re-scored; a verdict that differs from its log stops."""
    from agentflan.cli.evaluate import find_logs
    from agentflan.errors import AgentflanError
    from agentflan.eval.suites import rescore_logs

    roots = [r for r in roots if any(r.rglob("episodes.jsonl"))]  # a model folder nothing was played into
    if not roots:
        return []
    try:
        scored, mismatches = rescore_logs(find_logs(tuple(roots)))
    except AgentflanError as e:
        raise SystemExit(f"field: {e}") from None
    if mismatches:
        raise SystemExit(f"field: {mismatches} logged verdicts differ from the re-scored ones (agentflan score "
                         "shows them)")
    return scored


def benchmark(summary: dict[str, Any]) -> str:
    """A run's benchmark label: `bfcl (PROTOCOL)`, `teval/VARIANT`, `dbbench` (always AgentBench's dialect)."""
    if summary.get("env") == "db":
        return "dbbench"
    if summary.get("suite") == "teval":
        return f"teval/{summary.get('variant', summary.get('protocol'))}"
    return f"{summary.get('suite') or summary.get('env')} ({summary.get('protocol')})"


Score = tuple[float | None, int, float]
"""A run's headline: (score in [0, 1] or None, items scored, standard error or 0)."""


def headline(summary: dict[str, Any]) -> Score:
    """A run's main score: environment success, BFCL accuracy, or T-Eval's headline metric."""
    if summary.get("suite") == "teval":
        return summary.get("score"), int(summary.get("scored", 0)), 0.0
    for key in ("success", "accuracy"):
        got = summary.get(key)
        if isinstance(got, dict) and "rate" in got:
            return float(got["rate"]), int(got.get("n", 0)), float(got.get("se", 0.0))
    return None, int(summary.get("scored", 0)), 0.0


def scores(scored: list[Any]) -> dict[str, dict[str, Score]]:
    """benchmark -> model -> its headline."""
    out: dict[str, dict[str, Score]] = {}
    for s in scored:
        out.setdefault(benchmark(s.summary), {})[s.run] = headline(s.summary)
    return dict(sorted(out.items()))


def scores_table(scored: list[Any]) -> list[str]:
    """Markdown lines: each model's headline per benchmark, with its n."""
    table = scores(scored)
    models = list(dict.fromkeys(s.run for s in scored))
    lines = ["| benchmark | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for bench, per in table.items():
        cells = [f"{100 * v:.1f} (n {n})" if v is not None else "-"
                 for v, n, _ in (per.get(m, (None, 0, 0.0)) for m in models)]
        lines.append(f"| {bench} | " + " | ".join(cells) + " |")
    return lines


def chart(table: dict[str, dict[str, Score]], models: list[str], path: Path) -> Path | None:
    """One PNG: each model's headline per benchmark (± 1 s.e. where the score is a rate)."""
    from agentflan.io.charts import pyplot

    plt = pyplot()
    if plt is None or not table:
        return None
    from agentflan.eval.score import bars

    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(table)), 4.0))
    groups = list(table)
    series = []
    for m in models:
        got = [table[g].get(m, (None, 0, 0.0)) for g in groups]
        series.append((m, [100 * (v or 0.0) for v, _, _ in got], [100 * se for _, _, se in got]))
    bars(ax, groups, series, "The field's benchmarks: each model's score (%)")
    ax.tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(out: Path, pairs: list[tuple[str, str]] | None, strata: bool = True) -> tuple[str, list[Any]]:
    """Markdown: the models' scores per benchmark, what was left out, the paired comparisons; and the rows."""
    from agentflan.eval.report import paired_section
    from agentflan.eval.suites import paired

    roots = sorted(p for p in out.iterdir() if p.is_dir()) if out.is_dir() else []
    scored = rescored(roots) if roots else []
    if not scored:
        raise SystemExit(f"field: nothing evaluated under {out}")
    models = list(dict.fromkeys(s.run for s in scored))
    for a, b in pairs or []:
        for m in (a, b):
            if m not in models:
                raise SystemExit(f"field: --pair {a}:{b}: no model {m!r} was evaluated under {out} "
                                 f"(models: {', '.join(models)})")
    pairs = pairs or [(m, models[0]) for m in models[1:]]
    rows = paired(scored, pairs=pairs)
    table = scores(scored)
    lines = [f"Models: {', '.join(models)}. Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
             f"{platform.python_version()}. Every log re-scored without a model.", "",
             "### Scores", "", *scores_table(scored)]
    skipped_file = out / "skipped.json"
    skipped = json.loads(skipped_file.read_text()) if skipped_file.is_file() else {}
    if skipped:
        lines += ["", "Left out: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + "."]
    if chart(table, models, out / "field.png") is not None:
        lines += ["", "![scores](field.png)"]
    lines += ["", "### Paired", "", paired_section(rows if strata else [r for r in rows if r.stratum == "all"],
                                                      pairs)]
    return "\n".join(lines) + "\n", rows


def parse_pairs(specs: Sequence[str]) -> list[tuple[str, str]] | None:
    out = []
    for spec in specs:
        a, sep, b = spec.partition(":")
        if not sep or not a or not b:
            raise SystemExit(f"--pair {spec!r}: give A:B (two model names)")
        out.append((a, b))
    return out or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", dest="models", action="append", default=[], metavar="NAME=PATH",
                    help="A model to play (repeatable): a name for the report, and a model folder or name; "
                         "policy:expert or policy:random for the scripted baselines (calibration).")
    ap.add_argument("--pair", dest="pairs", action="append", default=[], metavar="A:B",
                    help="A paired comparison A - B (repeatable; default: every model against the first).")
    ap.add_argument("--suite", dest="suites", action="append", choices=SUITES)
    ap.add_argument("--bfcl-n", type=int, default=400)
    ap.add_argument("--bfcl-multi-n", type=int, default=20)
    ap.add_argument("--teval-n", type=int, default=100, help="Items per T-Eval file.")
    ap.add_argument("--teval-data", type=Path, help="A folder of T-Eval data files (default: bench/fetch_teval.py's).")
    ap.add_argument("--dbbench", type=Path, help="An AgentBench dbbench JSONL file (default: ../shared's dev.jsonl).")
    ap.add_argument("--db-engine", choices=["sqlite", "mysql"], default="sqlite")
    ap.add_argument("--sql-mode")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--output", type=Path, default=Path("out/field"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--no-strata", action="store_true", help="Leave the per-category rows out of the report.")
    args = ap.parse_args()
    pairs = parse_pairs(args.pairs)
    if not args.report_only:
        models = {}
        for spec in args.models:
            name, sep, path = spec.partition("=")
            if not sep or not name or not path:
                ap.error(f"--model {spec!r}: give NAME=PATH")
            if name in models:
                ap.error(f"--model {name}: named twice")
            if path.startswith("policy:") and path not in ("policy:expert", "policy:random"):
                ap.error(f"--model {spec!r}: the scripted policies are policy:expert and policy:random")
            models[name] = path
        if not models:
            ap.error("give at least one --model NAME=PATH (or --report-only)")
        for n in ("bfcl_n", "bfcl_multi_n", "teval_n", "batch_size", "max_new_tokens"):
            if getattr(args, n) < 1:
                ap.error(f"--{n.replace('_', '-')} must be at least 1")
        if args.sql_mode and args.db_engine != "mysql":
            ap.error("--sql-mode needs --db-engine mysql")
        s = Settings(suites=tuple(dict.fromkeys(args.suites or DEFAULT_SUITES)), explicit=bool(args.suites),
                     bfcl_n=args.bfcl_n, bfcl_multi_n=args.bfcl_multi_n, teval_n=args.teval_n,
                     teval_data=args.teval_data, dbbench=args.dbbench, db_engine=args.db_engine,
                     sql_mode=args.sql_mode, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                     max_new_tokens=args.max_new_tokens, seed=args.seed)
        play(models, s, args.output)
    md, rows = report(args.output, pairs, strata=not args.no_strata)
    (args.output / "results.md").write_text(md)
    (args.output / "paired.json").write_text(json.dumps([r.to_json() for r in rows], indent=1) + "\n")
    print(md)


if __name__ == "__main__":
    main()
