"""Logged, resumable runs, and one model action per item, recorded so that it re-scores.

Every suite writes the same way: `OUTPUT/<suite>-<protocol>/config.json` (what was run: model,
protocol, items, limits, versions), `episodes.jsonl` (one self-contained record per item or
episode, appended as each finishes) and `summary.json`. Running the same command again resumes:
records with a verdict are kept, errored ones are played again; another configuration in the same
folder is refused. `run_logged` is that loop, shared by the environments (`eval.envs`) and the
single-action suites (`eval.agent_h`, `eval.steps`, `eval.bfcl`).

Every record is a `LogRecord` (the fields every suite shares, typed, plus the suite's own) with a
`version` (`LOG_VERSION`); a log written before records carried one reads as version 0 and
re-scores the same. A run of any suite is a `Run`; `write_summary` writes its `summary.json`,
`write_records` a whole log at once (a predictions file scored without a model).

A single-action suite asks a protocol for one action (`Protocol.act`) on a prompt-only
conversation. `exchange` plays it and keeps every completion (text, stop string, structured
message), so `replay` can play the same protocol again on the logged completions, without a
model, and get the same `Action`: that is how `agentflan score` re-scores these suites.
`oracle_engine` answers prompts with a gold conversation rendered in the protocol (the `expert`
calibration policy of these suites).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from agentflan.client import ContextLimitError, RequestError
from agentflan.errors import ConfigError
from agentflan.formats.protocols import Action, Completion, Prompt, Protocol
from agentflan.io.files import atomic_output, write_atomic
from agentflan.jsonlog import BadLine, read_records, repair_tail
from agentflan.models.driver import drive
from agentflan.models.engines import Engine, ScriptedEngine
from agentflan.schema import AssistantMessage, Message, Trajectory

LOG = "episodes.jsonl"
LOG_VERSION = 1
"""The version of the log record written now (`LogRecord.version`); 0 is a log from before it."""


class LogRecord(BaseModel):
    """One line of an evaluation log: the fields every suite writes, typed; a suite's own fields
    (the transcript, the item, the completions) ride along as extra fields, in the order written."""

    model_config = ConfigDict(extra="allow")

    version: int = 0
    """`LOG_VERSION` of the writer; 0: written before records were versioned."""
    suite: str = "env"
    """The record's family: `env` for an environment episode (its `env` field names it), else the suite."""
    task_id: str
    protocol: str | None = None
    agent: str | None = None
    verdict: dict[str, Any] | None = None
    """The suite's judgement; None for an errored item."""
    error: str | None = None
    """A failed request: no verdict."""

    @classmethod
    def new(cls, rec: dict[str, Any]) -> dict[str, Any]:
        """`rec` stamped with this `LOG_VERSION` (first in its line) and checked against the model;
        its fields stay as the suite wrote them, in its order."""
        stamped = {"version": LOG_VERSION, **{k: v for k, v in rec.items() if k != "version"}}
        cls.model_validate(stamped)
        return stamped


def check_record(rec: Any, where: str) -> dict[str, Any]:
    """A logged record checked against `LogRecord` (any version); `ConfigError` naming `where` and
    the field otherwise."""
    if not isinstance(rec, dict):
        raise ConfigError(f"{where}: not a log record (a JSON object), got {type(rec).__name__}")
    try:
        LogRecord.model_validate(rec)
    except ValidationError as e:
        err = e.errors()[0]
        field_ = ".".join(str(x) for x in err["loc"]) or "?"
        raise ConfigError(f"{where}: field {field_!r}: {err['msg']} (not an agentflan eval log record)") from None
    return rec


@dataclass
class Run:
    """One run of a suite under one protocol: where it is logged, its records and summary.

    `suite` is the registered name (`toolapi`, `agent-h`, ...), `protocol` the protocol's (or T-Eval
    variant's) name."""

    suite: str
    protocol: str
    out: Path
    records: list[dict[str, Any]] = field(default_factory=list)
    resumed: int = 0
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def env(self) -> str:
        """The environment of an environment run (its suite name)."""
        return self.suite


def write_summary(run: Run) -> Run:
    """Write `run.out/summary.json` (the one writer of a run's summary); returns the run."""
    write_atomic(run.out / "summary.json", json.dumps(run.summary, indent=2) + "\n")
    return run


def write_config(out: Path, config: dict[str, Any]) -> None:
    """Write `out/config.json` (what defines a run; a resumed run must have the same)."""
    write_atomic(out / "config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")


