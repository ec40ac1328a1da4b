"""The environment suites of `agentflan eval`: held-out tasks of `toolapi` and `db`, and AgentBench
dbbench files, played by a model under a protocol (or by a scripted policy), logged and scored.

The log (`episodes.jsonl`) holds one self-contained record per episode: the task, the protocol and
its key, the whole transcript, every generated text, the verdict, or the error when a request
failed. A rerun with the same output folder resumes: episodes with a verdict are kept, episodes
that ended in an error are played again. `agentflan score` re-derives every verdict from the log
by replaying the transcript's calls in a fresh environment (`rescore`), without a model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentflan.envs import env_names, get_env
from agentflan.envs.base import (
    Agent,
    Environment,
    Episode,
    ExpertPolicy,
    Policy,
    RandomPolicy,
    Task,
    final_answer_of,
    play,
)
from agentflan.errors import ConfigError
from agentflan.eval.runlog import Run, read_log, run_logged, write_summary
from agentflan.eval.score import summarize
from agentflan.eval.suite import Suite, SuiteRequest, safe_name
from agentflan.formats.protocols import Protocol, get_protocol
from agentflan.models.engines import Engine, episode_protocols
from agentflan.schema import AssistantMessage, ToolMessage, Trajectory
from agentflan.seeds import crc_seed


def __getattr__(name: str) -> Any:
    """`ENV_SUITES`, the environment suites: every registered environment, built-ins first
    (`toolapi`, `db`), read when asked for so that a plugin's environment is a suite too."""
    if name == "ENV_SUITES":
        return tuple(env_names(ordered=True))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_tasks(env: str, *, split: str = "heldout", n: int = 100, seed: int = 0,
               tasks_file: str | Path | None = None) -> list[Task]:
    """The tasks of a run: `n` generated tasks of `split`, or the first `n` of an AgentBench
    dbbench JSONL file (`db` only)."""
    if tasks_file is not None:
        if env != "db":
            raise ConfigError(f"--tasks is an AgentBench dbbench file: it only fits the db environment, not {env!r}")
        from agentflan.envs.db import task_from_agentbench

        path = Path(tasks_file)
        if not path.is_file():
            raise ConfigError(f"task file {path} does not exist")
        tasks: list[Task] = []
        with path.open(encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f):
                if len(tasks) >= n:
                    break
                if not line.strip():
                    continue
                try:
                    tasks.append(task_from_agentbench(json.loads(line), i))
                except (json.JSONDecodeError, KeyError, TypeError, IndexError, AttributeError) as e:
                    raise ConfigError(f"{path}:{i + 1}: not an AgentBench dbbench task ({type(e).__name__}: {e})") from e
        return tasks
    return get_env(env).generate(n, split, seed)


def agentbench_task(path: str | Path, index: int) -> Task:
    """Task `index` (the 0-based line) of an AgentBench dbbench JSONL file; only that line is read
    as a task. Raises `ConfigError` naming the file, the line and what is wrong."""
    from agentflan.envs.db import task_from_agentbench

    path = Path(path)
    try:
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read it as AgentBench dbbench JSONL ({e})") from e
    if index >= len(lines):
        raise ConfigError(f"--index {index}: {path} has {len(lines)} tasks (0 to {len(lines) - 1})")
    try:
        return task_from_agentbench(json.loads(lines[index]), index)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}:{index + 1}: malformed JSON: {e.msg}") from e
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise ConfigError(f"{path}:{index + 1}: not an AgentBench dbbench task ({type(e).__name__}: {e})") from e


def make_env(env: str, db_engine: str = "sqlite", sql_mode: str | None = None) -> Environment:
    """A fresh environment (`db_engine` chooses the db environment's SQL engine, `sql_mode` the
    MariaDB session's mode: `envs.mysql.MySQLEngine`)."""
    if sql_mode is not None and db_engine != "mysql":
        raise ConfigError("--sql-mode applies to --db-engine mysql only")
    if env == "db" and db_engine != "sqlite":
        from agentflan.envs.db import DBEnvironment

        return DBEnvironment(engine=db_engine, sql_mode=sql_mode)
    if db_engine != "sqlite":
        raise ConfigError("--db-engine applies to the db environment only")
    return get_env(env).make()


