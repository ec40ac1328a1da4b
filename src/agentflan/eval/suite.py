"""The one interface every evaluation suite implements, and the suite registry.

A suite is what `agentflan eval SUITE` plays and `agentflan score` re-scores: the executable
environments (`toolapi`, `db`: episodes, `eval.envs.EnvSuite`), Agent-H (`eval.agent_h`), the
step-level suite (`eval.steps`), BFCL (`eval.bfcl`) and T-Eval (`eval.teval`). Each is a `Suite`:

* **run** (`plan`, then the callable it returns): its items, the prompt of each, the act of a model
  (or of the scripted `expert`) on it, one logged record per item with its verdict, one `Run` per
  protocol (`eval.runlog.run_logged` does the logging and resuming for all of them);
* **rescore**: a record's verdict derived again from the log, without a model; **check** compares it
  with the logged one;
* **summarize** a run's records, **table** its summaries (Markdown), **panels** for the chart,
  **report_sections** for `eval.report`;
* **outcomes**: per-item values that `eval.paired` compares across runs on the same items, within
  the record's **group**; **combined** adds per-item values across a run's groups (Agent-H's HScore).

Single-action suites (one model action per item, replayed through the protocol to re-score) share
`SingleActionSuite`: a new one gives its items, prompt, gold answer and record. A module written to
the earlier contract (module-level `run`, `rescore`, `summarize`, `table`, `outcomes`) becomes a
suite with `ModuleSuite(name, "its.module")`.

Adding a suite is one module and one registration: a module defining a `Suite` instance, and
`SUITES.register(name, "module:ATTR")` (here for the built-in ones, or from the module that defines
it). Every environment of `agentflan.envs` is a suite by itself (`EnvSuite`).
"""

from __future__ import annotations

import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentflan.errors import ConfigError
from agentflan.registry import Registry

if TYPE_CHECKING:
    from agentflan.eval.paired import RunOutcomes
    from agentflan.eval.runlog import Exchange, Run
    from agentflan.formats.protocols import Protocol
    from agentflan.schema import Trajectory

Progress = Callable[[str, int], Callable[[int], None]]
"""`progress(label, total)` -> `tick(k)`: a progress bar per (suite, protocol) run."""


def no_progress(label: str, total: int) -> Callable[[int], None]:
    return lambda k: None


@dataclass
class SuiteRequest:
    """What one `agentflan eval` asks of a suite (the same for every suite of the command)."""

    out_root: Path
    """The command's output folder; each run logs into `out_root/<suite>-<protocol>/`."""
    agent_name: str
    """The run's name (the model's, or the policy's)."""
    engine: Any = None
    """Where prompts go (`models.engines.Engine`); None for scripted policies and predictions files."""
    policy: str = "model"
    """`model`, or a scripted baseline: `expert` (calibration), `random` (environments)."""
    protocols: list[str] = field(default_factory=list)
    """The protocols to play in (empty: the suite's defaults for this engine)."""
    n: int = 100
    seed: int = 0
    split: str = "heldout"
    tasks_file: Path | None = None
    predictions: Path | None = None
    """A predictions file scored without a model (BFCL, T-Eval)."""
    max_steps: int = 12
    db_engine: str = "sqlite"
    sql_mode: str | None = None
    """The MariaDB session's `sql_mode` (`db_engine` mysql; None: MySQL 8's strict default)."""
    base_config: dict[str, Any] = field(default_factory=dict)
    """What every run's config records (model, engine, versions, ...)."""
    resume: bool = True
    progress: Progress = no_progress


