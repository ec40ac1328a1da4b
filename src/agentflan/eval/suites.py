"""The single-action suites beside the environments, under one command shape, and the dispatch that
lets `agentflan score` summarize and re-score any log by its records' `suite`.

| suite | items | default protocols | scores |
|---|---|---|---|
| `agent-h` (`eval.agent_h`) | built-in held-out tool items, or `--tasks` (ToolBench queries or items JSONL) | `react`, `tflan:inline` | H_ReAct, H_General, HScore, over-refusal |
| `steps` (`eval.steps`) | held-out expert trajectories, or `--tasks` (any file agentflan reads) | `json`, `react` | instruct, retrieve, understand, reason |
| `bfcl` (`eval.bfcl`) | BFCL question files (`--tasks`, or the fetched simple/multiple/parallel/irrelevance) | `bfcl` (+ the trained protocols) | BFCL's AST accuracy per category |
| `bfcl-multi` (`eval.bfcl_multi`) | BFCL's multi-turn entries (`--tasks`, or base/miss_func/miss_param/long_context), on BFCL's backends | `bfcl` (+ the trained protocols) | BFCL's multi-turn accuracy (state and response checks per turn) |
| `teval` (`eval.teval`) | one T-Eval data file (`--tasks`), or a T-Eval predictions file (`--predictions`) | T-Eval's own prompts (`--protocol VARIANT` overrides the variant read from the file name) | T-Eval's metrics of the file's dimension |

Each (suite, protocol) run lives in `OUTPUT/<suite>-<protocol>/` like an environment run. The
`expert` policy answers with the gold replies rendered in the protocol (every score at 100%,
over-refusal at 0): the calibration of the harness. `bfcl --predictions FILE` scores a BFCL
predictions file without a model.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentflan.errors import ConfigError
from agentflan.eval.runlog import exchange, oracle_engine, run_logged
from agentflan.formats.protocols import Protocol, conversation_key, get_protocol
from agentflan.io.files import write_atomic, write_png

SUITES = ("agent-h", "steps", "bfcl", "bfcl-multi", "teval")
BFCL_FILES = ("BFCL_v4_simple_python.json", "BFCL_v4_multiple.json", "BFCL_v4_parallel.json",
              "BFCL_v4_irrelevance.json")
BFCL_ALL_FILES = (*BFCL_FILES, "BFCL_v4_parallel_multiple.json", "BFCL_v4_live_simple.json",
                  "BFCL_v4_live_multiple.json", "BFCL_v4_live_parallel.json", "BFCL_v4_live_parallel_multiple.json",
                  "BFCL_v4_live_irrelevance.json", "BFCL_v4_live_relevance.json")
"""Every single-turn Python category agentflan scores (what `bench/fetch_bfcl.py` fetches): a
predictions file is scored against those of them that are there."""


def bfcl_data_dir() -> Path:
    """Where `bench/fetch_bfcl.py` puts BFCL's data (`AGENTFLAN_BFCL_DATA`, default ~/.cache/agentflan/bfcl)."""
    return Path(os.environ.get("AGENTFLAN_BFCL_DATA", Path.home() / ".cache" / "agentflan" / "bfcl"))


@dataclass
class SuiteRun:
    suite: str
    protocol: str
    out: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    resumed: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


def safe_name(name: str) -> str:
    """`name` as a folder name (word characters, `.` and `-`; at most 60)."""
    return re.sub(r"[^\w.-]+", "_", name).strip("_")[:60]


def default_protocols(suite: str, engine: Any) -> list[str]:
    if suite == "agent-h":
        from agentflan.eval.agent_h import DEFAULT_PROTOCOLS

        return list(DEFAULT_PROTOCOLS)
    if suite == "steps":
        from agentflan.eval.steps import DEFAULT_PROTOCOLS as STEP_PROTOCOLS

        return list(STEP_PROTOCOLS)
    info = getattr(engine, "info", None)
    trained = info.episode_protocols() if info is not None and info.trained else []
    return ["bfcl", *[p for p in trained if p != "bfcl"]]


