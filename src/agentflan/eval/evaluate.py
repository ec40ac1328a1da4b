"""`evaluate(config)`: what `agentflan eval` does, as one library call.

Every suite named in the config (`eval.suite.get_suite`) is checked and planned before any work
starts (a missing task file fails before the first episode), then played under each of its
protocols into `OUTPUT/<suite>-<protocol>/`; the folder's `summary.json`, `summary.md` and
`summary.png` cover every run in it (runs of earlier commands into the same folder stay).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agentflan.errors import EXIT_PARTIAL, ConfigError, RunFailed
from agentflan.eval.runlog import Run
from agentflan.eval.suite import Progress, SuiteRequest, get_suite, safe_name


def env_suites() -> tuple[str, ...]:
    """What `agentflan eval` plays when no suite is named: every registered environment, built-ins
    first (`toolapi`, `db`)."""
    from agentflan.envs import env_names

    return tuple(env_names(ordered=True))


@dataclass
class EvalConfig:
    """One `agentflan eval` (see its help); the engine is built by the caller (`needs_engine`)."""

    suites: tuple[str, ...] = field(default_factory=env_suites)
    model: str | None = None
    """A model folder, or the model name at `base_url` (recorded in every run's config)."""
    base_url: str | None = None
    policy: str = "model"
    """`model`, or a scripted baseline: `expert`, `random`."""
    protocols: tuple[str, ...] = ()
    count: int = 100
    """Tasks (items) per suite."""
    split: str = "heldout"
    seed: int = 0
    tasks_file: Path | None = None
    predictions: Path | None = None
    max_steps: int = 12
    output: Path | None = None
    """The output folder (default `out/eval/<name>`)."""
    resume: bool = True
    db_engine: str = "sqlite"
    sql_mode: str | None = None
    max_new_tokens: int = 256
    """Recorded in every run's config (the engine generates with it)."""
    run_name: str | None = None
    """The run's name (default: from the model, the policy or the predictions file)."""
    suite_protocols: dict[str, list[str]] = field(default_factory=dict)
    """Protocols of some suites (the others take `protocols`)."""
    suite_counts: dict[str, int] = field(default_factory=dict)
    """Sizes of some suites (the others take `count`)."""

    @property
    def needs_engine(self) -> bool:
        """A model plays (not a scripted policy, not a predictions file)."""
        return self.policy == "model" and self.predictions is None

    @property
    def name(self) -> str:
        """The run's name: the model folder's (`<run>-merged` for a trained run's merged model), the
        endpoint model's, the policy's, or the predictions file's."""
        if self.run_name is not None:
            return self.run_name
        if self.predictions is not None:
            return safe_name(self.predictions.stem)
        if self.policy != "model":
            return self.policy
        if self.base_url:
            return safe_name(f"{self.model}")
        path = Path(self.model or "model")
        return safe_name(f"{path.parent.name}-{path.name}" if self.model and path.name in ("final", "merged")
                         else path.name)

    @property
    def out(self) -> Path:
        return self.output or Path("out/eval") / self.name


@dataclass
class Evaluation:
    """What `evaluate` did: the runs of this call (each with its summary) and where they are."""

    out: Path
    runs: list[Run]
    table: str
    """The Markdown table of this call's runs."""
    chart: Path | None = None

    @property
    def errors(self) -> int:
        """Items that ended in an error (failed requests), not counted as answers."""
        return sum(int(r.summary["errors"]) for r in self.runs)

    @property
    def exit_code(self) -> int:
        """0, or `EXIT_PARTIAL` when some items ended in errors (run again to resume them)."""
        return EXIT_PARTIAL if self.errors else 0


def evaluate(config: EvalConfig, engine: Any = None, *, echo: Callable[[str], None] = print,
             warn: Callable[[str], None] | None = None, progress: Progress | None = None) -> Evaluation:
    """Play every suite of `config` with `engine` (None for a scripted policy or a predictions file),
    log and summarize each run, write the folder's summaries.

    Args:
        config: What to run.
        engine: The model (`models.engines.Engine`); required when `config.needs_engine`.
        echo: Where the table and the closing line go.
        warn: Where the note about errored items goes (default: standard error).
        progress: `progress(label, total) -> tick` (default: a progress bar on standard error).

    Returns:
        The runs; `exit_code` says whether some items ended in errors.

    Raises:
        RunFailed: Every item ended in an error (an unreachable endpoint): nothing was scored.
        ConfigError: An unknown suite, a missing task file, a model protocol without an engine, ...
    """
    from agentflan.eval.suites import chart, table
    from agentflan.io.files import write_atomic
    from agentflan.versions import versions

    if config.needs_engine and engine is None:
        raise ConfigError("a model policy needs an engine (--model or --base-url)")
    name, out = config.name, config.out
    engine = engine if config.needs_engine else None
    base_config = {"model": config.model, "base_url": config.base_url, "policy": config.policy, "split": config.split,
                   "seed": config.seed, "db_engine": config.db_engine,
                   **({"sql_mode": config.sql_mode} if config.sql_mode is not None else {}),
                   "tasks_file": str(config.tasks_file) if config.tasks_file else None,
                   "max_new_tokens": config.max_new_tokens,
                   "engine": engine.describe() if engine is not None else None, "versions": versions()}
    with _bar(progress) as tick:
        request = SuiteRequest(out_root=out, agent_name=name, engine=engine, policy=config.policy,
                               protocols=list(config.protocols), n=config.count, seed=config.seed, split=config.split,
                               tasks_file=config.tasks_file, predictions=config.predictions,
                               max_steps=config.max_steps, db_engine=config.db_engine, sql_mode=config.sql_mode,
                               base_config=base_config,
                               resume=config.resume, progress=tick)
        work = [get_suite(s).plan(replace(request, protocols=list(config.suite_protocols.get(s, config.protocols)),
                                          n=config.suite_counts.get(s, config.count)))
                for s in config.suites]
        runs: list[Run] = []
        for play in work:
            for run in play():
                run.summary["run"] = name
                runs.append(run)
    done = Evaluation(out, runs, table([r.summary for r in runs]))
    echo(done.table)
    summaries = write_index(out, runs)
    md = table(summaries)
    done.chart = chart(summaries, out / "summary.png")
    png = done.chart
    write_atomic(out / "summary.md", f"# agentflan eval: {name}\n\n{md}\n" + (f"![success]({png.name})\n" if png else ""))
    echo(f"logs and summaries: {out}/ (summary.md" + (", summary.png" if png else "") + ")")
    if done.errors:
        example = next((e for r in runs for e in r.summary["error_examples"]), "")
        if not sum(r.summary["scored"] for r in runs):  # an unreachable endpoint: no work done, not partial
            raise RunFailed(f"every one of the {done.errors} episode(s) ended in an error (failed requests), none was "
                            f"scored, e.g. {example}; the logs are in {out}/, run the same command again to resume")
        (warn or _stderr)(f"{done.errors} episode(s) ended in errors (failed requests), not counted as answers, "
                          f"e.g. {example}\nrun the same command again to resume them")
    return done


def write_index(out: Path, runs: list[Run]) -> list[dict[str, Any]]:
    """Write the folder's `summary.json`: every run in it, this call's and those of earlier calls
    whose logs are still there; returns their summaries."""
    from agentflan.io.files import write_atomic

    index = out / "summary.json"
    entries = [{"dir": str(r.out), **r.summary} for r in runs]
    if index.exists():
        this = {e["dir"] for e in entries}
        earlier = json.loads(index.read_text()).get("runs", [])
        entries = [e for e in earlier if e.get("dir") not in this and (Path(e["dir"]) / "episodes.jsonl").exists()] + entries
    write_atomic(index, json.dumps({"runs": entries}, indent=2) + "\n")
    return [{k: v for k, v in e.items() if k != "dir"} for e in entries]


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


@contextmanager
def _bar(progress: Progress | None) -> Iterator[Progress]:
    """`progress`, or a rich progress bar on standard error for the duration."""
    if progress is not None:
        yield progress
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=False) as bar:
        def add(label: str, total: int) -> Callable[[int], None]:
            task = bar.add_task(label, total=total)
            return lambda k: bar.advance(task, k)

        yield add
