"""The build's executor: shards and phases never change a byte, whatever the number of workers."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest

from agentflan.errors import ConfigError
from agentflan.pipeline.build import build
from agentflan.pipeline.executor import LocalExecutor
from agentflan.pipeline.recipe import load_recipe
from agentflan.pipeline.stages import files as stage_files
from agentflan.pipeline.stages import ingest as ingest_mod
from agentflan.pipeline.stages.files import plan_shards
from tests.helpers import on_fixtures

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
      - {type: sample, n: SAMPLE_N}
mix: {name: train, chat_ratio: 0.5}
write: [native, agentflan, openai]
"""


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".state" not in p.parts and p.suffix != ".png"}


def _sample_n(sample_data: Path) -> int:
    """The `sampled` output's size: fewer than its input has, on either layer."""
    return 50 if on_fixtures(sample_data) else 200


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


def _build(sample_data: Path, tmp: Path, out: Path, workers: int, executor: str = "local") -> None:
    path = tmp / "phases.yaml"
    path.write_text(RECIPE.replace("DATA", str(sample_data)).replace("SAMPLE_N", str(_sample_n(sample_data))))
    recipe, resolved = load_recipe(str(path), [f"executor={executor}"])
    build(recipe, resolved, out, workers=workers)


@pytest.fixture(scope="module")
def one_worker(sample_data, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    _build(sample_data, tmp, tmp / "out", 1)
    return tmp / "out"


def test_phases_on_many_small_shards_write_the_same_bytes(sample_data, one_worker, tmp_path, monkeypatch):
    monkeypatch.setattr(stage_files, "SHARD_BYTES", 8 * 1024)  # dozens of shards per output and phase
    out = tmp_path / "out"
    (out / ".parts" / "two_plans").mkdir(parents=True)  # left by a killed build: removed
    (out / ".parts" / "two_plans" / "p0.00003.jsonl").write_text('{"partial": ')
    _build(sample_data, tmp_path, out, 2)
    assert _files(out) == _files(one_worker)
    assert not (out / ".parts").exists()
    steps = json.loads((one_worker / "native" / "two_plans.steps.json").read_text())["steps"]
    counts = {s["step"]: s["counts"] for s in steps}
    fireact, alpaca = sample_data / "fireact/hotpotqa_react.jsonl", sample_data / "llamafactory/alpaca_en_demo.json"
    assert counts["filter"]["dropped:duplicate"] > .6 * _lines(fireact)  # each record twice, copies in other shards
    assert counts["balance"]["turns_after:retrieval"] < counts["balance"]["turns_before:retrieval"]
    assert json.loads((one_worker / "native" / "sampled.steps.json").read_text())["records"] == _sample_n(sample_data)
    dedup = json.loads((one_worker / "native" / "dedup_first.steps.json").read_text())["steps"][0]["counts"]
    assert dedup["dropped:duplicate"] >= len(json.loads(alpaca.read_text()))


@pytest.mark.slow
def test_ray_tasks_on_many_small_shards_write_the_same_bytes(sample_data, one_worker, tmp_path, monkeypatch):
    """Ray workers read and write their shard files themselves (a local instance here)."""
    pytest.importorskip("ray", reason="pip install 'agentflan[ray]'")
    monkeypatch.setattr(stage_files, "SHARD_BYTES", 8 * 1024)  # the plan is made here, in the driver
    _build(sample_data, tmp_path, tmp_path / "out", 2, "ray")
    ours, ref = _files(tmp_path / "out"), _files(one_worker)
    assert ours.pop("resolved_recipe.yaml") != ref.pop("resolved_recipe.yaml")  # says executor: ray
    assert ours == ref


def test_shards_cover_files_in_whole_lines(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_files, "SHARD_BYTES", 10)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text("".join(f'{{"n": {i}}}\n' for i in range(50)))
    b.write_text("")
    shards = plan_shards([a, b], 7)
    assert len(shards) == 7 and {s.path for s in shards} == {str(a)}
    assert "".join(a.read_text()[s.start:s.end] for s in shards) == a.read_text()
    assert all(a.read_text()[s.end - 1] == "\n" for s in shards)
    lines = [line for s in shards for line in stage_files.shard_lines(s)]
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


def test_a_large_jsonl_source_is_ingested_in_spans_to_the_same_bytes(sample_data, one_worker, tmp_path,
                                                                      monkeypatch):
    """FireAct's file read by several workers, each a span of its lines: the same ids, line numbers,
    reports and files as one reader of the whole file."""
    # several spans of the FireAct file, whatever its size
    monkeypatch.setattr(stage_files, "SHARD_BYTES", (sample_data / "fireact/hotpotqa_react.jsonl").stat().st_size // 12)
    tasks = []
    real = ingest_mod._ingest_tasks

    def spy(*args):
        made = real(*args)
        tasks.extend(made)
        return made

    monkeypatch.setattr(ingest_mod, "_ingest_tasks", spy)
    _build(sample_data, tmp_path, tmp_path / "out", 2)
    spans = [t.span for t in tasks if t.span is not None]
    assert len(spans) >= 8 and {t.files for t in tasks if t.span is not None} == {
        (str(sample_data / "fireact" / "hotpotqa_react.jsonl"),)}
    assert _files(tmp_path / "out") == _files(one_worker)


def _source_build(tmp_path: Path, name: str, lines: list[str], workers: int, on_error: str = "quarantine"):
    """A one-source recipe (OpenAI messages, one output, no mix) over a JSONL file of `lines`."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / name).write_text("\n".join(lines) + "\n")
    path = tmp_path / "one.yaml"
    path.write_text(f"kind: data\nname: one\nsources:\n  s: {{reader: openai, paths: ['{data}'], on_error: {on_error}}}\n"
                    "outputs:\n  out: {from: [s], steps: [{type: capabilities}]}\nmix: null\nreport: false\n")
    recipe, resolved = load_recipe(str(path), [])
    return build(recipe, resolved, tmp_path / f"out{workers}", workers=workers)


GOOD = json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A" * 100}]})


def test_on_error_raise_names_the_first_bad_record_whatever_span_ends_first(tmp_path, monkeypatch):
    """Spans run largest first: a later, larger span's error must not win over the first bad line."""
    from agentflan.errors import ParseError

    monkeypatch.setattr(stage_files, "SHARD_BYTES", 16 * 1024)
    lines = [GOOD] * 2000
    lines[10] = lines[1500] = '{"messages": 3}'
    long = json.dumps({"messages": [{"role": "user", "content": "Q" * 20_000}, {"role": "assistant", "content": "A"}]})
    lines[1501:1510] = [long] * 9  # the span holding the later error is the largest: it is handed out first
    for workers in (1, 2):
        with pytest.raises(ParseError, match=r"in.jsonl:11 field messages"):
            _source_build(tmp_path, "in.jsonl", lines, workers, on_error="raise")


def test_a_file_named_with_glob_characters_is_read_in_spans(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_files, "SHARD_BYTES", 16 * 1024)
    result = _source_build(tmp_path, "train[1].jsonl", [GOOD] * 2000, 2)
    report = json.loads((result.out_dir / "sources" / "s.report.json").read_text())
    assert report["records"] == report["converted"] == 2000 and report["files"] == 1


def test_source_amounts_count_the_records_as_written(tmp_path):
    """A value JSON cannot hold (Infinity in tool arguments) is written as null: the trained tokens
    the mix weighs are those of the written record, as a second read of the file gives."""
    from agentflan.pipeline.recipe import SourceConfig
    from agentflan.pipeline.report import trained_approx_tokens

    rec = {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
           "messages": [{"role": "user", "content": "Q"},
                        {"role": "assistant", "content": "", "tool_calls": [
                            {"id": "c1", "type": "function",
                             "function": {"name": "f", "arguments": '{"x": Infinity, "y": -Infinity}'}}]},
                        {"role": "tool", "tool_call_id": "c1", "content": "r"}, {"role": "assistant", "content": "ok"}]}
    src = tmp_path / "nan.jsonl"
    src.write_text(json.dumps(rec) + "\n")
    (tmp_path / "out" / "sources").mkdir(parents=True)
    cfg = SourceConfig(reader="openai", paths=[str(src)])
    res = ingest_mod._ingest(ingest_mod._IngestTask("s", cfg, str(tmp_path / "out"), (str(src),), None))
    written = list(stage_files.read_native(tmp_path / "out" / "sources" / "s.jsonl"))
    assert written[0].messages[1].tool_calls[0].arguments == {"x": None, "y": None}
    assert res["amounts"]["trained_tokens"] == sum(trained_approx_tokens(t) for t in written)


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


def test_stages_are_declared_in_an_order_their_inputs_allow(sample_data, tmp_path):
    """Each stage reads only what the stages before it write, and each unit needs only units of
    earlier stages (so the driver can fingerprint it when it comes to it)."""
    from agentflan.pipeline import build as build_mod
    from agentflan.pipeline.stages.base import BuildState

    assert [s.name for s in build_mod.STAGES] == ["ingest", "steps", "negatives", "mix", "report"]
    written = {"inputs"}
    for stage in build_mod.STAGES:
        assert set(stage.reads) <= written, stage.name
        written |= set(stage.writes)
    recipe, _ = load_recipe("agent-flan", [f"vars.data_dir={sample_data}"])
    b = BuildState(recipe, tmp_path, LocalExecutor(1), lambda s: None)
    earlier: set[str] = set()
    for stage in build_mod.STAGES:
        units = stage.units(b)
        assert units, stage.name
        for unit in units:
            assert set(stage.needs(b, unit)) <= earlier, (stage.name, unit)
        earlier |= set(units)
    assert "output.toolbench_negative" in build_mod.STAGES[2].units(b)  # negatives: a stage like the others


def test_a_build_task_carries_the_recipes_typed_step_configs(sample_data, tmp_path):
    """No JSON round trip: the task holds the recipe's own config objects, and pickles as they are."""
    import pickle

    from agentflan.pipeline.stages import steps as steps_mod

    recipe, _ = load_recipe("agent-flan", [f"vars.data_dir={sample_data}"])
    spec = recipe.step_outputs()["toolbench_tflan_60p_r10r5u7"]
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / "toolbench.jsonl").write_text("")
    task = steps_mod._single_task(recipe, "toolbench_tflan_60p_r10r5u7", spec, tmp_path, 1)
    assert task is not None
    assert all(a.config is b.config for a, b in zip(task.steps, spec.steps, strict=True))
    assert pickle.loads(pickle.dumps(task)).steps == task.steps


def test_a_declared_stage_is_run_marked_and_resumed(sample_data, tmp_path, monkeypatch):
    """Adding a stage is a `Stage` and an entry in `STAGES`: the driver fingerprints its units
    after the units they need, builds them, marks them done and skips them on a resumed build."""
    from agentflan.fingerprint import fingerprint
    from agentflan.io.files import write_atomic
    from agentflan.pipeline import build as build_mod
    from agentflan.pipeline.stages.base import Stage

    runs: list[list[str]] = []

    class CountStage(Stage):
        name = "count"
        reads = ("outputs",)
        writes = ("counts",)

        def units(self, b):
            return [f"count.{o}" for o in b.recipe.step_outputs()]

        def needs(self, b, unit):
            return [unit.replace("count.", "output.")]

        def fingerprint(self, b, unit):
            return fingerprint(b.fingerprints[unit.replace("count.", "output.")])

        def run(self, b, todo, started):
            runs.append(todo)
            for unit in todo:
                lines = (b.out / "native" / f"{unit.removeprefix('count.')}.jsonl").read_text().count("\n")
                write_atomic(b.out / f"{unit}.txt", f"{lines}\n")
                yield unit

    stages = list(build_mod.STAGES)
    monkeypatch.setattr(build_mod, "STAGES", (*stages[:2], CountStage(), *stages[2:]))
    _build(sample_data, tmp_path, tmp_path / "out", 1)
    counts = {p.name: int(p.read_text()) for p in (tmp_path / "out").glob("count.*.txt")}
    react = _lines(sample_data / "fireact/hotpotqa_react.jsonl")  # the react output: every FireAct episode
    assert counts["count.react.txt"] == react and len(counts) == 5 and len(runs) == 1
    assert (tmp_path / "out" / ".state" / "count.react.done").exists()
    result = build(*load_recipe(str(tmp_path / "phases.yaml")), tmp_path / "out")
    assert runs[1:] == [[]] and "count.react" in result.stages_skipped
