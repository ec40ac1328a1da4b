"""Every suite under one command shape, and what `agentflan score` does with any log: re-score its
records by their suite (`eval.suite.suite_of`), summarize, table, chart, compare runs item by item.

| suite | items | default protocols | scores |
|---|---|---|---|
| `toolapi`, `db` (`eval.envs`) | held-out generated tasks, or (db) an AgentBench dbbench file | those the model was trained with | success, by task kind, parse failures, invalid actions |
| `agent-h` (`eval.agent_h`) | built-in held-out tool items, or `--tasks` (ToolBench queries or items JSONL) | `react`, `tflan:inline` | H_ReAct, H_General, HScore, over-refusal |
| `steps` (`eval.steps`) | held-out expert trajectories, or `--tasks` (any file agentflan reads) | `json`, `react` | instruct, retrieve, understand, reason |
| `bfcl` (`eval.bfcl`) | BFCL question files (`--tasks`, or the fetched simple/multiple/parallel/irrelevance) | `bfcl` (+ the trained protocols) | BFCL's AST accuracy per category |
| `bfcl-multi` (`eval.bfcl_multi`) | BFCL's multi-turn entries (`--tasks`, or base/miss_func/miss_param/long_context), on BFCL's backends | `bfcl` (+ the trained protocols) | BFCL's multi-turn accuracy (state and response checks per turn) |
| `teval` (`eval.teval`) | one T-Eval data file (`--tasks`), or a T-Eval predictions file (`--predictions`) | T-Eval's own prompts (`--protocol VARIANT` overrides the variant read from the file name) | T-Eval's metrics of the file's dimension |

Each (suite, protocol) run lives in `OUTPUT/<suite>-<protocol>/`. The `expert` policy answers with
the gold replies rendered in the protocol (every score at 100%, over-refusal at 0): the calibration
of the harness. `bfcl --predictions FILE` scores a BFCL predictions file without a model. Each suite
is a `eval.suite.Suite` in the registry `eval.suite.SUITES`; nothing here names one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentflan.errors import ConfigError
from agentflan.eval.bfcl import BFCL_ALL_FILES, BFCL_FILES, bfcl_data_dir
from agentflan.eval.runlog import Run
from agentflan.eval.suite import (
    SUITES,
    Progress,
    SuiteRequest,
    by_suite,
    get_suite,
    known_suite,
    safe_name,
    same_verdict,
    suite_names,
    suite_of,
)
from agentflan.io.files import write_png

if TYPE_CHECKING:
    from agentflan.eval.paired import RunOutcomes

SuiteRun = Run
"""The one run type (`eval.runlog.Run`), by its earlier name."""


def run_suite(suite: str, *, engine: Any, policy: str, protocols: list[str], n: int, seed: int,
              tasks_file: Path | None, out_root: Path, agent_name: str, base_config: dict[str, Any], resume: bool,
              progress: Progress, predictions: Path | None = None) -> list[Run]:
    """Run one suite under each protocol (`Suite.run` of a `SuiteRequest` of these fields)."""
    return get_suite(suite).run(SuiteRequest(
        out_root=out_root, agent_name=agent_name, engine=engine, policy=policy, protocols=list(protocols), n=n,
        seed=seed, tasks_file=tasks_file, predictions=predictions, base_config=base_config, resume=resume,
        progress=progress))


# ---- score: summaries, re-scoring, reports for every suite -------------------------------------------------

def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of one run's records, whatever its suite."""
    if not records:
        return get_suite("toolapi").summarize(records)  # an empty log: an empty environment summary
    return suite_of(records[0]).summarize(records)


def rescore(rec: dict[str, Any]) -> dict[str, Any] | None:
    """The verdict of a logged record re-derived without a model (None for an errored record). For
    environments: `{"success", "reason", "observations_match"}`; otherwise the suite's verdict."""
    return suite_of(rec).rescore(rec)


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
    from agentflan.eval.runlog import read_log

    scored, mismatches = [], 0
    for log in logs:
        rescored = []
        for r in read_log(log):
            checked, differs = suite_of(r).check(r)
            if differs is not None:
                mismatches += 1
                if warn:
                    warn(f"{log}: {r.get('task_id')}: {differs}")
            rescored.append(checked)
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
    suite = known_suite(rec)
    return suite.group(rec) if suite is not None else str(rec.get("suite", "env"))


