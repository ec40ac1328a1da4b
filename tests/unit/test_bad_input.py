"""Bad input: clear errors naming file, line and field; raise | skip | quarantine; full accounting."""

from __future__ import annotations

import json

import pytest

from agentflan.errors import ParseError
from agentflan.io import convert, read
from tests.helpers import read_jsonl, write_jsonl

GOOD = {"messages": [{"role": "user", "content": "Q?"},
                     {"role": "assistant", "content": "Thought: look\nAction: search[x]"},
                     {"role": "user", "content": "Observation: y"},
                     {"role": "assistant", "content": "Thought: done\nAction: finish[y]"}]}

BAD_CASES = [
    # (raw line, reason, field fragment)
    ("{not json", "malformed_json", None),
    (json.dumps({"msgs": []}), "missing_key", "messages"),
    (json.dumps({"messages": [{"role": "robot", "content": "hi"}]}), "unknown_role", "messages[0].role"),
    (json.dumps({"messages": [{"role": "user", "content": "Q"},
                              {"role": "assistant", "content": "Thought: t\nAction: search(x)"}]}),
     "unparseable_action", "messages[1].content"),
    (json.dumps({"messages": [{"role": "user", "content": "Q"},
                              {"role": "assistant", "content": "Action: book_flight[NYC]"}]}),
     "undeclared_tool", "messages[1].tool_calls[0].name"),
    (json.dumps({"messages": []}), "empty", None),
    (json.dumps({"messages": [{"role": "user", "content": 42}]}), "wrong_type", "messages[0].content"),
    (json.dumps({"messages": "hello"}), "wrong_type", "messages"),
]


@pytest.fixture
def dirty(tmp_path):
    lines = [json.dumps(GOOD)] + [line for line, _, _ in BAD_CASES] + [json.dumps(GOOD)]
    return write_jsonl(tmp_path / "dirty.jsonl", lines)


def test_quarantine_accounts_for_every_record(dirty, tmp_path):
    result = convert(str(dirty), tmp_path / "out.jsonl", fmt="react", to="native")
    rep = result.read
    assert rep.records == len(BAD_CASES) + 2
    assert rep.converted == 2
    assert rep.quarantined == len(BAD_CASES)
    assert rep.balanced()
    q = read_jsonl(result.quarantine)
    assert [e["reason"] for e in q] == [reason for _, reason, _ in BAD_CASES]
    for entry, (_, _, fld), lineno in zip(q, BAD_CASES, range(2, 2 + len(BAD_CASES)), strict=True):
        assert entry["origin"] == f"{dirty}:{lineno}"
        if fld:
            assert fld in entry["field"]
        assert entry["record"] is not None  # the raw record is kept for repair
    assert len(read_jsonl(tmp_path / "out.jsonl")) == 2


def test_skip_counts_without_a_file(dirty, tmp_path):
    result = convert(str(dirty), tmp_path / "out.jsonl", fmt="react", to="native", on_error="skip")
    assert result.read.skipped == len(BAD_CASES)
    assert result.quarantine is None
    assert not (tmp_path / "out.quarantine.jsonl").exists()
    assert result.read.balanced()


@pytest.mark.parametrize(("line", "reason", "fld"), BAD_CASES)
def test_raise_names_file_line_and_field(tmp_path, line, reason, fld):
    path = write_jsonl(tmp_path / "bad.jsonl", [json.dumps(GOOD), line])
    with pytest.raises(ParseError) as info:
        list(read(str(path), "react", on_error="raise"))
    err = info.value
    assert err.reason == reason
    assert f"{path}:2" in str(err)
    if fld:
        assert fld in str(err)


def test_missing_key_lists_available_keys(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"conversations": [{"value": "hi"}]}])
    with pytest.raises(ParseError, match=r"missing key 'from' \(available keys: value\)"):
        list(read(str(path), "sharegpt", on_error="raise"))