class Suite(ABC):
    """One evaluation suite (see the module docstring)."""

    name: str = ""
    """The registered name (`agentflan eval NAME`)."""
    family: str = ""
    """The `suite` field of its log records and summaries (default: `name`; `env` for environments)."""
    environment: bool = False
    """An executable environment: its group comes first in paired comparisons."""

    def __init__(self) -> None:
        if not self.family:
            self.family = self.name

    def plan(self, req: SuiteRequest) -> Callable[[], list[Run]]:
        """Check `req` against this suite (load what must exist before any work starts) and return
        the work: a callable that plays and logs every run."""
        return lambda: self.run(req)

    @abstractmethod
    def run(self, req: SuiteRequest) -> list[Run]:
        """Play and log every run of `req` (one per protocol), each with its summary written."""

    @abstractmethod
    def rescore(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        """The verdict of a logged record derived again without a model (None for an errored one)."""

    def check(self, rec: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """(the record with its re-derived verdict, a line saying how it differs from the logged one
        or None when it agrees)."""
        got = self.rescore(rec)
        if got is None:
            return rec, None
        differs = not same_verdict(rec.get("verdict"), got)
        return {**rec, "verdict": got}, (f"logged {rec.get('verdict')}, re-scored {got}" if differs else None)

    @abstractmethod
    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """The summary of one run's records."""

    @abstractmethod
    def table(self, summaries: list[dict[str, Any]]) -> str:
        """Markdown: this suite's summaries compared (one row per run)."""

    def section(self, summaries: list[dict[str, Any]]) -> str:
        """This suite's part of `agentflan score`'s tables."""
        return f"**{self.name}**\n\n" + self.table(summaries)

    def outcomes(self, rec: dict[str, Any]) -> dict[tuple[str, str], float]:
        """A scored record's per-item outcomes for paired comparisons ((metric, stratum) -> value)."""
        return {}

    def group(self, rec: dict[str, Any]) -> str:
        """What a record is compared within across runs (default: the suite)."""
        return self.name

    def combined(self, runs: list[RunOutcomes]) -> RunOutcomes | None:
        """Per-item outcomes pooled over one model's runs of this suite (None: nothing pooled)."""
        return None

    def panels(self, summaries: list[dict[str, Any]]) -> list[Callable[[Any], None]]:
        """Chart panels (each draws on a matplotlib axis) for this suite's summaries."""
        return []

    def report_sections(self, summaries: list[dict[str, Any]], out: Path) -> list[tuple[str, str]]:
        """(heading, Markdown) parts of a comparison report (`eval.report`), charts written into `out`."""
        return []


class SingleActionSuite(Suite):
    """A suite of one model action per item, played through a protocol and re-scored by replaying
    the logged completions through it (`eval.runlog.exchange`, `replay`).

    A subclass gives `items`, `prompt`, `gold` (the `expert` policy's answer), `record` (with the
    verdict), `rescore`, `summarize`, `table`; `default_protocols` and `check_protocol` as needed.
    """

    default: tuple[str, ...] = ()
    """The protocols played when none is given."""

    def default_protocols(self, engine: Any) -> list[str]:
        return list(self.default)

    def check_protocol(self, proto: Protocol) -> None:
        """Raise `ConfigError` when the suite cannot be played in `proto`."""

    @abstractmethod
    def items(self, req: SuiteRequest, proto: Protocol) -> tuple[list[Any], dict[str, Any]]:
        """(the items of a run in `proto`, what the run's config records about them)."""

    def prompt(self, item: Any) -> Trajectory:
        """The conversation the model acts on (it ends where the action is due)."""
        return item.trajectory()  # type: ignore[no-any-return]

    @abstractmethod
    def gold(self, item: Any) -> Trajectory:
        """The prompt with the gold action appended (what the `expert` policy answers)."""

    @abstractmethod
    def record(self, item: Any, protocol: str, agent: str, ex: Exchange) -> dict[str, Any]:
        """The log record of one played item, with its verdict (`runlog.single_record`)."""

    def after(self, items: list[Any], out: Path) -> None:
        """Called when a run's log is complete (e.g. to write the items beside it)."""

    def run(self, req: SuiteRequest) -> list[Run]:
        from agentflan.formats.protocols import get_protocol

        if req.policy == "random":
            raise ConfigError(f"--policy random is a baseline of the environments; {self.name} has `expert` "
                              "(calibration)")
        if req.predictions is not None:
            raise ConfigError(f"--predictions scores a predictions file of bfcl or teval, not {self.name}")
        runs = []
        for name in req.protocols or self.default_protocols(req.engine):
            proto = get_protocol(name, getattr(req.engine, "template", None))
            self.check_protocol(proto)
            items, extra = self.items(req, proto)
            config = {**req.base_config, "suite": self.name, "protocol": proto.name, "agent": req.agent_name,
                      "n": len(items), "seed": req.seed, "tasks_file": str(req.tasks_file) if req.tasks_file else None,
                      "items": [it.id for it in items], **extra}
            runs.append(self.play(req, proto, items, req.out_root / f"{self.name}-{safe_name(proto.name)}", config))
        return runs

    def play(self, req: SuiteRequest, proto: Protocol, items: list[Any], out: Path, config: dict[str, Any]) -> Run:
        """Act on every item in `proto` (resuming a logged run), log, summarize."""
        from agentflan.eval.runlog import Run, exchange, oracle_engine, run_logged, write_summary
        from agentflan.formats.protocols import conversation_key

        trajs = [self.prompt(it) for it in items]
        keys = [conversation_key(t) for t in trajs]
        engine = req.engine
        if req.policy == "expert":
            engine = oracle_engine([(self.gold(it), k) for it, k in zip(items, keys, strict=True)], proto)
        records, resumed = run_logged(
            out, config, [it.id for it in items], lambda i: exchange(proto, trajs[i], keys[i]),
            lambda i, ex: self.record(items[i], proto.name, req.agent_name, ex), engine, resume=req.resume,
            progress=req.progress(f"{self.name} / {proto.name}", len(items)))
        self.after(items, out)
        return write_summary(Run(self.name, proto.name, out, records, resumed, self.summarize(records)))


class ModuleSuite(Suite):
    """A suite module written to the contract before `Suite` (module-level `run`, `rescore(rec, proto)`,
    `summarize`, `table`, `outcomes`), as a `Suite`: the module stays as it is, a line registers it
    (`SUITES.register(name, "pkg.mod:SUITE_OBJ")` with `SUITE_OBJ = ModuleSuite(name, "pkg.mod")`).

    `run` is called with keywords `engine`, `policy`, `protocols`, `tasks_file`, `n`, `out_root`,
    `agent_name`, `base_config`, `resume`, `progress` (and `predictions` when one is given: a module
    whose `run` takes none refuses it); `rescore` gets the record's protocol when one of that name
    exists, else None.
    """

    def __init__(self, name: str, module: str) -> None:
        self.name = name
        self.module = module
        super().__init__()

    def _mod(self) -> Any:
        import importlib

        return importlib.import_module(self.module)

    def run(self, req: SuiteRequest) -> list[Run]:
        import inspect

        run = self._mod().run
        extra: dict[str, Any] = {}
        if req.predictions is not None:
            if "predictions" not in inspect.signature(run).parameters:
                raise ConfigError(f"--predictions does not apply to the {self.name} suite")
            extra["predictions"] = req.predictions
        return list(run(engine=req.engine, policy=req.policy, protocols=list(req.protocols), tasks_file=req.tasks_file,
                        n=req.n, out_root=req.out_root, agent_name=req.agent_name, base_config=req.base_config,
                        resume=req.resume, progress=req.progress, **extra))

    def rescore(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        from agentflan.formats.protocols import get_protocol

        try:
            proto = get_protocol(str(rec.get("protocol")))
        except ConfigError:  # a T-Eval variant, `predictions`: the module reads the record itself
            proto = None
        return self._mod().rescore(rec, proto)  # type: ignore[no-any-return]

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self._mod().summarize(records))

    def table(self, summaries: list[dict[str, Any]]) -> str:
        return str(self._mod().table(summaries))

    def outcomes(self, rec: dict[str, Any]) -> dict[tuple[str, str], float]:
        of = getattr(self._mod(), "outcomes", None)
        return dict(of(rec)) if of is not None else {}


def safe_name(name: str) -> str:
    """`name` as a folder name (word characters, `.` and `-`; at most 60)."""
    import re

    return re.sub(r"[^\w.-]+", "_", name).strip("_")[:60]


def same_verdict(old: dict[str, Any] | None, new: dict[str, Any] | None) -> bool:
    """Logged and re-derived verdicts agree (JSON-normalized: tuples are lists in a log)."""
    return bool(json.loads(json.dumps(old)) == json.loads(json.dumps(new)))


SUITES: Registry[Suite] = Registry("suite")
"""The single-action suites by name (`module:ATTR` of a `Suite` instance); the environments of
`agentflan.envs` are suites without a registration (`get_suite`)."""
SUITES.register("agent-h", "agentflan.eval.agent_h:AGENT_H", "Agent-H: hallucination and over-refusal")
SUITES.register("steps", "agentflan.eval.steps:STEPS", "step-level (T-Eval style) on held-out expert trajectories")
SUITES.register("bfcl", "agentflan.eval.bfcl:BFCL", "BFCL's single-turn function calling (AST checker)")
SUITES.register("bfcl-multi", "agentflan.eval.bfcl_multi:BFCL_MULTI",
                "BFCL's multi-turn entries on BFCL's backends (state and response checks per turn)")
SUITES.register("teval", "agentflan.eval.teval:TEVAL", "T-Eval's data and metrics")

ORDER = ("agent-h", "steps", "bfcl", "bfcl-multi", "teval")
"""Where the built-in suites' tables come (after the environments); other suites follow by name."""


def suite_names() -> list[str]:
    """Every suite `agentflan eval` knows: the environments, then the registered suites."""
    from agentflan.envs import env_names

    return [*env_names(ordered=True), *sorted(SUITES.names(), key=_rank)]


def _rank(name: str) -> tuple[int, str]:
    return (ORDER.index(name) if name in ORDER else len(ORDER), name)


ENV_SUITE = "agentflan.eval.envs:EnvSuite"
"""The suite every environment is played as, a registry-style target imported on first use (the
module implements this interface, so this one names it rather than importing it)."""


def env_suite(env: str) -> Suite:
    """The environment `env` as a suite (`EnvSuite`)."""
    module, attr = ENV_SUITE.split(":")
    return getattr(importlib.import_module(module), attr)(env)  # type: ignore[no-any-return]


def get_suite(name: str) -> Suite:
    """The suite `name`: an environment (`EnvSuite`) or a registered suite."""
    from agentflan.envs import env_names

    if name in env_names():
        return env_suite(name)
    if name not in SUITES:
        from agentflan.options import did_you_mean

        known = suite_names()
        raise ConfigError(f"unknown suite {name!r} (known: {', '.join(known)}){did_you_mean(name, known)}")
    return SUITES.get(name)


def suite_of(rec: dict[str, Any]) -> Suite:
    """The suite a log record or a run summary belongs to (`suite: env` names its environment in `env`)."""
    family = str(rec.get("suite", "env"))
    if family == "env":  # not checked here: an empty run has no env, and a replay names an unknown one
        return env_suite(str(rec.get("env")))
    return get_suite(family)


def known_suite(rec: dict[str, Any]) -> Suite | None:
    """`suite_of`, or None for a record of a suite not known here."""
    try:
        return suite_of(rec)
    except ConfigError:
        return None


def suite_of_group(group: str) -> Suite | None:
    """The suite of a paired-comparison group (`toolapi`, `agent-h/react`, `bfcl`), None if unknown."""
    name = group.split("/", 1)[0]
    try:
        return get_suite(name)
    except ConfigError:
        return None


def by_suite(summaries: Sequence[dict[str, Any]]) -> list[tuple[Suite, list[dict[str, Any]]]]:
    """Summaries grouped by suite family (environments together), environments first, then the
    suites in `ORDER`, then by name; within a group in the order given."""
    groups: dict[str, tuple[Suite, list[dict[str, Any]]]] = {}
    for s in summaries:
        suite = suite_of(s)
        groups.setdefault(suite.family, (suite, []))[1].append(s)
    return sorted(groups.values(), key=lambda g: (not g[0].environment, _rank(g[0].name)))
