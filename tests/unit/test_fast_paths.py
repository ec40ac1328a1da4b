"""The fast paths give exactly what the straightforward paths give: serialization, JSON decoding,
statistics merged from shards, and two-pass steps planned on shards."""

from __future__ import annotations

import json
import os
import random
from datetime import date

import pytest

import agentflan.io.files as files
from agentflan.io import read
from agentflan.io.files import one_line
from agentflan.io.writers.base import dumps
from agentflan.pipeline.base import StepContext, make_steps
from agentflan.schema import AssistantMessage, Source, ToolCall, ToolSpec, Trajectory, UserMessage
from agentflan.schema.trajectory import json_dict_checked
from agentflan.stats import StatsAccumulator, compute_stats

SOURCES = [("toolbench/answer/*/*.json", "toolbench"), ("fireact/hotpotqa_react.jsonl", "react"),
           ("llamafactory/glaive_toolcall_en_demo.json", "sharegpt"),
           ("llamafactory/reason_tool_use_demo_50.jsonl", "openai"),
           ("llamafactory/alpaca_en_demo.json", "alpaca"), ("agentbench/dbbench/dev.jsonl", "dbbench")]


@pytest.fixture(scope="module")
def samples(sample_data):
    return [t for rel, fmt in SOURCES for t in read(str(sample_data / rel), fmt)]


def test_to_json_dict_equals_pydantic_on_every_sample(samples):
    for t in samples:
        fast = t.to_json_dict()
        assert json.dumps(fast) == json.dumps(t._model_json_dict()), t.id
        assert json_dict_checked(t) == (fast, True)


def _traj(**kw):
    return Trajectory(id="x", source=Source(format="f"), messages=[
        UserMessage(content="q"), AssistantMessage(content="", tool_calls=[ToolCall(id="c", name="f", arguments={"a": 1})],
                                                   loss=False, capability="reasoning", metadata=kw.pop("meta", {}))],
        **kw)


@pytest.mark.parametrize("case", [
    {},  # defaults everywhere: left out
    {"tools": [ToolSpec(name="f")]},  # default parameters: left out
    {"tools": [ToolSpec(name="f", parameters={"type": "object"}, metadata={"x": [1, None]})], "tags": {"k": "v"}},
    {"metadata": {"n": 1.5, "deep": {"list": [True, "é"]}}, "lineage": ["read:x"]},
])
def test_to_json_dict_fast_path_on_plain_data(case):
    t = _traj(**case)
    d, exact = json_dict_checked(t)
    assert exact and json.dumps(d) == json.dumps(t._model_json_dict())
    assert Trajectory.model_validate(d) == t


@pytest.mark.parametrize("meta", [{"t": (1, 2)}, {"d": date(2024, 1, 2)}, {"inf": float("inf")}, {"k": {1: "int key"}}])
def test_values_json_mode_converts_take_pydantics_path(meta):
    t = _traj(meta=meta)
    d, exact = json_dict_checked(t)
    assert not exact
    assert d == t._model_json_dict() == t.to_json_dict()


def test_one_encoder_writes_what_json_dumps_writes():
    for v in [{"a": [1, 2.5, None, True, "é\n\"\u2028", {"b": float("nan")}]}, [], "x", 3, {1: 2}, ({"t": (1,)})]:
        assert dumps(v) == one_line(json.dumps(v, ensure_ascii=False, separators=(", ", ": ")))
    with pytest.raises(TypeError):
        dumps({"a": {1, 2}})