def _items(suite: str, n: int, seed: int, tasks_file: Path | None, proto: Protocol) -> tuple[list[Any], dict[str, Any]]:
    """(items, what the config records about them)."""
    if suite == "agent-h":
        from agentflan.eval import agent_h

        return (agent_h.load_items(tasks_file, n, seed) if tasks_file else agent_h.builtin_items(n, seed)), {}
    if suite == "steps":
        from agentflan.eval import steps

        steps_items, skipped = steps.load_items(n, seed, tasks_file, calls_only=not proto.episodic)
        return steps_items, {"skipped": dict(skipped)}
    from agentflan.eval import bfcl

    files = [tasks_file] if tasks_file else [bfcl_data_dir() / f for f in BFCL_FILES]
    if not tasks_file and not all(f.is_file() for f in files):
        raise ConfigError(f"BFCL data not found in {bfcl_data_dir()}: run `python bench/fetch_bfcl.py` (it fetches "
                          "BFCL's files from the bfcl-eval package on PyPI) or give --tasks QUESTION_FILE")
    per = n if tasks_file else math.ceil(n / len(files))
    return [it for f in files for it in bfcl.load_items(f, per)][:n], {}


def _module(suite: str) -> Any:
    from agentflan.eval import agent_h, bfcl, bfcl_multi, steps, teval

    return {"agent-h": agent_h, "steps": steps, "bfcl": bfcl, "bfcl-multi": bfcl_multi, "teval": teval}[suite]


def _prompt_of(suite: str, item: Any) -> Any:
    return item.history if suite == "steps" else item.trajectory()


def _gold_of(suite: str, item: Any) -> Any:
    if suite == "steps":
        return item.gold_trajectory()
    if suite == "agent-h":
        return item.gold()
    from agentflan.schema import AssistantMessage, ToolCall

    traj = item.trajectory()
    calls = [ToolCall(id=f"call_{i}", name=name, arguments=_gold_args(args, item, name))
             for i, d in enumerate(item.ground_truth) for name, args in d.items()]
    reply = (AssistantMessage(content="", tool_calls=calls) if calls else AssistantMessage(content="", tool_calls=[
        ToolCall(id="call_0", name="Finish", arguments={"return_type": "give_answer",
                                                         "final_answer": "None of the functions can answer this."})]))
    return traj.model_copy(update={"messages": [*traj.messages, reply]})


def _gold_args(answers: dict[str, list[Any]], item: Any, name: str) -> dict[str, Any]:
    """A BFCL call from the first acceptable value of each parameter (optional ones left out, unless
    the function requires them)."""
    doc: dict[str, Any] = next((f for f in item.function if f["name"] == name), {})
    required = set(doc.get("parameters", {}).get("required", []))

    def first(vals: list[Any]) -> Any:
        return next(v for v in vals if v != "")

    def build(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: build(first(x)) for k, x in v.items() if "" not in x}
        if isinstance(v, list) and v and all(isinstance(d, dict) for d in v):
            return [build(d) for d in v]
        return v

    return {p: build(first(vals)) for p, vals in answers.items()
            if ("" not in vals or p in required) and any(v != "" for v in vals)}