def test_malformed_json_array_reports_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n {"instruction": "a", "input": "", "output": "b"},\n {"instruction": oops}\n]\n')
    result = convert(str(path), tmp_path / "o.jsonl", fmt="alpaca", to="native")
    assert (result.read.converted, result.read.quarantined) == (1, 1)
    (entry,) = read_jsonl(result.quarantine)
    assert entry["origin"] == f"{path}:3"
    assert "line 3" in entry["error"]


def test_tool_result_without_call_and_bad_order_are_all_reported(tmp_path):
    rec = {"messages": [{"role": "tool", "content": "orphan"}, {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "", "tool_calls": [
                            {"id": "a", "type": "function", "function": {"name": "nope", "arguments": "{"}}]}],
           "tools": []}
    path = write_jsonl(tmp_path / "bad.jsonl", [rec])
    with pytest.raises(ParseError) as info:
        list(read(str(path), "openai", on_error="raise"))
    assert "and 2 more problem(s)" in str(info.value)


@pytest.mark.parametrize(("record", "reason", "field"), [
    (["instruction", "output"], "wrong_type", None),  # not an object
    ({"output": "b"}, "missing_key", "instruction"),
    ({"instruction": 3, "output": "b"}, "wrong_type", "instruction"),
    ({"instruction": "a", "input": ["x"], "output": "b"}, "wrong_type", "input"),
    ({"instruction": "a"}, "missing_key", "output"),
    ({"instruction": "a", "output": None}, "wrong_type", "output"),
    ({"instruction": "a", "output": "b", "system": 1}, "wrong_type", "system"),
    ({"instruction": "a", "output": "b", "history": "q a"}, "wrong_type", "history"),
    ({"instruction": "a", "output": "b", "history": 0}, "wrong_type", "history"),  # falsy, still not a list
    ({"instruction": "a", "output": "b", "history": {}}, "wrong_type", "history"),
    ({"instruction": "a", "output": "b", "history": [["q", "a"], ["q"]]}, "wrong_type", "history[1]"),
])
def test_alpaca_reader_names_the_bad_field(tmp_path, record, reason, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(ParseError) as info:
        list(read(str(path), "alpaca", on_error="raise"))
    assert (info.value.reason, info.value.field) == (reason, field)


def test_alpaca_reader_reads_history_system_and_input(tmp_path):
    path = write_jsonl(tmp_path / "ok.jsonl", [
        {"instruction": "a", "input": "x", "output": "b", "system": "s", "history": [["q", "r"]]},
        {"instruction": "a", "input": None, "output": "b", "history": None}])
    first, second = read(str(path), "alpaca", on_error="raise")
    assert [(m.role, m.content) for m in first.messages] == [
        ("system", "s"), ("user", "q"), ("assistant", "r"), ("user", "a\n\nx"), ("assistant", "b")]
    assert first.metadata == {"instruction": "a", "input": "x"}
    assert [(m.role, m.content) for m in second.messages] == [("user", "a"), ("assistant", "b")]
    from collections import OrderedDict

    from agentflan.io.base import RecordContext
    from agentflan.io.files import RawRecord
    from agentflan.io.readers.sharegpt import AlpacaReader

    mapping = OrderedDict(instruction="a", input="x", output="b")  # an object that is not a plain dict
    third = AlpacaReader().parse(mapping, RecordContext(RawRecord("m.json", 1, 0), "alpaca", None))
    assert third.messages[0].content == "a\n\nx"


def test_dropped_records_are_counted_and_balance(tmp_path):
    """A record a reader rule drops (ToolBench: an invalid search, a give-up) is counted by reason."""
    for i, ag in enumerate([{"valid_data": False}, {"valid_data": True, "finish_type": "give_up",
                                                    "train_messages": [[]]}]):
        (tmp_path / f"a{i}.json").write_text(json.dumps({"answer_generation": ag}))
    result = convert(str(tmp_path / "*.json"), tmp_path / "out.jsonl", fmt="toolbench", to="native")
    rep = result.read
    assert (rep.records, rep.converted, dict(rep.dropped)) == (2, 0, {"toolbench_invalid": 1, "toolbench_give_up": 1})
    assert rep.balanced()
    rep.dropped["toolbench_give_up"] += 1  # the invariant notices a record counted twice
    assert not rep.balanced()
