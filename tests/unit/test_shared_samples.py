"""Every sample converts to native and back to its own format family: the fixtures shipped in
tests/fixtures/data, then the real samples in ../shared/data (counts per layer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentflan.io import convert, detect, read
from agentflan.schema import AssistantMessage, Trajectory
from tests.helpers import on_fixtures, read_jsonl


def _strip_provenance(t: Trajectory) -> dict:
    """The conversation and tools, without provenance and without `raw` (a writer emits JSON
    strings where the source had objects, so the re-read calls gain a `raw`)."""
    d = t.to_json_dict()
    for k in ("source", "lineage", "id"):
        d.pop(k, None)
    for m in d["messages"]:
        for c in m.get("tool_calls", []):
            c.pop("raw", None)
    return d


def _roundtrip(src: str, fmt: str, family: str, tmp_path: Path) -> tuple[list[Trajectory], list[Trajectory]]:
    native = tmp_path / "native.jsonl"
    r1 = convert(src, native, fmt=fmt, to="native")
    assert r1.read.balanced()
    suffix = ".json" if family in ("sharegpt", "alpaca", "toolbench") else ".jsonl"
    back = tmp_path / f"back{suffix}"
    r2 = convert(str(native), back, fmt="native", to=family, on_error="raise")
    assert r2.write.written == r1.read.converted
    assert not r2.write.unwritable
    again = list(read(str(back), family, on_error="raise"))
    first = list(read(str(native), "native", on_error="raise"))
    return first, again


# (records, converted) on the fixtures and on the real samples
COUNTS = {
    ("toolbench/answer/*/*.json", "toolbench"): ((9, 4), (15, 8)),
    ("fireact/hotpotqa_react.jsonl", "react"): ((100, 100), (500, 500)),
    ("llamafactory/glaive_toolcall_en_demo.json", "sharegpt"): ((20, 20), (300, 300)),
    ("llamafactory/reason_tool_use_demo_50.jsonl", "openai"): ((10, 10), (50, 50)),
    ("llamafactory/alpaca_en_demo.json", "alpaca"): ((30, 30), (999, 999)),
    ("agentbench/dbbench/dev.jsonl", "dbbench"): ((8, 8), (60, 60)),
    ("toolbench/instruction/G*_query.json", "toolbench_query"): ((5, 5), (10, 10)),
    ("toolbench/instruction/inference_query_demo*.json", "toolbench_query"): ((2, 2), (2, 2)),
}


@pytest.mark.parametrize(("rel", "fmt"), list(COUNTS))
def test_every_sample_file_converts_with_full_accounting(sample_data, tmp_path, rel, fmt):
    records, converted = COUNTS[rel, fmt][0 if on_fixtures(sample_data) else 1]
    src = str(sample_data / rel)
    assert detect(src) == fmt
    out = tmp_path / "out.jsonl"
    result = convert(src, out, to="native")
    rep = result.read
    assert rep.records == records
    assert rep.converted == converted
    assert rep.balanced()
    assert rep.records == rep.converted + rep.quarantined + rep.skipped + sum(rep.dropped.values())
    assert len(read_jsonl(out)) == converted
    quarantined = read_jsonl(result.quarantine) if result.quarantine else []
    assert len(quarantined) == rep.quarantined
    for q in quarantined:
        assert q["origin"].startswith(str(sample_data)) and q["reason"] and q["record"] is not None


def test_toolbench_answer_accounting_is_explained(sample_data, tmp_path):
    fixtures = on_fixtures(sample_data)
    give_ups = 2 if fixtures else 4
    result = convert(str(sample_data / "toolbench/answer/*/*.json"), tmp_path / "o.jsonl", to="native")
    assert dict(result.read.dropped) == {"toolbench_give_up": give_ups, "toolbench_invalid": 2}
    assert dict(result.read.rejected) == {"undeclared_tool": 1}
    (q,) = read_jsonl(result.quarantine)
    # the model called the tool's name instead of one of its functions: a hallucinated call
    if fixtures:
        assert q["origin"].endswith("G3_answer/5_ChatGPT_DFS_woFilter_w2.json:1") and "'weatherly'" in q["error"]
    else:
        assert q["origin"].endswith("G3_answer/21_ChatGPT_DFS_woFilter_w2.json:1")
        assert "'dota_2_steam_web'" in q["error"]
    # keeping give-ups is an option; they are tagged
    kept = list(read(str(sample_data / "toolbench/answer/*/*.json"), "toolbench", include_give_up=True))
    assert sum(t.tags.get("finish_type") == "give_up" for t in kept) == give_ups


def test_toolbench_dfs_retry_policies(sample_data):
    retried = "17" if on_fixtures(sample_data) else "57"  # the file with a DFS retry turn
    path = str(sample_data / f"toolbench/answer/G1_answer/{retried}_ChatGPT_DFS_woFilter_w2.json")
    (keep,) = read(path, "toolbench", on_error="raise")
    (strip,) = read(path, "toolbench", on_error="raise", dfs_retries="strip")
    assert keep.tags["dfs_retry"] == "true"
    assert len(keep.messages) == len(strip.messages) + 1
    assert not any(m.content.startswith("This is not the first time") for m in strip.messages)
    assert list(read(path, "toolbench", dfs_retries="drop")) == []


def test_toolbench_answers_round_trip_through_toolllama(sample_data, tmp_path):
    first, again = _roundtrip(str(sample_data / "toolbench/answer/*/*.json"), "toolbench", "toolbench", tmp_path)
    # ToolLLaMA JSON has no place for tags and metadata: the conversation and tools must survive
    assert [(t.messages, t.tools) for t in first] == [(t.messages, t.tools) for t in again]
    calls = [c for t in first for m in t.messages if isinstance(m, AssistantMessage) for c in m.tool_calls]
    assert calls and all(c.parse_error is None for c in calls)
    assert all(t.tags["final_tool"] == "Finish" for t in first)


def test_fireact_round_trips_react_openai_react_with_identical_actions(sample_data, tmp_path):
    src = sample_data / "fireact/hotpotqa_react.jsonl"
    convert(str(src), tmp_path / "a.openai.jsonl", fmt="react", to="openai", on_error="raise")
    convert(str(tmp_path / "a.openai.jsonl"), tmp_path / "b.react.jsonl", fmt="openai", to="react", on_error="raise")
    original = read_jsonl(src)
    back = read_jsonl(tmp_path / "b.react.jsonl")
    assert len(back) == len(original) == (100 if on_fixtures(sample_data) else 500)
    for o, b in zip(original, back, strict=True):
        assert b["messages"] == o["messages"]
    openai = read_jsonl(tmp_path / "a.openai.jsonl")
    assert all(m.get("role") != "assistant" or m["tool_calls"] for r in openai for m in r["messages"])


def test_glaive_round_trips_through_sharegpt(sample_data, tmp_path):
    src = sample_data / "llamafactory/glaive_toolcall_en_demo.json"
    convert(str(src), tmp_path / "n.jsonl", to="native", on_error="raise")
    r = convert(str(tmp_path / "n.jsonl"), tmp_path / "back.json", fmt="native", to="sharegpt", on_error="raise")
    assert not r.write.lossy
    original = json.loads(src.read_text())
    back = json.loads((tmp_path / "back.json").read_text())
    for o, b in zip(original, back, strict=True):
        assert [(t["from"], _norm(t)) for t in b["conversations"]] == [(t["from"], _norm(t)) for t in o["conversations"]]
        assert json.loads(b.get("tools", "[]")) == json.loads(o["tools"] or "[]")


def _norm(turn: dict) -> object:
    return json.loads(turn["value"]) if turn["from"] == "function_call" else turn["value"]


def test_reasoning_tool_use_round_trips_through_openai(sample_data, tmp_path):
    src = sample_data / "llamafactory/reason_tool_use_demo_50.jsonl"
    first, again = _roundtrip(str(src), "openai", "openai", tmp_path)
    assert [_strip_provenance(t) for t in first] == [_strip_provenance(t) for t in again]
    # typed parts landed in the right fields
    raw = read_jsonl(src)
    n_reasoning = sum(p["type"] == "reasoning" for r in raw for m in r["messages"] for p in m["content"])
    n_calls = sum(p["type"] == "tool_call" for r in raw for m in r["messages"] for p in m["content"])
    msgs = [m for t in first for m in t.messages if isinstance(m, AssistantMessage)]
    assert sum(m.reasoning is not None for m in msgs) == n_reasoning
    assert sum(len(m.tool_calls) for m in msgs) == n_calls


def test_alpaca_round_trips_exactly(sample_data, tmp_path):
    src = sample_data / "llamafactory/alpaca_en_demo.json"
    convert(str(src), tmp_path / "n.jsonl", to="native", on_error="raise")
    convert(str(tmp_path / "n.jsonl"), tmp_path / "back.json", fmt="native", to="alpaca", on_error="raise")
    assert json.loads((tmp_path / "back.json").read_text()) == json.loads(src.read_text())


@pytest.mark.parametrize("rel", ["agentbench/dbbench/dev.jsonl", "toolbench/instruction/G1_query.json"])
def test_task_files_become_prompts(sample_data, tmp_path, rel):
    first, again = _roundtrip(str(sample_data / rel), None, "openai", tmp_path)
    assert all(t.tags.get("kind") == "prompt" and t.tools for t in first)
    assert [[m.content for m in t.messages] for t in first] == [[m.content for m in t.messages] for t in again]
