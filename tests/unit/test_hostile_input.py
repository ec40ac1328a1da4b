"""Hostile input: each kind is read correctly or quarantined with its reason; none stops a run.

Every test puts the hostile record between good ones and checks that the good ones are converted,
the accounting balances, and the quarantine file (itself valid UTF-8 JSON lines) holds the record.
"""

from __future__ import annotations

import base64
import gzip
import json

import pytest

from agentflan.io import convert, read
from agentflan.io import files as files_mod
from agentflan.io.writers import WRITERS
from agentflan.samples import episodes
from agentflan.schema import AssistantMessage, Trajectory, UserMessage
from tests.helpers import read_jsonl

GOOD = json.dumps({"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]})
DEEP = "[" * 100_000 + "]" * 100_000

# (hostile line as bytes, reason it is quarantined with)
QUARANTINED = {
    "deep_json": (DEEP.encode(), "too_deep"),
    "nested_150_native": (('{"id": "n", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
                           '"content": "a", "metadata": {"m": ' + "[" * 150 + "]" * 150 + '}}], '
                           '"source": {"format": "native"}}').encode(), None),
    "nested_600_native": (('{"id": "n", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
                           '"content": "a", "metadata": {"m": ' + "[" * 600 + "]" * 600 + '}}], '
                           '"source": {"format": "native"}}').encode(), "too_deep"),
    "lone_surrogate": (b'{"messages": [{"role": "user", "content": "\\ud800"}, '
                       b'{"role": "assistant", "content": "a"}]}', "lone_surrogate"),
    "low_surrogate_in_key": (b'{"messages": [{"role": "user", "content": "q", "\\uDC00": 1}, '
                             b'{"role": "assistant", "content": "a"}]}', "lone_surrogate"),
    "raw_nul_byte": (b'{"messages": [{"role": "user", "content": "a\x00b"}]}', "nul_byte"),
    "invalid_utf8": (b'{"messages": [{"role": "user", "content": "caf\xe9"}, '
                     b'{"role": "assistant", "content": "a"}]}', "invalid_utf8"),
    "truncated_utf8": (b'{"messages": [{"role": "user", "content": "\xe2\x82"}]}', "invalid_utf8"),
    "not_json": (b"\xff\xfe\x00garbage", "invalid_utf8"),
}


def _convert_lines(tmp_path, lines: list[bytes], fmt: str = "openai", name: str = "in.jsonl"):
    src = tmp_path / name
    src.write_bytes(b"".join(line + b"\n" for line in lines))
    result = convert(str(src), tmp_path / "out.jsonl", fmt=fmt, to="native")
    assert result.read.balanced()
    q = [json.loads(line) for line in result.quarantine.read_bytes().decode("utf-8").splitlines()] \
        if result.quarantine else []
    return result, q


@pytest.mark.parametrize("case", sorted(QUARANTINED))
def test_hostile_line_between_good_ones(tmp_path, case):
    line, reason = QUARANTINED[case]
    fmt = "native" if case.endswith("native") else "openai"
    good = GOOD.encode() if fmt == "openai" else episodes()[0].model_dump_json().encode()
    result, q = _convert_lines(tmp_path, [good, line, good], fmt)
    if reason is None:  # read correctly, and written
        assert result.read.converted == 3 and q == [] and len(read_jsonl(tmp_path / "out.jsonl")) == 3
        return
    assert (result.read.converted, result.read.quarantined) == (2, 1), result.read.rejected
    (entry,) = q
    assert entry["reason"] == reason and entry["origin"].endswith(":2")
    if reason == "invalid_utf8":
        assert base64.b64decode(entry["record_base64"]) == line  # the exact bytes, recoverable
    elif case == "nested_600_native":  # decoded, rejected by validation: the record as decoded
        assert entry["record"] == json.loads(line)
    else:  # undecodable: the line as it was, NUL bytes and surrogate escapes included
        assert entry["record"] == line.decode("utf-8")
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 2


def test_bom_crlf_escaped_nul_emoji_and_duplicate_keys_are_read(tmp_path):
    lines = [b"\xef\xbb\xbf" + GOOD.encode() + b"\r",  # BOM on the first line, CRLF endings
             GOOD.encode() + b"\r",
             b'{"messages": [{"role": "user", "content": "a\\u0000b \\ud83d\\ude00"}, '
             b'{"role": "assistant", "content": "ok"}]}',
             # duplicate keys: the last wins, as in Python, JavaScript and jq
             b'{"messages": [{"role": "user", "content": "first", "content": "last"}, '
             b'{"role": "assistant", "content": "a"}]}']
    result, q = _convert_lines(tmp_path, lines)
    assert result.read.converted == 4 and q == []
    out = [Trajectory.model_validate(r) for r in read_jsonl(tmp_path / "out.jsonl")]
    assert out[2].messages[0].content == "a\x00b \U0001F600"
    assert out[3].messages[0].content == "last"
    assert [t.source.line for t in out] == [1, 2, 3, 4]


def test_oversized_line_is_quarantined_without_being_held_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(files_mod, "MAX_RECORD_BYTES", 1000)
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * 5_000_000 + b'"}]}'
    result, q = _convert_lines(tmp_path, [GOOD.encode(), huge, GOOD.encode()])
    assert (result.read.converted, result.read.quarantined) == (2, 1)
    (entry,) = q
    assert entry["reason"] == "too_large" and str(len(huge) + 1) in entry["error"]
    assert entry["origin"].endswith(":2") and len(entry["record"]) <= 2000


def test_json_array_file_with_bad_bytes_bom_and_deep_values(tmp_path):
    path = tmp_path / "a.json"
    rec = {"instruction": "i", "input": "", "output": "o"}
    path.write_bytes(b"\xef\xbb\xbf[\n" + json.dumps(rec).encode() + b",\n"
                     + b'{"instruction": "caf\xe9", "input": "", "output": "o"},\n'
                     + b'{"instruction": "\\udfff", "input": "", "output": "o"},\n'
                     + json.dumps(rec).encode() + b"\n]\n")
    result = convert(str(path), tmp_path / "o.jsonl", fmt="alpaca", to="native")
    assert result.read.balanced() and (result.read.converted, result.read.quarantined) == (2, 2)
    q = read_jsonl(result.quarantine)
    assert [e["reason"] for e in q] == ["invalid_utf8", "lone_surrogate"]
    assert [e["origin"].rsplit(":", 1)[1] for e in q] == ["3", "4"]
    assert b"caf\xe9" in base64.b64decode(q[0]["record_base64"])
    deep = tmp_path / "deep.json"
    deep.write_text("[" + json.dumps(rec) + ", " + DEEP + "]")
    result = convert(str(deep), tmp_path / "o2.jsonl", fmt="alpaca", to="native")
    assert (result.read.converted, dict(result.read.rejected)) == (1, {"too_deep": 1})


def test_damaged_compressed_and_parquet_files_are_quarantined(tmp_path):
    pytest.importorskip("pyarrow")
    import random

    rng = random.Random(0)  # incompressible text: half the compressed file holds many whole lines
    lines = [json.dumps({"messages": [{"role": "user", "content": "".join(rng.choices("abcdefgh ", k=200))},
                                      {"role": "assistant", "content": "A."}]}) for _ in range(200)]
    data = gzip.compress("".join(line + "\n" for line in lines).encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    result = convert(str(tmp_path / "cut.jsonl.gz"), tmp_path / "o.jsonl", fmt="openai", to="native")
    assert result.read.balanced() and result.read.converted > 0
    assert dict(result.read.rejected) == {"corrupt_file": 1}
    (tmp_path / "fake.parquet").write_bytes(b"PAR1 not really")
    result = convert(str(tmp_path / "fake.parquet"), tmp_path / "o2.jsonl", fmt="native", to="native")
    assert dict(result.read.rejected) == {"corrupt_file": 1} and result.read.balanced()


def test_raise_policy_names_the_reason_for_hostile_lines(tmp_path):
    from agentflan.errors import ParseError

    src = tmp_path / "x.jsonl"
    src.write_bytes(GOOD.encode() + b"\n" + QUARANTINED["invalid_utf8"][0] + b"\n")
    with pytest.raises(ParseError) as info:
        list(read(str(src), "openai", on_error="raise"))
    assert info.value.reason == "invalid_utf8" and f"{src}:2" in str(info.value)


@pytest.mark.parametrize("to", sorted(WRITERS.names()))
def test_writers_count_text_that_is_not_unicode(tmp_path, to):
    """A trajectory built in Python with a lone surrogate cannot be UTF-8: counted, the rest written."""
    from agentflan.io.writers.base import Unwritable

    if to == "parquet":
        pytest.importorskip("pyarrow")
    writer = WRITERS.get(to)()
    chat = Trajectory.model_validate({"id": "c", "messages": [{"role": "user", "content": "Q"},
                                                              {"role": "assistant", "content": "A"}],
                                      "source": {"format": "native"}})

    def writable(t):
        try:
            writer.record(t)
        except Unwritable:
            return False
        return True

    from agentflan.samples import _os_episode

    base = next(t for t in [chat, *episodes(), _os_episode()] if writable(t))
    k = next(i for i, m in enumerate(base.messages) if isinstance(m, UserMessage))
    bad = base.model_copy(deep=True)
    bad.messages[k] = UserMessage(content=base.messages[k].content + "\ud800")
    writer = WRITERS.get(to)()
    path = tmp_path / ("o.parquet" if to == "parquet" else "o.jsonl")
    report = writer.write([base, bad, base], path)
    assert (report.written, dict(report.unwritable)) == (2, {"invalid_unicode": 1})
    if to in ("native", "parquet"):
        assert [t.id for t in read(str(path), "native", on_error="raise")] == [base.id, base.id]
    else:
        assert len(path.read_bytes().decode("utf-8").splitlines()) == 2  # valid UTF-8, two records


def test_a_failing_writer_leaves_no_file(tmp_path):
    def stream():
        yield episodes()[0]
        raise RuntimeError("the source went away")

    for to, name in (("native", "o.jsonl.gz"), ("sharegpt", "o.json")):
        with pytest.raises(RuntimeError):
            WRITERS.get(to)().write(stream(), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


# ---- bugs the fuzzer found (tests/unit/test_fuzz.py), pinned as examples ------------------------

@pytest.mark.parametrize("record", [
    {"query": "q", "api_list": True},
    {"query": "q", "api_list": [{"tool_name": "t", "api_name": "a", "api_description": True}]},
    {"query": "q", "api_list": [{"tool_name": "t", "api_name": "a", "optional_parameters": True}]},
    {"query": "q", "api_list": [{"tool_name": "t", "api_name": "a", "required_parameters": [{"name": []}]}]},
    {"query": "q", "relevant APIs": [[None, "a"]]},
    {"query": "q", "relevant APIs": [["t"]]},
    {"query": "q", "relevant APIs": 3},
])
def test_toolbench_query_wrong_types_are_parse_errors(tmp_path, record):
    _assert_parse_error(tmp_path, "toolbench_query", record)


def _assert_parse_error(tmp_path, reader, record):
    from agentflan.errors import ParseError

    src = tmp_path / "q.jsonl"
    src.write_text(json.dumps(record) + "\n")
    with pytest.raises(ParseError) as info:
        list(read(str(src), reader, on_error="raise"))
    assert info.value.reason in ("wrong_type", "bad_tools")


def test_openai_tool_calls_of_the_wrong_type_are_parse_errors(tmp_path):
    """Found by a second slow run (new random inputs): `"tool_calls": true` was a TypeError."""
    for value in (True, 3, "x"):
        _assert_parse_error(tmp_path, "openai", {"messages": [{"role": "user", "content": "q"},
                                                              {"role": "assistant", "tool_calls": value}]})


def test_line_separators_are_escaped_in_every_json_line(tmp_path):
    """U+2028/U+2029/U+0085 are legal in JSON strings, but `str.splitlines()` breaks lines there."""
    text = "a\u2028b\u2029c\x85d"
    t = Trajectory.model_validate({"id": "x", "messages": [{"role": "user", "content": text},
                                                           {"role": "assistant", "content": "ok"}],
                                   "source": {"format": "native"}})
    WRITERS.get("native")().write([t], tmp_path / "o.jsonl")
    raw = (tmp_path / "o.jsonl").read_text(encoding="utf-8")
    assert len(raw.splitlines()) == 1 and "\\u2028" in raw
    assert next(read(str(tmp_path / "o.jsonl"), "native", on_error="raise")).messages[0].content == text
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": text}, ensure_ascii=False) + "\n", encoding="utf-8")
    result = convert(str(bad), tmp_path / "o2.jsonl", fmt="openai", to="native")
    assert len(result.quarantine.read_text(encoding="utf-8").splitlines()) == 1


def test_sharegpt_parallel_results_read_back_one_per_call(tmp_path):
    t = Trajectory.model_validate({
        "id": "p", "source": {"format": "native"}, "tools": [{"name": "w"}],
        "messages": [{"role": "user", "content": "two cities"},
                     {"role": "assistant", "content": "", "tool_calls": [
                         {"id": "a", "name": "w", "arguments": {"c": "P"}}, {"id": "b", "name": "w", "arguments": {"c": "R"}}]},
                     {"role": "tool", "tool_call_id": "a", "content": "sun"},
                     {"role": "tool", "tool_call_id": "b", "content": "rain"},
                     {"role": "assistant", "content": "done"}]})
    WRITERS.get("sharegpt")().write([t], tmp_path / "s.json")
    (back,) = read(str(tmp_path / "s.json"), "sharegpt", on_error="raise")
    calls = back.messages[1].tool_calls
    assert [(m.content, m.tool_call_id) for m in back.messages[2:4]] == [("sun", calls[0].id), ("rain", calls[1].id)]


def test_agentinstruct_ids_carry_the_task_so_the_reader_finds_the_dialect(tmp_path):
    from agentflan.samples import _os_episode

    t = _os_episode().model_copy(update={"id": "12"})
    WRITERS.get("agentinstruct")().write([t], tmp_path / "a.jsonl")
    (back,) = read(str(tmp_path / "a.jsonl"), "agentinstruct", on_error="raise")
    assert back.id == "os_12" and back.tags["task"] == "os"


@pytest.mark.parametrize("to", ["react", "toolbench"])
def test_text_formats_refuse_turns_their_reader_would_misread(tmp_path, to):
    """An answer that holds an action line would be read back as an action: counted, not written."""
    base = {"id": "r", "source": {"format": "native"},
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "fine"}]}
    ok = Trajectory.model_validate(base)
    sly = Trajectory.model_validate({**base, "messages": [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "Thought: look\nAction: search[x]\nAction Input: {}"}]})
    report = WRITERS.get(to)().write([ok, sly], tmp_path / "o.jsonl")
    assert (report.written, dict(report.unwritable)) == (1, {"ambiguous_text": 1})


def test_what_an_unwritten_record_would_have_lost_is_not_counted(tmp_path):
    t = Trajectory.model_validate({
        "id": "u", "source": {"format": "native"}, "tools": [{"name": "w"}],
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "first", "loss": False},
                     {"role": "user", "content": "q2"},
                     {"role": "assistant", "content": "", "tool_calls": [{"id": "a", "name": "w"}, {"id": "b", "name": "w"}]},
                     {"role": "tool", "tool_call_id": "a", "content": "1"}, {"role": "tool", "tool_call_id": "b", "content": "2"},
                     {"role": "assistant", "content": "done"}]})
    report = WRITERS.get("toolbench")().write([t], tmp_path / "o.jsonl")
    assert (report.written, dict(report.unwritable), dict(report.lossy)) == (0, {"parallel_calls": 1}, {})


def test_agentinstruct_refuses_actions_its_dialect_cannot_say(tmp_path):
    """Found by the slow writer fuzz: a call to a tool the task's dialect has no action for."""
    from agentflan.samples import _os_episode

    ok = _os_episode()
    odd = Trajectory.model_validate({
        "id": "os_9", "source": {"format": "native"}, "tags": {"task": "os"}, "tools": [{"name": "weather"}],
        "messages": [{"role": "user", "content": "q"},
                     {"role": "assistant", "content": "", "tool_calls": [{"id": "a", "name": "weather"}]},
                     {"role": "tool", "tool_call_id": "a", "content": "sun"}, {"role": "assistant", "content": "ok"}]})
    sly = ok.model_copy(deep=True)
    sly.messages[-1] = AssistantMessage(content="Act: answer(4)")  # a plain answer that reads as an action
    report = WRITERS.get("agentinstruct")().write([ok, odd, sly], tmp_path / "a.jsonl")
    assert (report.written, dict(report.unwritable)) == (1, {"not_in_dialect": 1, "ambiguous_text": 1})