def _json_data(rng, depth=0):
    """Random JSON data: every kind of value, strings with escapes, line separators, astral and
    non-ASCII characters, text that looks like numbers, and floats of every magnitude."""
    def text():
        return "".join(rng.choice(['"', "\\", "\n", "\x00", "\x1f", "\x7f", "\u2028", "\u2029", "\x85", "é", "中",
                                   "\U0001F600", "a", ",", ":", " ", "e-5", "0.0000", "1e-7,\n", "{", "]"])
                       for _ in range(rng.randint(0, 12)))

    r = rng.random()
    if depth > 3 or r < 0.5:
        kind = rng.randrange(6)
        if kind == 0:
            return text()
        if kind == 1:
            return rng.choice([0, -1, 7, 2**63, -(2**80), True, False, None])
        if kind == 2:  # any magnitude, the small ones pydantic-core writes otherwise than Python included
            return rng.choice([-1, 1]) * rng.random() * 10.0 ** rng.randint(-320, 308)
        if kind == 3:
            return rng.choice([1e-5, 5e-5, 1e-7, 2.5e-9, 1e-10, 1e16, 1e15, 0.1, -0.0, 5e-324, float("nan"),
                               float("inf")])
        return rng.choice([[], {}, ""])
    if r < 0.75:
        return [_json_data(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {text() if rng.random() < 0.3 else f"k{i}": _json_data(rng, depth + 1) for i in range(rng.randint(0, 4))}


def test_the_data_encoder_writes_what_dumps_writes():
    """pydantic-core's engine (`dumps_data`, `encode_data`) writes every byte as `dumps` does:
    escapes, line separators, floats of every magnitude (those it writes otherwise are left to
    `dumps`), values it refuses (lone surrogates) and anything that is not a dict or a list."""
    from agentflan.io.writers.base import _engine, dumps_data, encode_data

    assert _engine()._to_json is not None  # the check at first use kept it: this pydantic-core writes as Python
    rng = random.Random(5)
    engine_wrote = 0
    for _ in range(3000):
        rec = _json_data(rng)
        text = dumps(rec)
        assert dumps_data(rec) == text, rec
        assert encode_data(rec) == text.encode("utf-8"), rec
        engine_wrote += _engine().utf8(rec) is not None
    assert engine_wrote > 1000  # most records took the fast engine, not the fallback
    for rec in [{"a": "\ud800"}, "x", 3, 1e-7, None]:  # refused, or not a record: `dumps`
        assert dumps_data(rec) == dumps(rec)
    with pytest.raises(UnicodeEncodeError):
        encode_data({"a": "\ud800"})
    assert dumps_data({"f": 5e-05, "g": [1e-07]}) == '{"f": 5e-05, "g": [1e-07]}'  # Python's forms, not 0.00005


def _has_float(v):
    if isinstance(v, float):
        return True
    return any(_has_float(x) for x in (v.values() if isinstance(v, dict) else v if isinstance(v, list) else []))


def test_the_data_encoder_without_floats_is_used_only_without_floats():
    from agentflan.io.writers.base import _engine, encode_data

    rng = random.Random(6)
    for _ in range(1000):
        rec = _json_data(rng)
        if _has_float(rec):
            continue  # what floats=False skips is the look for them
        assert encode_data(rec, floats=False) == dumps(rec).encode("utf-8")
    assert _engine().utf8({"f": 1e-07}, floats=False) != dumps({"f": 1e-07}).encode()  # why the check exists


def test_a_pydantic_core_that_writes_otherwise_is_not_used(monkeypatch):
    import pydantic_core

    from agentflan.io.writers import base

    real = pydantic_core.to_json
    monkeypatch.setattr(pydantic_core, "to_json", lambda v, **kw: real(v, **kw).replace(b"1e+16", b"1e16"))
    assert base._DataEncoder()._to_json is None  # a release that writes 1e16 for Python's 1e+16
    monkeypatch.setattr(pydantic_core, "to_json", lambda v, **kw: real(v, **kw).replace(b"e-7", b"E-7"))
    assert base._DataEncoder()._to_json is None  # one whose small floats the check would miss
    monkeypatch.setattr(pydantic_core, "to_json", real)
    assert base._DataEncoder()._to_json is not None


def _write_cases(rng):
    def value(depth=0):
        r = rng.random()
        if depth > 2 or r < 0.3:
            return rng.choice([1, -2.5, 12345678901234567890, 1e-07, "x\ny", "é\u2028", True, None, "\ud800",
                               "a\U0001F600", "\\ud800"])
        if r < 0.6:
            return [value(depth + 1) for _ in range(rng.randint(0, 3))]
        return {f"k{i}": value(depth + 1) for i in range(rng.randint(0, 3))}

    for _ in range(300):
        recs = [value() for _ in range(rng.randint(0, 5))]
        sep = rng.choice(["", " ", "\n", "\n\n  "])
        text = rng.choice([
            sep + "[" + sep + ("," + sep).join(json.dumps(v, indent=rng.choice([None, 1])) for v in recs) + "]",
            "".join(json.dumps(v) + rng.choice([" ", "\n"]) for v in recs)])
        if rng.random() < 0.3 and text:
            i = rng.randrange(len(text))
            text = text[:i] + rng.choice(["oops", "}", ","]) + text[i:]
        data = text.encode("utf-8")
        if rng.random() < 0.2 and data:  # a byte that is not UTF-8, or a character cut short
            i = rng.randrange(len(data))
            data = data[:i] + rng.choice([b"\xff", b"\xe2\x82", b"\xc3"]) + data[i:]
        yield data


def test_streamed_json_arrays_decode_like_the_whole_file(tmp_path, monkeypatch):
    """Chunks of 1 to 16 characters cut records, strings and numbers anywhere; the records, their
    lines and the malformed-record errors are those of decoding the whole file at once."""
    rng = random.Random(3)
    path = tmp_path / "a.json"
    for data in _write_cases(rng):
        path.write_bytes(data)
        monkeypatch.setattr(files, "JSON_CHUNK", 1 << 20)
        whole = [(r.line, r.index, r.value, r.error, r.reason, r.text, r.data) for r in files.iter_records(str(path))]
        monkeypatch.setattr(files, "JSON_CHUNK", rng.choice([1, 2, 3, 7, 16]))
        streamed = [(r.line, r.index, r.value, r.error, r.reason, r.text, r.data) for r in files.iter_records(str(path))]
        assert streamed == whole, data


def test_stats_merged_from_shards_equal_stats_of_the_whole(samples):
    whole = compute_stats(samples)
    total = StatsAccumulator()
    for i in range(0, len(samples), 97):
        acc = StatsAccumulator()
        for t in samples[i:i + 97]:
            acc.add(t)
        total.merge(StatsAccumulator.from_state(json.loads(json.dumps(acc.to_state()))))
    assert json.dumps(total.result()) == json.dumps(whole)


def _planned(step, data, n_shards, seed=17):
    """The executor's protocol, in one process: summaries per shard, one plan, applied per shard."""
    size = -(-len(data) // n_shards)
    shards = [data[i:i + size] for i in range(0, len(data), size)]
    ctx = StepContext(seed=seed)
    summaries = [step.pack_summaries([step.summary(t, ctx) for t in shard]) for shard in shards]
    plans = step.plan(summaries, ctx)
    out = []
    for shard, plan in zip(shards, plans, strict=True):
        # the executor re-reads a shard from its file: the step may change what it applies the plan to
        out += step.apply_planned((t.model_copy(deep=True) for t in shard), plan, ctx)
    return out, ctx.stats.to_dict()


@pytest.mark.parametrize("entry", [{"type": "balance", "ratios": "paper"}, {"type": "filter", "dedup": "exact"},
                                   {"type": "filter", "dedup": "none", "min_trained_turns": 2}])
def test_planned_steps_equal_their_sequential_run(samples, entry):
    labelled = list(make_steps([{"type": "capabilities"}])[0].run(samples[::3], StepContext(seed=17)))
    data = labelled + labelled[:100]  # duplicates, in other shards than their first copy
    (step,) = make_steps([entry])
    assert step.plannable()
    ctx = StepContext(seed=17)
    ref = [t.to_json_dict() for t in step.run([t.model_copy(deep=True) for t in data], ctx)]
    for n in (1, 5):
        out, counts = _planned(step, data, n)
        assert [t.to_json_dict() for t in out] == ref
        assert counts == ctx.stats.to_dict()


def test_near_dedup_and_sample_are_not_planned():
    assert not make_steps([{"type": "filter", "dedup": "near"}])[0].plannable()
    assert not make_steps([{"type": "sample", "n": 3}])[0].plannable()
    assert not make_steps([{"type": "balance", "mode": "sample", "sample_rate": 0.5}])[0].plannable()


def test_distributions_from_counts_equal_the_statistics_module():
    import statistics
    from collections import Counter

    from agentflan.stats import _dist

    rng = random.Random(5)
    for n in [0, 1, 2, 3, 10, 101]:
        values = [rng.choice([0, 1, 7, 7, 40, 1000]) for _ in range(n)]
        s = sorted(values)
        expected = ({"min": s[0], "mean": round(statistics.fmean(s), 2), "median": float(statistics.median(s)),
                     "p90": s[min(n - 1, int(0.9 * n))], "max": s[-1]} if s else
                    {"min": 0, "mean": 0.0, "median": 0.0, "p90": 0, "max": 0})
        assert _dist(Counter(values)) == expected


@pytest.mark.parametrize(("rel", "fmt", "to", "suffix"), [
    ("fireact/hotpotqa_react.jsonl", "react", "native", ".jsonl"),
    ("fireact/hotpotqa_react.jsonl", "react", "openai", ".json.zst"),
    ("llamafactory/glaive_toolcall_en_demo.json", "sharegpt", "agentflan", ".json.gz"),
    ("toolbench/answer", "toolbench", "sharegpt", ".json"),  # quarantined, dropped and lossy records
])
def test_parallel_convert_writes_what_one_process_writes(sample_data, tmp_path, monkeypatch, rel, fmt, to, suffix):
    """Byte for byte, whether the batches are copied whole (bytes) or record by record (a progress
    bar counts them), into plain, array and compressed files."""
    import agentflan.io.parallel as parallel
    from agentflan.io import convert

    monkeypatch.setattr(parallel, "BATCH", 7)
    monkeypatch.setattr(parallel, "SPAN_BYTES", 4096)  # a JSONL file in many spans, each read by a worker
    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 0)  # these samples are small: workers anyway
    seen: list[str] = []

    def progress(stream):
        for text in stream:
            seen.append(text)
            yield text

    results = []
    for workers, bar in ((1, None), (3, None), (3, progress)):
        out = tmp_path / f"w{workers}{bar is not None}{suffix}"
        r = convert(str(sample_data / rel), out, fmt=fmt, to=to, workers=workers, progress=bar,
                    quarantine=tmp_path / f"q{workers}.jsonl")
        q = tmp_path / f"q{workers}.jsonl"
        results.append((out.read_bytes(), json.dumps({**r.to_dict(), "quarantine": None}),
                        q.read_bytes() if q.exists() else None))
    assert results[0] == results[1] == results[2]
    assert len(seen) == r.write.written > 0 and all(json.loads(t) for t in seen)  # one record an item
    assert list(tmp_path.glob(".*.parts-*")) == []  # the workers' batch files are removed


def test_parallel_convert_stops_where_one_process_stops(tmp_path, monkeypatch):
    import agentflan.io.parallel as parallel
    from agentflan.errors import ParseError
    from agentflan.io import convert

    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(parallel, "SPAN_BYTES", 4096)

    good = json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([good] * 600 + ['{"messages": 3}'] + [good] * 50) + "\n")
    for workers in (1, 2):
        with pytest.raises(ParseError, match=r"in.jsonl:601 field messages"):
            convert(str(src), tmp_path / f"o{workers}.jsonl", fmt="react", on_error="raise", workers=workers)
        assert list(tmp_path.glob("o*")) == list(tmp_path.glob(".partial-*")) == []  # no partial output
        assert list(tmp_path.glob(".*.parts-*")) == []  # nor the workers' batch files
    r = convert(str(src), tmp_path / "lim.jsonl", fmt="react", reader_options={"limit": 300}, workers=2)
    assert r.read.records == 300 and r.write.written == 300


def test_a_bad_record_stops_the_workers_soon_after_it(tmp_path, monkeypatch):
    """`on_error="raise"`: few batches are converted after the bad one, and the pool is closed, not
    terminated while it still feeds tasks (which could hang)."""
    import agentflan.io.parallel as parallel
    from agentflan.errors import ParseError
    from agentflan.io import convert

    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(parallel, "SPAN_BYTES", 4096)
    log = tmp_path / "batches.log"
    real = parallel._convert_batch

    def logged(rows, part):  # runs in the forked workers: each appends a line
        with open(log, "a") as f:
            f.write(f"{os.path.basename(part)}\n")
        return real(rows, part)

    monkeypatch.setattr(parallel, "_convert_batch", logged)
    good = json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join([good] * 10 + ['{"messages": 3}'] + [good] * 20_000) + "\n")
    spans = len(parallel.jsonl_spans(str(src), parallel.SPAN_BYTES))
    with pytest.raises(ParseError, match=r"in.jsonl:11 field messages"):
        convert(str(src), tmp_path / "o.jsonl", fmt="react", on_error="raise", workers=2)
    done = log.read_text().split()
    assert len(done) <= 1 + parallel.AHEAD * 2 < spans  # the bad batch is the first
    assert list(tmp_path.glob(".*.parts-*")) == [] and not (tmp_path / "o.jsonl").exists()