def run_suite(suite: str, *, engine: Any, policy: str, protocols: list[str], n: int, seed: int,
              tasks_file: Path | None, out_root: Path, agent_name: str, base_config: dict[str, Any], resume: bool,
              progress: Callable[[str, int], Callable[[int], None]], predictions: Path | None = None) -> list[SuiteRun]:
    """Run one single-action suite under each protocol (see the module docstring)."""
    if suite == "teval":  # T-Eval's prompts are its own: one variant, no agentflan protocol
        from agentflan.eval import teval

        if len(protocols) > 1:
            raise ConfigError("teval scores one T-Eval file per run: give at most one --protocol VARIANT")
        return teval.run(engine=engine, policy=policy, tasks_file=tasks_file, variant=protocols[0] if protocols else None,
                         n=n, out_root=out_root, agent_name=agent_name, base_config=base_config, resume=resume,
                         progress=progress, predictions=predictions)
    if suite == "bfcl-multi":  # episodes of several turns, on BFCL's backends
        from agentflan.eval import bfcl_multi

        if predictions is not None:
            raise ConfigError("--predictions scores a BFCL single-turn predictions file: use it with the bfcl suite")
        return bfcl_multi.run(engine=engine, policy=policy, protocols=protocols, tasks_file=tasks_file, n=n,
                              out_root=out_root, agent_name=agent_name, base_config=base_config, resume=resume,
                              progress=progress)
    if policy == "random":
        raise ConfigError(f"--policy random is a baseline of the environments; {suite} has `expert` (calibration)")
    if predictions is not None:
        if suite != "bfcl":
            raise ConfigError("--predictions scores a BFCL predictions file: it applies to the bfcl suite only")
        return [_bfcl_predictions(predictions, tasks_file, out_root, agent_name, base_config, progress)]
    runs = []
    for name in protocols or default_protocols(suite, engine):
        proto = get_protocol(name, getattr(engine, "template", None))
        if suite == "agent-h" and not proto.episodic:
            raise ConfigError(f"protocol {name!r} states calls only: Agent-H needs a protocol that can answer")
        items, extra = _items(suite, n, seed, tasks_file, proto)
        config = {**base_config, "suite": suite, "protocol": proto.name, "agent": agent_name, "n": len(items),
                  "seed": seed, "tasks_file": str(tasks_file) if tasks_file else None,
                  "items": [it.id for it in items], **extra}
        runs.append(_run_protocol(suite, proto, items, engine, policy, out_root / f"{suite}-{safe_name(proto.name)}",
                                  config, agent_name, resume, progress(f"{suite} / {proto.name}", len(items))))
    return runs


def _run_protocol(suite: str, proto: Protocol, items: list[Any], engine: Any, policy: str, out: Path,
                  config: dict[str, Any], agent_name: str, resume: bool, tick: Callable[[int], None]) -> SuiteRun:
    mod = _module(suite)
    trajs = [_prompt_of(suite, it) for it in items]
    keys = [conversation_key(t) for t in trajs]
    if policy == "expert":
        engine = oracle_engine([(_gold_of(suite, it), k) for it, k in zip(items, keys, strict=True)], proto)
    records, resumed = run_logged(
        out, config, [it.id for it in items], lambda i: exchange(proto, trajs[i], keys[i]),
        lambda i, ex: mod.record(items[i], proto.name, agent_name, ex), engine, resume=resume, progress=tick)
    if suite == "agent-h":
        mod.write_items(items, out / "items.jsonl")
    run = SuiteRun(suite, proto.name, out, records, resumed, mod.summarize(records))
    write_atomic(out / "summary.json", json.dumps(run.summary, indent=2) + "\n")
    return run