def record(env: str, protocol: str, agent: str, task: Task, ep: Episode, db_engine: str = "sqlite",
           sql_mode: str | None = None) -> dict[str, Any]:
    """The log record of one episode (the engine and `sql_mode` when not the defaults: `rescore`
    replays on them)."""
    return {"suite": "env", "env": env, "protocol": protocol, "agent": agent, "task_id": task.id,
            **({"db_engine": db_engine} if db_engine != "sqlite" else {}),
            **({"sql_mode": sql_mode} if sql_mode is not None else {}),
            "kind": task.kind, "task": task.model_dump(mode="json"),
            "verdict": {"success": ep.verdict.success, "reason": ep.verdict.reason} if ep.verdict else None,
            "error": ep.error, "steps": ep.steps, "actions": ep.actions,
            "transcript": ep.trajectory.to_json_dict()}


def run_env(env: str, tasks: list[Task], agent_for: Callable[[Task], Agent], engine: Engine | None, out: Path, *,
            protocol_name: str, agent_name: str, config: dict[str, Any], max_steps: int = 12,
            resume: bool = True, progress: Callable[[int], None] | None = None, db_engine: str = "sqlite",
            sql_mode: str | None = None) -> Run:
    """Play every task, append each finished episode to `out/episodes.jsonl`, summarize."""
    config = {**config, "env": env, "protocol": protocol_name, "agent": agent_name, "max_steps": max_steps,
              "tasks": [t.id for t in tasks]}
    records, resumed = run_logged(
        out, config, [t.id for t in tasks],
        lambda i: play(make_env(env, db_engine, sql_mode), tasks[i], agent_for(tasks[i]), max_steps=max_steps),
        lambda i, ep: record(env, protocol_name, agent_name, tasks[i], ep, db_engine, sql_mode), engine,
        resume=resume, progress=progress)
    return write_summary(Run(env, protocol_name, out, records=records, resumed=resumed, summary=summarize(records)))


def scripted_agent(policy: str, env: str, seed: int = 0, db_engine: str = "sqlite",
                   sql_mode: str | None = None) -> Callable[[Task], Agent]:
    """The scripted agent of `policy` (`expert`: the db expert derives its queries on `db_engine`
    in `sql_mode`)."""
    info = get_env(env)
    if policy == "expert":
        if env == "db":
            from agentflan.envs.db_tasks import expert_for

            return lambda task: ExpertPolicy(expert_for(task, db_engine, sql_mode))
        return lambda task: ExpertPolicy(info.expert(task))
    if policy == "random":  # seeded per task: each episode draws differently, reproducibly
        return lambda task: RandomPolicy(crc_seed(f"{seed}:{task.id}"))
    raise ConfigError(f"unknown policy {policy!r} (model, expert, random)")


def protocol_agent(protocol: Protocol) -> Callable[[Task], Agent]:
    return lambda task: protocol


def rescore(rec: dict[str, Any]) -> dict[str, Any]:
    """Re-derive an episode's verdict from its log record, without a model: reset a fresh
    environment with the logged task, execute the transcript's calls in order, verify the final
    answer. Returns `{"success", "reason", "observations_match"}` (None for an errored episode)."""
    if rec.get("error") is not None:
        return {"success": None, "reason": "error", "observations_match": True}
    task = Task.model_validate(rec["task"])
    traj = Trajectory.model_validate(rec["transcript"])
    env = make_env(rec["env"], rec.get("db_engine", "sqlite"), rec.get("sql_mode"))
    try:
        messages = env.reset(task)
        recorded = traj.messages[len(messages):]
        same = True
        answer: str | None = None
        for m in recorded:
            if isinstance(m, ToolMessage):
                continue
            messages.append(m)
            if not isinstance(m, AssistantMessage):
                continue
            answer = None if "unparseable" in m.metadata else final_answer_of(m, env.final_tool)
            for call in m.tool_calls:
                if call.name == env.final_tool:
                    continue
                obs = env.step(call)
                got = next((r for r in recorded if isinstance(r, ToolMessage) and r.tool_call_id == call.id), None)
                same = same and got is not None and got.content == obs.content
                messages.append(obs)
        verdict = env.verify(task, answer, messages)
    finally:
        env.close()
    return {"success": verdict.success, "reason": verdict.reason, "observations_match": same}


