"""Files, compression, URLs (fsspec), detection, writers, determinism."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import pytest

from agentflan.errors import ConfigError
from agentflan.io import WRITERS, convert, detect, read
from agentflan.io.files import iter_records
from agentflan.samples import SAMPLE_FILES, episodes, write_samples
from tests.helpers import read_jsonl, write_jsonl


@pytest.fixture
def samples(tmp_path):
    return write_samples(tmp_path / "raw")


def test_builtin_samples_read_back_in_every_format(samples):
    for name, path in samples.items():
        fmt = SAMPLE_FILES[name][1]
        assert detect(str(path)) == fmt, name
        trajs = list(read(str(path), fmt, on_error="raise"))
        assert trajs, name


def test_json_array_records_carry_line_numbers(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('[\n  {"a": 1},\n\n  {"b": [\n 2]},\n  {"c": 3}\n]')
    assert [(r.line, r.value) for r in iter_records(str(p))] == [(2, {"a": 1}), (4, {"b": [2]}), (6, {"c": 3})]


def test_concatenated_json_objects(tmp_path):
    p = tmp_path / "a.json"
    p.write_text('{"a": 1}\n{"a": 2}\n')
    assert [r.value for r in iter_records(str(p))] == [{"a": 1}, {"a": 2}]


@pytest.mark.parametrize("suffix", [".jsonl.gz", ".jsonl.zst", ".json.gz"])
def test_compressed_outputs_read_back(samples, tmp_path, suffix):
    out = tmp_path / f"o{suffix}"
    r = convert(str(samples["openai_tools.jsonl"]), out, fmt="openai", to="native", on_error="raise")
    assert r.write.written == 4
    assert len(list(read(str(out), "native", on_error="raise"))) == 4


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".jsonl.gz", ".json.gz", ".jsonl.zst", ".json.zst"])
def test_every_layout_holds_the_records_as_dumps_writes_them(samples, tmp_path, suffix):
    """Records reach a plain file as bytes and a compressed one as text: the text is `dumps`'s in
    every layout, and a compressed file's bytes are those of that text written through one
    compressing text stream (as every earlier release wrote them)."""
    import io

    import zstandard

    from agentflan.io.writers.base import dumps

    src = str(samples["react.jsonl"])
    trajs = list(read(src, "react", on_error="raise")) * 3
    lines = [dumps(t.to_json_dict()) for t in trajs]
    expected = "[\n" + ",\n".join(lines) + "\n]\n" if ".json." in suffix + "." else "".join(f"{x}\n" for x in lines)
    out = tmp_path / f"o{suffix}"
    WRITERS.get("native")().write(trajs, out)
    ref = io.BytesIO()
    if suffix.endswith(".gz"):
        stream = io.TextIOWrapper(gzip.GzipFile(filename="", mode="wb", fileobj=ref, mtime=0), encoding="utf-8")
    elif suffix.endswith(".zst"):
        stream = io.TextIOWrapper(zstandard.ZstdCompressor().stream_writer(ref, closefd=False), encoding="utf-8")
    else:
        stream = io.TextIOWrapper(ref, encoding="utf-8")
    if expected.startswith("["):
        stream.write("[")
        for i, x in enumerate(lines):
            stream.write(("\n" if i == 0 else ",\n") + x)
        stream.write("\n]\n")
    else:
        for x in lines:
            stream.write(x + "\n")
    stream.flush()
    if not suffix.endswith((".jsonl", ".json")):
        stream.close()
    assert out.read_bytes() == ref.getvalue()
    if suffix.endswith(".gz"):
        assert gzip.decompress(out.read_bytes()).decode() == expected
    elif suffix.endswith(".zst"):
        assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(out.read_bytes())).read().decode() == expected
    else:
        assert out.read_text() == expected


def test_gzip_input_and_glob_and_directory(samples, tmp_path):
    src = samples["react.jsonl"]
    gz = tmp_path / "in" / "r.jsonl.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(src.read_bytes()))
    assert len(list(read(str(gz), "react", on_error="raise"))) == 1
    assert len(list(read(str(tmp_path / "in"), "react", on_error="raise"))) == 1
    assert len(list(read(str(tmp_path / "in" / "*.gz"), "react", on_error="raise"))) == 1


def test_no_match_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no input files match"):
        list(read(str(tmp_path / "nothing*.jsonl"), "react"))


def test_fsspec_url_inputs(samples):
    """hf://datasets/... goes through the same fsspec code path; memory:// stands in offline."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/datasets/org/agent/train/part-0.jsonl", samples["react.jsonl"].read_bytes())
    fs.pipe("/datasets/org/agent/train/part-1.jsonl", samples["react.jsonl"].read_bytes())
    fs.pipe("/datasets/org/agent/README.md", b"# card")
    assert detect("memory://datasets/org/agent/train/*.jsonl") == "react"
    assert len(list(read("memory://datasets/org/agent", "react", on_error="raise"))) == 2
    assert len(list(read("memory://datasets/org/agent/train/part-1.jsonl", "react", on_error="raise"))) == 1


def test_hf_url_offline_or_without_huggingface_hub_is_a_clear_error(monkeypatch):
    """The real hub path: with huggingface_hub, offline listing fails with the URL named; without it,
    the error says which extra to install. Either way nothing is downloaded."""
    import importlib.util

    from agentflan.errors import AgentflanError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    url = "hf://datasets/internlm/Agent-FLAN/data/*.jsonl"
    expected = "agentflan\\[hf\\]" if importlib.util.find_spec("huggingface_hub") is None else "cannot list"
    with pytest.raises(AgentflanError, match=expected):
        list(read(url, "agentflan"))