def write_records(path: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Write a whole log at once (atomically), each record stamped with `LOG_VERSION`; returns the
    records as written."""
    stamped = [LogRecord.new(r) for r in records]
    with atomic_output(path) as tmp:
        tmp.write_text("".join(json_line(r) for r in stamped), encoding="utf-8")
    return stamped


def json_lines(path: str | Path, hint: str = "", *, log: bool = False) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each non-blank line of a JSONL file; a line that is not JSON raises
    `ConfigError` naming the file and line (`hint` says what to do about it). `log`: the file is an
    append-only log, whose cut last line (an interrupted write) is skipped with a warning."""
    if log:
        try:
            yield from read_records(path)
        except BadLine as e:
            raise ConfigError(f"{e}{hint}") from e
        return
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}:{n}: not a JSON line ({e.msg}){hint}") from e


def json_line(rec: Any) -> str:
    """One JSONL line of a record: UTF-8 text as it is, or ASCII escapes where a reply holds what
    UTF-8 cannot (a lone surrogate), so that no reply can stop a log from being written."""
    line = json.dumps(rec, ensure_ascii=False)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(rec)
    return line + "\n"


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a log, the last one per task (a resumed run appends its replays); a cut
    last line (a run killed mid-write) is skipped with a warning, and played again on resume."""
    last: dict[str, dict[str, Any]] = {}
    for n, rec in json_lines(path, "; an interrupted write cuts only the last line, this log is damaged "
                                   "before it (eval --no-resume starts over)", log=True):
        key = check_record(rec, f"{path}:{n}")["task_id"]
        last.pop(key, None)
        last[key] = rec
    return list(last.values())


def find_logs(paths: Sequence[Path]) -> list[Path]:
    """The logs under `paths`: `episodes.jsonl` files, or folders holding them (searched recursively)."""
    logs: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.rglob("episodes.jsonl"))
            if not found:
                raise ConfigError(f"{p}: no episodes.jsonl below it")
            logs += found
        elif p.is_file():
            logs.append(p)
        else:
            raise ConfigError(f"{p} does not exist")
    return logs


def run_logged(out: Path, config: dict[str, Any], ids: Sequence[str], start: Callable[[int], Generator[Prompt, Completion, Any]],
               record: Callable[[int, Any], dict[str, Any]], engine: Engine | None, *, resume: bool = True,
               progress: Callable[[int], None] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Play every item not yet logged, append its record to `out/episodes.jsonl`, return all
    records in the order of `ids` and how many were resumed.

    Args:
        out: The run's folder.
        config: What defines the run; a resumed run must have the same (the `engine` entry aside).
        ids: One id per item (`task_id` of its record).
        start: The generator of item `i` (it yields prompts, returns what `record` turns into a record).
        record: The log record of item `i` from its generator's result.
        engine: Where prompts go; None for scripted generators that never prompt.
    """
    out.mkdir(parents=True, exist_ok=True)
    log_path, cfg_path = out / LOG, out / "config.json"
    done: dict[str, dict[str, Any]] = {}
    if resume and log_path.exists() and cfg_path.exists():
        old = json.loads(cfg_path.read_text(encoding="utf-8"))
        if {k: v for k, v in old.items() if k != "engine"} != {k: v for k, v in config.items() if k != "engine"}:
            raise ConfigError(f"{out} holds a run with another configuration; choose another --output "
                              "or remove it (runs resume only with the same model, protocol, tasks and limits)")
        done = {r["task_id"]: r for r in read_log(log_path) if r.get("error") is None}
    elif log_path.exists():
        log_path.unlink()
    write_config(out, config)
    todo = [i for i, key in enumerate(ids) if key not in done]
    resumed = len(ids) - len(todo)
    if progress is not None and resumed:
        progress(resumed)
    fresh: dict[str, dict[str, Any]] = {}
    repair_tail(log_path)  # a cut last line would glue itself to the next record
    with log_path.open("a", encoding="utf-8") as log:
        def on_done(j: int, result: Any) -> None:
            rec = LogRecord.new(record(todo[j], result))
            fresh[ids[todo[j]]] = rec
            log.write(json_line(rec))
            log.flush()
            if progress is not None:
                progress(1)

        drive((start(i) for i in todo), engine, on_done=on_done)  # scripted policies: no engine
    return [done.get(key) or fresh[key] for key in ids], resumed


# ---- one action per item ----------------------------------------------------------------------------------