def outcomes(rec: dict[str, Any]) -> dict[tuple[str, str], float]:
    """A scored episode's outcomes for paired comparisons: success, overall and in its task kind."""
    ok = float(bool(rec["verdict"]["success"]))
    return {("success", "all"): ok, ("success", str(rec.get("kind", "?"))): ok}


def model_agent(protocol_name: str, template: Any = None) -> tuple[Protocol, Callable[[Task], Agent]]:
    proto = get_protocol(protocol_name, template)
    if not proto.episodic:
        raise ConfigError(f"protocol {protocol_name!r} states single steps, not episodes; use it with the step-level suite")
    return proto, protocol_agent(proto)


class EnvSuite(Suite):
    """An executable environment as a suite: held-out tasks played as episodes (by a model in its
    protocols, or by a scripted policy), re-scored by replaying the transcript's calls."""

    family = "env"
    environment = True

    def __init__(self, env: str) -> None:
        self.name = env
        super().__init__()

    def plan(self, req: SuiteRequest) -> Callable[[], list[Run]]:
        """The tasks are loaded (and a task file checked) before any episode is played."""
        tasks = load_tasks(self.name, split=req.split, n=req.n, seed=req.seed,
                           tasks_file=req.tasks_file if self.name == "db" else None)
        names = episode_protocols(req.engine, self.name, req.protocols) if req.engine is not None else [req.policy]
        return lambda: [self._play(req, tasks, name) for name in names]

    def run(self, req: SuiteRequest) -> list[Run]:
        return self.plan(req)()

    def _play(self, req: SuiteRequest, tasks: list[Task], proto_name: str) -> Run:
        tick = req.progress(f"{self.name} / {proto_name}", len(tasks))
        db_engine = req.db_engine if self.name == "db" else "sqlite"
        sql_mode = req.sql_mode if self.name == "db" else None
        if req.engine is None:
            agent_for, pname = scripted_agent(req.policy, self.name, req.seed, db_engine, sql_mode), req.policy
        else:
            proto, agent_for = model_agent(proto_name, getattr(req.engine, "template", None))
            pname = proto.name
        return run_env(self.name, tasks, agent_for, req.engine, req.out_root / f"{self.name}-{safe_name(pname)}",
                       protocol_name=pname, agent_name=req.agent_name, config={**req.base_config, "n": len(tasks)},
                       max_steps=req.max_steps, resume=req.resume, db_engine=db_engine, sql_mode=sql_mode,
                       progress=tick)

    def rescore(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        return rescore(rec)

    def check(self, rec: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
        """An episode differs when its success differs or a replayed call observes something else."""
        got = rescore(rec)
        if got["success"] is None:
            return rec, None
        old = (rec.get("verdict") or {}).get("success")
        differs = old != got["success"] or not got["observations_match"]
        line = (f"logged {old}, re-scored {got['success']} ({got['reason']}; observations match: "
                f"{got['observations_match']})")
        return {**rec, "verdict": {"success": got["success"], "reason": got["reason"]}}, line if differs else None

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return {"suite": "env", **summarize(records)}

    def table(self, summaries: list[dict[str, Any]]) -> str:
        from agentflan.eval.score import table

        return table(summaries)

    def section(self, summaries: list[dict[str, Any]]) -> str:
        return self.table(summaries)

    def outcomes(self, rec: dict[str, Any]) -> dict[tuple[str, str], float]:
        return outcomes(rec)

    def group(self, rec: dict[str, Any]) -> str:
        return str(rec.get("env"))

    def panels(self, summaries: list[dict[str, Any]]) -> list[Callable[[Any], None]]:
        from agentflan.eval.score import bars, label

        return [lambda ax: bars(ax, ["success"], [(f"{label(s)} ({s.get('env')})", [100 * s["success"]["rate"]],
                                                   [100 * s["success"]["se"]]) for s in summaries],
                                "Held-out environments")]

    def report_sections(self, summaries: list[dict[str, Any]], out: Path) -> list[tuple[str, str]]:
        from agentflan.eval.score import env_kinds_chart, env_table

        png = env_kinds_chart(summaries, out / "env_kinds.png")
        return [("Held-out environments", env_table(summaries)
                 + ("\n![success per task kind](env_kinds.png)\n" if png else ""))]


__all__ = ["ENV_SUITES", "EnvSuite", "Policy", "load_tasks", "read_log", "rescore", "run_env"]  # noqa: F822 - ENV_SUITES: __getattr__