@pytest.mark.parametrize("to", ["native", "openai", "sharegpt", "agentflan", "toolbench", "parquet"])
def test_writers_are_deterministic(samples, tmp_path, to):
    suffix = ".parquet" if to == "parquet" else ".jsonl"
    a, b = tmp_path / f"a{suffix}", tmp_path / f"b{suffix}"
    src = str(samples["openai_tools.jsonl"])
    convert(src, a, fmt="openai", to=to, on_error="raise")
    convert(src, b, fmt="openai", to=to, on_error="raise")
    assert a.read_bytes() == b.read_bytes()


def test_parquet_is_lossless_and_typed(samples, tmp_path):
    import pyarrow.parquet as pq

    src = str(samples["sharegpt_tools.json"])
    convert(src, tmp_path / "n.jsonl", fmt="sharegpt", to="native", on_error="raise")
    convert(str(tmp_path / "n.jsonl"), tmp_path / "n.parquet", fmt="native", to="parquet", on_error="raise")
    assert detect(str(tmp_path / "n.parquet")) == "native"
    assert list(read(str(tmp_path / "n.parquet"), "native", on_error="raise")) == list(
        read(str(tmp_path / "n.jsonl"), "native", on_error="raise"))
    table = pq.read_table(tmp_path / "n.parquet")
    assert str(table.schema.field("messages").type).startswith("list<element: struct<role: string")
    call = next(c for row in table.column("messages").to_pylist() for m in row for c in (m["tool_calls"] or []))
    assert isinstance(call["arguments"], str) and json.loads(call["arguments"])  # arguments as JSON strings


def test_openai_writer_output(samples, tmp_path):
    convert(str(samples["toolllama.json"]), tmp_path / "o.jsonl", fmt="toolbench", to="openai", on_error="raise")
    rec = read_jsonl(tmp_path / "o.jsonl")[0]
    assert rec["tools"][0]["type"] == "function"
    a = rec["messages"][2]
    assert a["tool_calls"][0]["function"]["name"] == "convert_units"
    assert json.loads(a["tool_calls"][0]["function"]["arguments"]) == {"value": 26.2, "from_unit": "mile", "to_unit": "km"}
    assert a["weight"] == 1
    assert rec["messages"][3] == {"role": "tool", "content": '{"value": 42.1648, "unit": "km"}',
                                  "tool_call_id": "call_0", "name": "convert_units"}


def test_agentflan_release_writer_and_reader(samples, tmp_path):
    convert(str(samples["openai_tools.jsonl"]), tmp_path / "r.jsonl", fmt="openai", to="agentflan", on_error="raise")
    recs = read_jsonl(tmp_path / "r.jsonl")
    assert all(set(r) == {"id", "conversation"} for r in recs)
    assert all(set(m) == {"role", "content", "loss"} for r in recs for m in r["conversation"])
    assert {m["role"] for r in recs for m in r["conversation"]} == {"system", "user", "assistant"}
    step = recs[0]["conversation"][2]["content"]
    assert step.startswith("Thought: I should convert") and "\nAction: convert_units\nAction Input: {" in step
    # the release's inconsistencies: missing loss, extra nested keys
    p = write_jsonl(tmp_path / "release.jsonl", [{"id": "x", "conversation": [
        {"role": "user", "content": "q", "type": "text"}, {"role": "assistant", "content": "a"}]}])
    (t,) = read(str(p), on_error="raise")
    assert t.messages[0].metadata == {"type": "text"} and t.messages[1].loss is True


def test_sharegpt_writer_counts_what_llamafactory_cannot_hold(samples, tmp_path):
    r = convert(str(samples["toolllama.json"]), tmp_path / "s.json", fmt="toolbench", to="sharegpt", on_error="raise")
    assert r.write.lossy["thought_before_call"] == 5
    info = r.dataset_info
    assert info is not None and info["s"]["formatting"] == "sharegpt" and info["s"]["columns"]["tools"] == "tools"
    assert "tools" not in WRITERS.get("sharegpt")().dataset_info(tmp_path / "s.json")["s"]["columns"]  # nothing written


def test_alpaca_writer_refuses_tool_trajectories_with_a_count(samples, tmp_path):
    r = convert(str(samples["openai_tools.jsonl"]), tmp_path / "a.json", fmt="openai", to="alpaca", on_error="raise")
    assert r.write.written == 2
    assert dict(r.write.unwritable) == {"not_user_assistant_pairs": 2}
    assert dict(r.write.lossy) == {"tools_offered": 1}  # the "no tool fits" sample loses its tool list


def test_writer_rejects_wrong_suffix(samples, tmp_path):
    with pytest.raises(ConfigError, match="parquet"):
        convert(str(samples["react.jsonl"]), tmp_path / "x.jsonl", fmt="react", to="parquet")


def test_episodes_are_valid():
    from agentflan.schema import check, errors

    for t in episodes():
        assert errors(check(t)) == [], t.id


def test_import_is_light():
    code = ("import sys, agentflan, agentflan.io, agentflan.stats, agentflan.cli.main; "
            "bad = [m for m in ('torch', 'transformers', 'trl', 'pyarrow', 'datasets') if m in sys.modules]; "
            "print(bad); sys.exit(bool(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