@dataclass
class Exchange:
    """One protocol action played on an item: the action (None on an error or a context overflow),
    every completion the model gave, and the last prompt it saw."""

    action: Action | None
    completions: list[dict[str, Any]] = field(default_factory=list)
    prompt: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    """A failed request: no verdict."""
    context_limit: bool = False
    """The prompt did not fit the model: judged a failure, as an environment episode is."""


def completion_dict(c: Completion) -> dict[str, Any]:
    out: dict[str, Any] = {"text": c.text}
    if c.stop is not None:
        out["stop"] = c.stop
    if c.message is not None:
        out["message"] = c.message.model_dump(mode="json")
    if c.error is not None:
        out["error"] = c.error
    return out


def action_dict(a: Action | None) -> dict[str, Any] | None:
    if a is None:
        return None
    d = asdict(a)
    d["calls"] = [c.model_dump(mode="json", exclude_none=True) for c in a.calls]
    return d


def _messages(prompt: Prompt) -> list[dict[str, Any]]:
    return [m.model_dump(mode="json", exclude_defaults=True) | {"role": m.role} for m in prompt.messages]


def exchange(proto: Protocol, traj: Trajectory, key: str) -> Generator[Prompt, Completion, Exchange]:
    """Play one action of `proto` on `traj`, keeping every completion (see the module docstring).
    A failed request ends it with `error`; a prompt longer than the context with `context_limit`."""
    gen = proto.act(traj, key)
    got: list[dict[str, Any]] = []
    try:
        prompt = next(gen)
        while True:
            try:
                completion = yield prompt
            except ContextLimitError:
                gen.close()
                return Exchange(None, got, _messages(prompt), context_limit=True)
            except RequestError as e:
                gen.close()
                return Exchange(None, got, _messages(prompt), error=str(e))
            got.append(completion_dict(completion))
            last = prompt
            prompt = gen.send(completion)
    except StopIteration as stop:
        return Exchange(stop.value, got, _messages(last) if got else [])


def replay(proto: Protocol, traj: Trajectory, key: str, completions: list[dict[str, Any]]) -> Action:
    """The action `proto` reads from logged `completions` (no model). Raises `ConfigError` when the
    protocol asks for more generations than were logged (a log from another protocol or version)."""
    gen = proto.act(traj, key)
    queue = list(completions)
    try:
        next(gen)
        while True:
            if not queue:
                gen.close()
                raise ConfigError("the log holds fewer completions than the protocol asks for")
            c = queue.pop(0)
            message = AssistantMessage.model_validate(c["message"]) if c.get("message") else None
            gen.send(Completion(text=c["text"], stop=c.get("stop"), message=message, error=c.get("error")))
    except StopIteration as stop:
        if queue:
            raise ConfigError("the log holds more completions than the protocol asks for") from None
        action: Action = stop.value
        return action


def oracle_engine(golds: Sequence[tuple[Trajectory, str]], proto: Protocol) -> ScriptedEngine:
    """An engine that answers each prompt with what the gold conversation (rendered by `proto`
    with its key) says next; anything else gets an empty reply. The `expert` policy of the
    single-action suites: it must score 100% on every metric."""
    return ScriptedEngine(respond=gold_responder([proto.render(traj, key) for traj, key in golds]))


def gold_responder(table: Sequence[Sequence[Message]]) -> Callable[[Prompt], Completion]:
    """A reply function for rendered gold conversations: a prompt that is the start of one of them
    (by role and text) gets the assistant message that comes next; any other prompt an empty reply."""
    def pairs(msgs: Sequence[Message]) -> list[tuple[str, str]]:
        return [(m.role, m.content) for m in msgs]

    rendered = [(pairs(msgs), msgs) for msgs in table]

    def respond(prompt: Prompt) -> Completion:
        seen = pairs(prompt.messages)
        n = len(seen)
        for flat, msgs in rendered:
            if n < len(flat) and flat[n][0] == "assistant" and flat[:n] == seen:
                nxt = msgs[n]
                if isinstance(nxt, AssistantMessage) and nxt.tool_calls:  # a structured protocol (`native`)
                    return Completion(text=nxt.content, message=nxt)
                return Completion(text=nxt.content)
        return Completion(text="")

    return respond


def single_record(suite: str, protocol: str, agent: str, task_id: str, ex: Exchange, **extra: Any) -> dict[str, Any]:
    """The common part of a single-action suite's log record."""
    return {"suite": suite, "protocol": protocol, "agent": agent, "task_id": task_id, **extra,
            "action": action_dict(ex.action), "completions": ex.completions, "prompt": ex.prompt,
            "error": ex.error, **({"context_limit": True} if ex.context_limit else {})}