def _bfcl_predictions(predictions: Path, tasks_file: Path | None, out_root: Path, agent_name: str,
                      base_config: dict[str, Any], progress: Callable[[str, int], Callable[[int], None]]) -> SuiteRun:
    """Every line of a predictions file scored against the question files (`-n` limits model runs
    only): the categories it has predictions for, every item of them (a missing one fails)."""
    from agentflan.eval import bfcl
    from agentflan.eval.runlog import json_line
    from agentflan.io.files import atomic_output

    files = [tasks_file] if tasks_file else [bfcl_data_dir() / f for f in BFCL_ALL_FILES]
    items = [it for f in files if f.is_file() for it in bfcl.load_items(f)]
    if not items:
        raise ConfigError("--predictions needs the BFCL question files: --tasks QUESTION_FILE, or fetch them "
                          "(bench/fetch_bfcl.py)")
    ids = _read_prediction_ids(predictions)
    categories = {bfcl.category_of(i) for i in ids}
    items = [it for it in items if it.category in categories]  # a category without predictions is not scored
    if not items:
        raise ConfigError(f"{predictions}: no prediction id matches an item of the question files")
    unmatched = sorted(ids - {it.id for it in items})
    records, _ = bfcl.score_predictions(predictions, items, agent=agent_name)
    out = out_root / "bfcl-predictions"
    out.mkdir(parents=True, exist_ok=True)
    config = {**base_config, "suite": "bfcl", "protocol": "predictions", "predictions": str(predictions),
              "items": len(items), "unmatched_predictions": len(unmatched), "unmatched_examples": unmatched[:5]}
    with atomic_output(out / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    with atomic_output(out / "episodes.jsonl") as tmp:
        tmp.write_text("".join(json_line(r) for r in records), encoding="utf-8")
    tick = progress("bfcl / predictions", len(records))
    tick(len(records))
    run = SuiteRun("bfcl", "predictions", out, records, 0, bfcl.summarize(records))
    with atomic_output(out / "summary.json") as tmp:
        tmp.write_text(json.dumps(run.summary, indent=2) + "\n", encoding="utf-8")
    return run


def _read_prediction_ids(path: Path) -> set[str]:
    from agentflan.eval import bfcl

    if not path.is_file():
        raise ConfigError(f"predictions file {path} does not exist")
    return {str(r["id"]) for r in bfcl.read_records(path)}


# ---- score: summaries, re-scoring, reports for every suite -------------------------------------------------

def suite_of(records: list[dict[str, Any]]) -> str:
    return str(records[0].get("suite", "env")) if records else "env"


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of one run's records, whatever its suite."""
    suite = suite_of(records)
    if suite == "env":
        from agentflan.eval.score import summarize as env_summary

        return {"suite": "env", **env_summary(records)}
    return dict(_module(suite).summarize(records))


def rescore(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The verdict of a logged record re-derived without a model (None for an errored record). For
    environments: `{"success", "reason", "observations_match"}`; otherwise the suite's verdict."""
    suite = rec.get("suite", "env")
    if suite == "env":
        from agentflan.eval.envs import rescore as env_rescore

        return env_rescore(rec)
    if suite not in SUITES:
        raise ConfigError(f"unknown suite {suite!r} in a log record")
    mod = _module(suite)
    proto = get_protocol(rec["protocol"]) if rec.get("protocol") != "predictions" and suite != "teval" else None
    return mod.rescore(rec, proto)  # type: ignore[no-any-return]


def same_verdict(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """Logged and re-derived verdicts agree (JSON-normalized: tuples are lists in a log)."""
    return bool(json.loads(json.dumps(old)) == json.loads(json.dumps(new)))


@dataclass
class ScoredLog:
    """One log re-scored: its run's name, the summary, and the records with re-derived verdicts."""

    run: str
    log: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]]


def rescore_logs(logs: list[Path], warn: Callable[[str], None] | None = None) -> tuple[list[ScoredLog], int]:
    """Re-score every log without a model: (each log re-scored; the number of logged verdicts that
    differ from the re-derived ones, each reported through `warn`)."""
    from agentflan.eval.envs import read_log

    scored, mismatches = [], 0
    for log in logs:
        rescored = []
        for r in read_log(log):
            got = rescore(r)
            if r.get("suite", "env") != "env":
                if got is not None and not same_verdict(r.get("verdict"), got):
                    mismatches += 1
                    if warn:
                        warn(f"{log}: {r.get('task_id')}: logged {r.get('verdict')}, re-scored {got}")
                rescored.append({**r, "verdict": got} if got is not None else r)
                continue
            if got is not None and got["success"] is not None:
                old = (r.get("verdict") or {}).get("success")
                if old != got["success"] or not got["observations_match"]:
                    mismatches += 1
                    if warn:
                        warn(f"{log}: {r.get('task_id')}: logged {old}, re-scored {got['success']} "
                             f"({got['reason']}; observations match: {got['observations_match']})")
                r = {**r, "verdict": {"success": got["success"], "reason": got["reason"]}}
            rescored.append(r)
        s = summarize(rescored)
        # OUTPUT/<suite>-<protocol>/episodes.jsonl belongs to the run OUTPUT
        s["run"] = (log.parent.parent.name if log.parent.name.startswith(s.get("env") or s.get("suite") or "?")
                    else log.parent.name)
        s["log"] = str(log)
        scored.append(ScoredLog(str(s["run"]), log, s, rescored))
    return scored, mismatches


def score_logs(logs: list[Path], warn: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Re-score every log without a model: (one summary per log, named by its run; the number of
    logged verdicts that differ from the re-derived ones, each reported through `warn`)."""
    scored, mismatches = rescore_logs(logs, warn)
    return [s.summary for s in scored], mismatches


def group_of(rec: dict[str, Any]) -> str:
    """What a record is compared within: its environment, its Agent-H style (`agent-h/react`), or its suite."""
    suite = str(rec.get("suite", "env"))
    if suite == "env":
        return str(rec.get("env"))
    if suite == "agent-h":
        return f"agent-h/{rec.get('style')}"
    return suite


def outcomes(rec: dict[str, Any]) -> dict[tuple[str, str], float]:
    """A scored record's per-item outcomes for paired comparisons ((metric, stratum) -> value); none
    for a suite whose module defines no `outcomes`."""
    suite = str(rec.get("suite", "env"))
    if suite == "env":
        from agentflan.eval.envs import outcomes as env_outcomes

        return env_outcomes(rec)
    if suite not in SUITES:
        return {}
    of = getattr(_module(suite), "outcomes", None)
    return dict(of(rec)) if of is not None else {}


def paired(scored: list[ScoredLog], baseline: str | None = None,
           pairs: list[tuple[str, str]] | None = None) -> list[Any]:
    """The paired comparisons (`eval.paired.compare_runs`) of the re-scored logs' runs, in the order
    their logs came."""
    from agentflan.eval import paired as pairing

    runs: dict[str, list[pairing.RunOutcomes]] = {}
    for s in scored:
        got = pairing.outcomes_of(s.run, s.records)
        if got is not None:
            runs.setdefault(s.run, []).append(got)
    if baseline is not None and baseline not in runs:
        raise ConfigError(f"--baseline {baseline!r} is not a run here (runs: {', '.join(runs) or 'none'})")
    return pairing.compare_runs(runs, baseline, pairs)


def table(summaries: list[dict[str, Any]]) -> str:
    """Markdown tables, one per suite present (environments first)."""
    from agentflan.eval.score import table as env_table

    parts = []
    envs = [s for s in summaries if s.get("suite", "env") == "env"]
    if envs:
        parts.append(env_table(envs))
    for suite in SUITES:
        group = [s for s in summaries if s.get("suite") == suite]
        if group:
            parts.append(f"**{suite}**\n\n" + _module(suite).table(group))
    return "\n".join(parts)


def chart(summaries: list[dict[str, Any]], path: Path) -> Path | None:
    """One PNG: environment success, per-capability bars (steps, BFCL categories, Agent-H kinds) and
    HScore against over-refusal, one panel per suite present."""
    from agentflan.training.report import pyplot

    plt = pyplot()
    if plt is None:
        return None
    panels = [p for p in (_env_panel(summaries), _steps_panel(summaries), _bfcl_panel(summaries),
                          _kinds_panel(summaries), _hscore_panel(summaries)) if p is not None]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.6 * len(panels)), squeeze=False)
    for ax, draw in zip(axes[:, 0], panels, strict=True):
        draw(ax)
    fig.tight_layout()
    write_png(fig, path, dpi=100)
    return path


def _label(s: dict[str, Any]) -> str:
    return f"{s.get('run', '')} / {s.get('protocol')}"


def _bars(ax: Any, groups: list[str], series: list[tuple[str, list[float], list[float]]], title: str) -> None:
    width = 0.8 / max(1, len(series))
    for k, (name, vals, errs) in enumerate(series):
        xs = [i + k * width for i in range(len(groups))]
        ax.bar(xs, vals, width, yerr=errs, capsize=2, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)


def _env_panel(summaries: list[dict[str, Any]]) -> Callable[[Any], None] | None:
    envs = [s for s in summaries if s.get("suite", "env") == "env"]
    if not envs:
        return None
    return lambda ax: _bars(ax, ["success"], [(f"{_label(s)} ({s.get('env')})", [100 * s["success"]["rate"]],
                                               [100 * s["success"]["se"]]) for s in envs], "Held-out environments")


def _steps_panel(summaries: list[dict[str, Any]]) -> Callable[[Any], None] | None:
    group = [s for s in summaries if s.get("suite") == "steps"]
    if not group:
        return None
    dims = [("instruct", "rate"), ("retrieve", "rate"), ("understand", "mean"), ("reason", "mean")]
    return lambda ax: _bars(ax, [d for d, _ in dims], [
        (_label(s), [100 * s[d][k] for d, k in dims], [100 * s[d]["se"] for d, _ in dims]) for s in group],
        "Step-level (T-Eval style): per capability")


def _bfcl_panel(summaries: list[dict[str, Any]]) -> Callable[[Any], None] | None:
    group = [s for s in summaries if s.get("suite") == "bfcl"]
    if not group:
        return None
    cats = sorted({c for s in group for c in s["by_category"]})
    return lambda ax: _bars(ax, cats, [
        (_label(s), [100 * s["by_category"].get(c, {"rate": 0})["rate"] for c in cats],
         [100 * s["by_category"].get(c, {"se": 0})["se"] for c in cats]) for s in group], "BFCL: accuracy per category")


def _kinds_panel(summaries: list[dict[str, Any]]) -> Callable[[Any], None] | None:
    from agentflan.eval.agent_h import KINDS

    group = [s for s in summaries if s.get("suite") == "agent-h"]
    if not group:
        return None
    labels = [*(f"{k} (halluc.-free)" for k in KINDS[:3]), "control (correct call)"]
    return lambda ax: _bars(ax, labels, [
        (_label(s), [100 * s["by_kind"].get(k, {"rate": 0})["rate"] for k in KINDS],
         [100 * s["by_kind"].get(k, {"se": 0})["se"] for k in KINDS]) for s in group], "Agent-H: per item kind")


def _hscore_panel(summaries: list[dict[str, Any]]) -> Callable[[Any], None] | None:
    from agentflan.eval.agent_h import _by_run, hscore

    group = [s for s in summaries if s.get("suite") == "agent-h"]
    if not group:
        return None
    points = [(run, hscore(g)) for run, g in _by_run(group).items()]

    def draw(ax: Any) -> None:
        for run, h in points:
            y = h["hscore"] if h["hscore"] is not None else (h["h_react"] or h["h_general"] or 0.0)
            ax.scatter([100 * h["over_refusal"]["rate"]], [100 * y], s=40)
            ax.annotate(run, (100 * h["over_refusal"]["rate"], 100 * y), fontsize=8, xytext=(4, 4),
                        textcoords="offset points")
        ax.set_xlim(-5, 105)
        ax.set_ylim(-5, 105)
        ax.set_xlabel("over-refusal % on controls (lower is better)")
        ax.set_ylabel("HScore %")
        ax.set_title("Agent-H: HScore against over-refusal (top left is best)", fontsize=10)
        ax.grid(alpha=0.3)

    return draw
