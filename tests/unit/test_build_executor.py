"""The build's executor: shards and phases never change a byte, whatever the number of workers."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from agentflan.errors import ConfigError
from agentflan.pipeline import build as build_mod
from agentflan.pipeline.build import build, plan_shards
from agentflan.pipeline.executor import LocalExecutor
from agentflan.pipeline.recipe import load_recipe

RECIPE = """
kind: data
name: phases
seed: 5
sources:
  fireact: {reader: react, paths: ["DATA/fireact/hotpotqa_react.jsonl"]}
  alpaca: {reader: alpaca, paths: ["DATA/llamafactory/alpaca_en_demo.json"], role: chat}
  glaive: {reader: sharegpt, paths: ["DATA/llamafactory/glaive_toolcall_en_demo.json"], role: chat}
  toolbench: {reader: toolbench, paths: ["DATA/toolbench/answer/*/*.json"]}
outputs:
  two_plans:   # per-trajectory steps, a planned filter, more per-trajectory steps, a planned balance
    from: [fireact, fireact]
    steps:
      - {type: split, end: 0.8}
      - {type: filter, dedup: exact}
      - {type: align, cot: true}
      - {type: capabilities}
      - {type: balance, ratios: paper}
  react:
    from: [fireact]
    steps:
      - {type: react, style: random}
  dedup_first: # a planned step first: its phase only takes summaries, the next reads the sources again
    from: [alpaca, glaive, alpaca]
    steps:
      - {type: filter, dedup: exact}
      - {type: capabilities}
  near:        # a step that cannot be planned first: one process from the start
    from: [alpaca, glaive]
    steps:
      - {type: filter, dedup: near}
      - {type: capabilities}
  sampled:     # per-trajectory steps on shards, then a sample in one process
    from: [toolbench, fireact]
    steps:
      - {type: instruct}
      - {type: sample, n: 200}
