"""Property-based fuzzing of every reader and writer (hypothesis).

Readers get files of format-shaped records with adversarial text, mutated structures and
corrupted bytes (`tests/strategies.py`). Whatever comes in, a read may only end in typed
outcomes: with `quarantine` nothing escapes, every record is accounted for
(`records == converted + quarantined + skipped + dropped`, and `records` equals the non-blank
lines), every quarantine line is valid JSON, every converted trajectory passes the schema checks
and can be written; with `raise` the only exception is `ParseError`. Writers get valid
trajectories (with surrogates sometimes): they never raise, count what they cannot write, write
valid UTF-8 JSON or Parquet, and what they write their own format's reader reads back: exactly
for `native` and `parquet`, as the same conversation for `openai`, without rejections for the rest.

`make test` runs a small profile (30 files per reader, 30 lists of trajectories per writer,
derandomized: the same inputs on every run). `AGENTFLAN_FUZZ_EXAMPLES=2000` runs the same tests
large (still derandomized, so a failure reproduces with the same command) and prints what each
test read and wrote; the `slow` tests run 10,000 new generated files per reader on every run.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agentflan.errors import ParseError
from agentflan.io import READERS, WRITERS, make_reader
from agentflan.io.writers.base import Unwritable
from agentflan.schema import AssistantMessage, Trajectory, check, errors
from tests import strategies

SMALL = int(os.environ.get("AGENTFLAN_FUZZ_EXAMPLES", "30"))
LARGE = "AGENTFLAN_FUZZ_EXAMPLES" in os.environ
"""A sized run (docs/reliability.md records one): print the counts of every test."""
SLOW_RECORDS = 10_000
FAST = settings(max_examples=SMALL, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _non_blank_lines(data: bytes) -> int:
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    return sum(1 for line in body.split(b"\n") if line.strip())


def check_read(reader: str, data: bytes, folder: Path) -> int:
    """Read `data` as a JSONL file of `reader` under every policy; assert the properties; return
    the number of records read."""
    path = folder / "in.jsonl"
    path.write_bytes(data)
    qpath = folder / "q.jsonl"
    qpath.unlink(missing_ok=True)
    r = make_reader(str(path), reader, on_error="quarantine", quarantine=qpath)
    try:
        out = list(r.read(str(path)))
    finally:
        r.quarantine.close()  # type: ignore[union-attr]
    rep = r.report
    assert rep.balanced(), rep
    assert rep.records == _non_blank_lines(data), (rep, data[:300])
    assert rep.converted == len(out)
    q = qpath.read_bytes().decode("utf-8").splitlines() if qpath.exists() else []
    assert len(q) == rep.quarantined
    for line in q:
        entry = json.loads(line)
        assert entry["reason"] and entry["origin"].startswith(str(path))
    native = WRITERS.get("native")()
    for t in out:
        assert errors(check(t, allow_parse_errors=r.allow_parse_errors)) == [], t
        native.record(t)
        json.dumps(t.to_json_dict(), ensure_ascii=False).encode("utf-8")
    skip = make_reader(str(path), reader, on_error="skip")
    assert [t.id for t in skip.read(str(path))] == [t.id for t in out]
    assert skip.report.skipped == rep.quarantined and skip.report.dropped == rep.dropped
    try:
        raised = list(make_reader(str(path), reader, on_error="raise").read(str(path)))
    except ParseError as e:
        assert rep.quarantined > 0 and e.reason and e.origin
    else:
        assert rep.quarantined == 0 and [t.id for t in raised] == [t.id for t in out]
    return rep.records


READER_NAMES = READERS.names()


def _fuzz_reader(reader: str, examples: int, derandomize: bool = True) -> int:
    seen = [0]
    with tempfile.TemporaryDirectory() as tmp:
        @settings(FAST, max_examples=examples, derandomize=derandomize)
        @given(data=strategies.jsonl_files(reader))
        def prop(data: bytes) -> None:
            seen[0] += check_read(reader, data, Path(tmp))

        prop()
    return seen[0]


@pytest.mark.parametrize("reader", READER_NAMES)
def test_readers_account_for_every_fuzzed_record(reader, capsys):
    records = _fuzz_reader(reader, SMALL)
    if LARGE:
        with capsys.disabled():
            print(f"\nfuzz {reader}: {records} records read from {SMALL} generated files")
    assert records >= SMALL


@pytest.mark.slow
@pytest.mark.parametrize("reader", READER_NAMES)
def test_readers_fuzzed_with_ten_thousand_records(reader, capsys):
    records = _fuzz_reader(reader, SLOW_RECORDS, derandomize=False)  # new inputs on every run
    with capsys.disabled():
        print(f"\nfuzz {reader}: {records} records read from {SLOW_RECORDS} generated files")
    assert records >= SLOW_RECORDS


# ---- writers ------------------------------------------------------------------------------------

SUFFIXES = {"native": [".jsonl", ".json", ".jsonl.gz", ".jsonl.zst"], "parquet": [".parquet"]}
# the reader that reads each writer's output, and how much of a trajectory survives the round trip
READ_BACK = {"native": "native", "parquet": "native", "openai": "openai", "sharegpt": "sharegpt",
             "alpaca": "alpaca", "agentflan": "agentflan", "toolbench": "toolbench",
             "toolbench_answer": "toolbench", "react": "react", "agentinstruct": "agentinstruct",
             "hf": "openai"}  # HF chat records are OpenAI messages with object arguments


def conversation(t: Trajectory) -> list[tuple]:
    """What the openai format keeps: roles, texts, calls with their arguments, trained turns."""
    out = []
    for m in t.messages:
        calls = tuple((c.name, json.dumps(c.arguments, sort_keys=True)) for c in m.tool_calls) \
            if isinstance(m, AssistantMessage) else ()
        out.append((m.role, m.content, calls, m.loss if isinstance(m, AssistantMessage) else None))
    return out


def check_write(to: str, suffix: str, trajs: list[Trajectory], folder: Path) -> None:
    writer = WRITERS.get(to)()
    path = folder / f"out{suffix}"
    expected = []
    for t in trajs:
        try:  # what this writer keeps of `t` must be text
            json.dumps(writer.record(t), ensure_ascii=False).encode("utf-8")
        except (Unwritable, UnicodeEncodeError):
            continue
        expected.append(t)
    report = WRITERS.get(to)().write(trajs, path)
    assert report.written + report.unwritable.total() == len(trajs)
    assert report.written == len(expected), report
    # FireAct files do not list their tools: the reader is told which actions exist
    options = {"tools": ["search", "lookup", "finish", *strategies.TOOL_NAMES]} if to == "react" else {}
    reader = make_reader(str(path), READ_BACK[to], on_error="quarantine", quarantine=folder / "q.jsonl",
                         allow_parse_errors=True, **options)
    try:
        back = list(reader.read(str(path)))
    finally:
        reader.quarantine.close()  # type: ignore[union-attr]
        (folder / "q.jsonl").unlink(missing_ok=True)
    assert reader.report.quarantined == 0, (to, reader.report.rejected)
    if to in ("native", "parquet"):
        assert [b.model_dump() for b in back] == [t.model_dump() for t in expected]
    elif to == "openai":
        assert [conversation(b) for b in back] == [conversation(t) for t in expected]
    elif to == "hf":  # HF chat records carry no per-turn loss flag
        assert [[c[:3] for c in conversation(b)] for b in back] == [[c[:3] for c in conversation(t)] for t in expected]
    else:
        assert len(back) + sum(reader.report.dropped.values()) == len(expected)


def _writer_cases() -> list[tuple[str, str]]:
    return [(w, s) for w in WRITERS.names() for s in SUFFIXES.get(w, [".jsonl"])]


def _fuzz_writer(to: str, suffix: str, examples: int, derandomize: bool = True) -> int:
    if to == "parquet":
        pytest.importorskip("pyarrow")
    seen = [0]
    with tempfile.TemporaryDirectory() as tmp:
        @settings(FAST, max_examples=examples, derandomize=derandomize)
        @given(trajs=st.lists(strategies.trajectories(surrogates=True), min_size=1, max_size=3))
        def prop(trajs: list[Trajectory]) -> None:
            seen[0] += len(trajs)
            check_write(to, suffix, trajs, Path(tmp))

        prop()
    return seen[0]


@pytest.mark.parametrize(("to", "suffix"), _writer_cases())
def test_writers_write_what_their_reader_reads_back(to, suffix, capsys):
    n = _fuzz_writer(to, suffix, SMALL)
    if LARGE:
        with capsys.disabled():
            print(f"\nfuzz writer {to}{suffix}: {n} trajectories in {SMALL} generated lists")
    assert n >= SMALL


@pytest.mark.slow
@pytest.mark.parametrize(("to", "suffix"), _writer_cases())
def test_writers_fuzzed_slow(to, suffix, capsys):
    n = _fuzz_writer(to, suffix, 2000, derandomize=False)
    with capsys.disabled():
        print(f"\nfuzz writer {to}{suffix}: {n} trajectories")
