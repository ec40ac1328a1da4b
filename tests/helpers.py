"""Small builders for tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURE_DATA = Path(__file__).resolve().parent / "fixtures" / "data"
"""Synthetic samples in each source's format, laid out as ../shared/data is (`fixtures/make_data.py`)."""


CORPUS_SOURCES = [("toolbench/answer/*/*.json", "toolbench"), ("fireact/hotpotqa_react.jsonl", "react"),
                  ("llamafactory/glaive_toolcall_en_demo.json", "sharegpt"),
                  ("llamafactory/reason_tool_use_demo_50.jsonl", "openai"),
                  ("llamafactory/alpaca_en_demo.json", "alpaca")]


def sample_corpus(data: Path, per_source: int = 25) -> list[Any]:
    """A mixed training corpus from the samples under `data`: the first `per_source` trajectories of
    each source, then the tool-calling ones among the first 40 aligned (Agent-FLAN's conversation
    format)."""
    from agentflan.formats.tflan import align
    from agentflan.io import read
    from agentflan.schema import AssistantMessage

    trajs: list[Any] = []
    for rel, fmt in CORPUS_SOURCES:
        trajs += list(read(str(data / rel), fmt))[:per_source]
    trajs += [align(t, "k") for t in trajs[:40] if any(
        isinstance(m, AssistantMessage) and m.tool_calls for m in t.messages)]
    return trajs


def on_fixtures(data: Path) -> bool:
    """Is `data` the shipped fixtures (rather than the real samples in ../shared/data)?"""
    return Path(data) == FIXTURE_DATA


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def read_jsonl(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def agentinstruct_db_records(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """AgentInstruct DB records as THUDM released them: AgentBench's instruction as the first human
    turn, an untrained "Ok.", then the question and the trajectory in the DB dialect (built from
    verified expert episodes of the DB environment, rendered by the `agentinstruct:db` protocol)."""
    from agentflan.envs import get_env
    from agentflan.envs.base import ExpertPolicy, run_episode
    from agentflan.formats.protocols import get_protocol

    info = get_env("db")
    proto = get_protocol("agentinstruct:db")
    out = []
    for i, task in enumerate(info.generate(n, "train", seed)):
        ep = run_episode(info.make(), task, ExpertPolicy(info.expert(task)))
        conv = [{"from": "gpt" if m.role == "assistant" else "human", "loss": m.loss if m.role == "assistant" else None,
                 "value": m.content} for m in proto.render(ep.trajectory)]
        out.append({"id": f"db_{i}", "conversations": conv})
    return out


def run_steps(entries: list[dict[str, Any]], data: Any, seed: int = 17) -> tuple[list[Any], list[Any]]:
    """Run recipe step entries over `data`: (output trajectories, each step's context)."""
    from agentflan.pipeline.base import StepContext, make_steps

    stream = data
    ctxs = []
    for step in make_steps(entries):
        ctx = StepContext(seed=seed)
        ctxs.append(ctx)
        stream = step.run(stream, ctx)
    return list(stream), ctxs


def teval_review_file(folder: Path, n: int = 4) -> Path:
    """A T-Eval `review_str` data file as T-Eval releases them ({id: item}), `n` items; scored
    without the sentence model."""
    folder.mkdir(parents=True, exist_ok=True)
    items = {str(i): {"origin_prompt": [{"role": "user", "content": f"Was the call {i} a success? Answer: X"}],
                      "ground_truth": {"answer": "ABCDE"[i % 5]}, "meta_data": {"response_format": "str"}}
             for i in range(n)}
    path = folder / "review_str_v1.json"
    path.write_text(json.dumps(items))
    return path