def outcomes(rec: dict[str, Any]) -> dict[tuple[str, str], float]:
    """A scored record's per-item outcomes for paired comparisons ((metric, stratum) -> value); none
    for a record of a suite not known here."""
    suite = known_suite(rec)
    return dict(suite.outcomes(rec)) if suite is not None else {}


def outcomes_of(run: str, records: Sequence[dict[str, Any]]) -> RunOutcomes | None:
    """A run's per-item outcomes from its re-scored records (None when no record has a verdict)."""
    from agentflan.eval.paired import RunOutcomes
    from agentflan.eval.suite import suite_of_group

    scored = [r for r in records if r.get("error") is None and r.get("verdict") is not None]
    if not scored:
        return None
    first = scored[0]
    group = group_of(first)
    suite = suite_of_group(group)
    out = RunOutcomes(run=run, group=group, protocol=str(first.get("protocol")),
                      environment=suite is not None and suite.environment)
    for r in scored:
        values = outcomes(r)
        if values:
            out.items[str(r.get("task_id"))] = values
    return out


def paired(scored: list[ScoredLog], baseline: str | None = None,
           pairs: list[tuple[str, str]] | None = None) -> list[Any]:
    """The paired comparisons (`eval.paired.compare_runs`) of the re-scored logs' runs, in the order
    their logs came."""
    from agentflan.eval import paired as pairing

    runs: dict[str, list[pairing.RunOutcomes]] = {}
    for s in scored:
        got = outcomes_of(s.run, s.records)
        if got is not None:
            runs.setdefault(s.run, []).append(got)
    if baseline is not None and baseline not in runs:
        raise ConfigError(f"--baseline {baseline!r} is not a run here (runs: {', '.join(runs) or 'none'})")
    return pairing.compare_runs(runs, baseline, pairs, combine=combined_runs)


def combined_runs(runs: list[RunOutcomes]) -> list[RunOutcomes]:
    """What each suite pools over one model's runs (`Suite.combined`: Agent-H's HScore per item), in
    the order the suites first appear."""
    from agentflan.eval.suite import Suite, suite_of_group

    suites: dict[str, Suite] = {}
    for r in runs:
        suite = suite_of_group(r.group)
        if suite is not None:
            suites.setdefault(suite.name, suite)
    out = []
    for name, suite in suites.items():
        got = suite.combined([r for r in runs if r.group.split("/", 1)[0] == name])
        if got is not None:
            out.append(got)
    return out


def table(summaries: list[dict[str, Any]]) -> str:
    """Markdown tables, one per suite present (environments first, together)."""
    return "\n".join(suite.section(group) for suite, group in by_suite(summaries))


def chart(summaries: list[dict[str, Any]], path: Path) -> Path | None:
    """One PNG: the panels of every suite present (environment success, per-capability bars, HScore
    against over-refusal, ...), environments first."""
    from agentflan.io.charts import pyplot

    plt = pyplot()
    if plt is None:
        return None
    panels = [p for suite, group in by_suite(summaries) for p in suite.panels(group)]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 3.6 * len(panels)), squeeze=False)
    for ax, draw in zip(axes[:, 0], panels, strict=True):
        draw(ax)
    fig.tight_layout()
    write_png(fig, path, dpi=100)
    return path


__all__ = ["BFCL_ALL_FILES", "BFCL_FILES", "SUITES", "Run", "ScoredLog", "SuiteRun", "bfcl_data_dir", "chart",
           "get_suite", "group_of", "outcomes", "paired", "rescore", "rescore_logs", "run_suite", "safe_name",
           "same_verdict", "score_logs", "suite_names", "summarize", "table"]