def test_workers_convert_only_inputs_large_enough_to_gain(tmp_path, monkeypatch):
    """Starting workers costs more than they save on a small input: it is converted in this process."""
    import agentflan.io as io_mod
    import agentflan.io.parallel as parallel

    used = []
    real = io_mod.convert_parallel
    monkeypatch.setattr(io_mod, "convert_parallel", lambda *a, **k: (used.append(a[2]), real(*a, **k)))
    good = json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})
    for name, n in (("small", 10), ("large", 15_000)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.jsonl").write_text("\n".join([good] * n) + "\n")
        (tmp_path / name / "b.jsonl").write_text("\n".join([good] * n) + "\n")
    assert (tmp_path / "large" / "a.jsonl").stat().st_size < parallel.PARALLEL_MIN_BYTES  # the sum counts
    for name in ("small", "large"):
        r = io_mod.convert(str(tmp_path / name), tmp_path / f"{name}.jsonl", fmt="react", workers=2)
        assert r.write.written == r.read.records
    assert used == [str(tmp_path / "large")]


def test_native_writer_reuses_tool_json_only_while_the_spec_is_unchanged(samples):
    from agentflan.io.writers.native import NativeWriter

    w = NativeWriter()
    for t in samples:  # FireAct's trajectories share their ToolSpec objects: encoded once
        assert w.encode(t) == dumps(t.to_json_dict()), t.id
    shared = ToolSpec(name="search", parameters={"type": "object", "properties": {"q": {"type": "string"}}})
    trajs = [_traj(tools=[shared]) for _ in range(3)]
    for t in trajs:
        assert w.encode(t) == dumps(t.to_json_dict())
    shared.parameters["properties"]["q"]["type"] = "integer"  # changed in place after it was cached
    shared.description = "now described"
    assert '"integer"' in w.encode(trajs[0]) and w.encode(trajs[0]) == dumps(trajs[0].to_json_dict())
    odd = _traj(tools=[ToolSpec(name="f", metadata={"t": (1, 2)})])  # JSON mode converts: pydantic's path
    assert w.encode(odd) == dumps(odd.to_json_dict())
