"""Synthesize verified expert trajectories from an environment: `agentflan env synth`.

Tasks are generated (seeded), each is played by its scripted expert in the real environment, and
only verified episodes are written; a failed expert episode is an error, counted and reported,
never written silently. The `toolapi` episodes are written as ToolBench answer files (one JSON
per episode, as ToolBench ships them), the `db` episodes as AgentInstruct conversations in the DB
dialect; both also as native JSONL.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from agentflan.envs import get_env
from agentflan.envs.base import ExpertPolicy, run_episode
from agentflan.io.files import atomic_output, write_atomic
from agentflan.io.writers import WRITERS
from agentflan.io.writers.base import dumps
from agentflan.schema import Trajectory


@dataclass
class SynthResult:
    env: str
    split: str
    tasks: int = 0
    written: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    files: dict[str, str] = field(default_factory=dict)


def synth_episodes(env_name: str, n: int, split: str, seed: int = 0) -> tuple[list[Trajectory], SynthResult]:
    info = get_env(env_name)
    result = SynthResult(env_name, split)
    trajs = []
    for task in info.generate(n, split, seed):
        result.tasks += 1
        episode = run_episode(info.make(), task, ExpertPolicy(info.expert(task)), source_format=f"env:{env_name}")
        if episode.verdict is None or not episode.verdict.success:
            result.failed[(episode.verdict.reason if episode.verdict else str(episode.error))[:80]] += 1
            continue
        trajs.append(episode.trajectory)
        result.kinds[task.kind] += 1
    return trajs, result


def synth(env_name: str, n: int, split: str, out: str | Path, seed: int = 0) -> SynthResult:
    """Write `n` verified expert episodes of `split` under `out/<env>/<split>/`."""
    info = get_env(env_name)
    trajs, result = synth_episodes(env_name, n, split, seed)
    root = Path(out) / env_name / split
    root.mkdir(parents=True, exist_ok=True)
    native = root / "native.jsonl"
    with atomic_output(native) as tmp, tmp.open("w", encoding="utf-8") as f:
        for t in trajs:
            f.write(dumps(t.to_json_dict()) + "\n")
    result.files["native"] = str(native)
    if "toolbench_answer" in info.formats:
        answers = root / "toolbench_answer"
        answers.mkdir(exist_ok=True)
        writer = WRITERS.get("toolbench_answer")()
        for t in trajs:
            write_atomic(answers / f"{t.id}.json", json.dumps(writer.record(t), ensure_ascii=False, indent=1))
        result.files["toolbench_answer"] = str(answers)
    if "agentinstruct" in info.formats:
        path = root / "agentinstruct.jsonl"
        # AgentInstruct ids name the task before the first underscore (db_...)
        tagged = [t.model_copy(update={"id": t.id.replace("-", "_"), "tags": {**t.tags, "task": "db"}})
                  for t in trajs]
        WRITERS.get("agentinstruct")().write(tagged, path)
        result.files["agentinstruct"] = str(path)
    result.written = len(trajs)
    return result