mix: {name: train, chat_ratio: 0.5}
write: [native, agentflan, openai]
"""


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".state" not in p.parts and p.suffix != ".png"}


def _build(shared_data: Path, tmp: Path, out: Path, workers: int, executor: str = "local") -> None:
    path = tmp / "phases.yaml"
    path.write_text(RECIPE.replace("DATA", str(shared_data)))
    recipe, resolved = load_recipe(str(path), [f"executor={executor}"])
    build(recipe, resolved, out, workers=workers)


@pytest.fixture(scope="module")
def one_worker(shared_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    _build(shared_data, tmp, tmp / "out", 1)
    return tmp / "out"


def test_phases_on_many_small_shards_write_the_same_bytes(shared_data, one_worker, tmp_path, monkeypatch):
    monkeypatch.setattr(build_mod, "SHARD_BYTES", 8 * 1024)  # dozens of shards per output and phase
    out = tmp_path / "out"
    (out / ".parts" / "two_plans").mkdir(parents=True)  # left by a killed build: removed
    (out / ".parts" / "two_plans" / "p0.00003.jsonl").write_text('{"partial": ')
    _build(shared_data, tmp_path, out, 2)
    assert _files(out) == _files(one_worker)
    assert not (out / ".parts").exists()
    steps = json.loads((one_worker / "native" / "two_plans.steps.json").read_text())["steps"]
    counts = {s["step"]: s["counts"] for s in steps}
    assert counts["filter"]["dropped:duplicate"] > 300  # each record twice, copies in other shards
    assert counts["balance"]["turns_after:retrieval"] < counts["balance"]["turns_before:retrieval"]
    assert json.loads((one_worker / "native" / "sampled.steps.json").read_text())["records"] == 200
    dedup = json.loads((one_worker / "native" / "dedup_first.steps.json").read_text())["steps"][0]["counts"]
    assert dedup["dropped:duplicate"] >= 1000


@pytest.mark.slow
def test_ray_tasks_on_many_small_shards_write_the_same_bytes(shared_data, one_worker, tmp_path, monkeypatch):
    """Ray workers read and write their shard files themselves (a local instance here)."""
    pytest.importorskip("ray", reason="pip install 'agentflan[ray]'")
    monkeypatch.setattr(build_mod, "SHARD_BYTES", 8 * 1024)  # the plan is made here, in the driver
    _build(shared_data, tmp_path, tmp_path / "out", 2, "ray")
    ours, ref = _files(tmp_path / "out"), _files(one_worker)
    assert ours.pop("resolved_recipe.yaml") != ref.pop("resolved_recipe.yaml")  # says executor: ray
    assert ours == ref


def test_shards_cover_files_in_whole_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(build_mod, "SHARD_BYTES", 10)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(f'{{"n": {i}}}\n' for i in range(50)))
    b.write_text("")
    shards = plan_shards([a, b], 7)
    assert len(shards) == 7 and {s.path for s in shards} == {str(a)}
    assert "".join(a.read_text()[s.start:s.end] for s in shards) == a.read_text()
    assert all(a.read_text()[s.end - 1] == "\n" for s in shards)
    lines = [line for s in shards for line in build_mod._shard_lines(s)]
    assert lines == a.read_bytes().splitlines(keepends=True)


def test_jsonl_spans_read_what_the_whole_file_reads(tmp_path, monkeypatch):
    """Every line kind (BOM, blank, CRLF, malformed, oversized, no final newline) gets the same line
    number, record index and value read in spans of any size as read whole."""
    from agentflan.io import files as files_mod

    monkeypatch.setattr(files_mod, "MAX_RECORD_BYTES", 200)
    good = b'{"a": 1}'
    lines = [b"\xef\xbb\xbf" + good + b"\r\n", b"\n", b"   \t\r\n", good + b"\n", b'{"bad": \n',
             b'{"x": "' + b"y" * 500 + b'"}\n', b"\n", good + b"\n", b"\xff\xfe\n", good]
    path = tmp_path / "h.jsonl"
    path.write_bytes(b"".join(lines))
    whole = list(files_mod.iter_records(str(path)))
    assert [r.line for r in whole] == [1, 4, 5, 6, 8, 9, 10] and [r.index for r in whole] == list(range(7))
    for size in (1, 7, 30, 250, 10_000):
        spans = files_mod.jsonl_spans(str(path), size)
        assert spans[0].start == 0 and spans[-1].end == path.stat().st_size
        assert all(a.end == b.start for a, b in pairwise(spans))
        assert [r for sp in spans for r in files_mod.iter_records(str(path), sp)] == whole, size
    assert files_mod.jsonl_spans(str(tmp_path / "h.jsonl"), 10_000) == [files_mod.Span(0, path.stat().st_size, 0, 0)]


def test_a_large_jsonl_source_is_ingested_in_spans_to_the_same_bytes(shared_data, one_worker, tmp_path,
                                                                      monkeypatch):
    """FireAct's file read by several workers, each a span of its lines: the same ids, line numbers,
    reports and files as one reader of the whole file."""
    monkeypatch.setattr(build_mod, "SHARD_BYTES", 16 * 1024)
    tasks = []
    real = build_mod._ingest_tasks

    def spy(*args):
        made = real(*args)
        tasks.extend(made)
        return made

    monkeypatch.setattr(build_mod, "_ingest_tasks", spy)
    _build(shared_data, tmp_path, tmp_path / "out", 2)
    spans = [t.span for t in tasks if t.span is not None]
    assert len(spans) >= 8 and {t.files for t in tasks if t.span is not None} == {
        (str(shared_data / "fireact" / "hotpotqa_react.jsonl"),)}
    assert _files(tmp_path / "out") == _files(one_worker)


def _square(x: int) -> int:
    return x * x


def test_local_executor_keeps_task_order():
    with LocalExecutor(2) as ex:
        later = ex.submit(_square, 7)  # runs beside the map's tasks
        assert ex.map(_square, list(range(20))) == [x * x for x in range(20)]
        assert later() == 49
    assert LocalExecutor(1).map(_square, [3]) == [9]
    calls = []
    lazy = LocalExecutor(1).submit(lambda x: calls.append(x) or x, 5)  # in this process: when asked
    assert calls == [] and lazy() == 5 and lazy() == 5 and calls == [5]
    with pytest.raises(ConfigError):
        LocalExecutor(0)
