"""Concepts defined once: AgentBench's DB prompt, ToolBench's `Finish`, the fingerprint hash."""

from __future__ import annotations

import json
import re
from pathlib import Path

from agentflan.formats.agentinstruct import AGENTBENCH_DB_PROMPT
from agentflan.formats.finish import FINISH, FINISH_SPEC, give_answer
from agentflan.io import read
from agentflan.schema import SystemMessage
from tests.helpers import FIXTURE_DATA, agentinstruct_db_records

SRC = Path(__file__).resolve().parents[2] / "src" / "agentflan"


def test_dbbench_tasks_state_agentbench_db_prompt_as_the_db_protocol_does(sample_data):
    task = next(iter(read(str(sample_data / "agentbench/dbbench/dev.jsonl"), "dbbench")))
    assert isinstance(task.messages[0], SystemMessage)
    assert task.messages[0].content == AGENTBENCH_DB_PROMPT.strip()
    # the first turn of a DB episode rendered by the `agentinstruct:db` protocol is the same text
    (record,) = agentinstruct_db_records(1)
    assert record["conversations"][0]["value"].strip() == task.messages[0].content

def test_agentbench_db_prompt_text_lives_in_one_module():
    opening = "help me operate a MySQL database with SQL"
    holders = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if opening in p.read_text())
    assert holders == ["formats/agentinstruct.py"]


def test_finish_spec_and_give_answer_are_the_ones_every_user_offers():
    from agentflan.envs import get_env
    from agentflan.pipeline import negatives

    info = get_env("toolapi")
    task = info.generate(1, "train", 0)[0]
    env = info.make()
    assert env.tools(task)[-1] is FINISH_SPEC
    assert env.final_call("x", "call_9") == give_answer("x", "call_9")
    parent = next(iter(read(str(FIXTURE_DATA / "llamafactory/alpaca_en_demo.json"), "alpaca")))
    neg = negatives._with_tools("n", parent, "tools_not_needed", None, "q", [], "t", "ans", "teacher:x", {})
    assert neg.tools[-1] is FINISH_SPEC and neg.tags["final_tool"] == FINISH
    assert neg.messages[-1].tool_calls == [give_answer("ans")]  # type: ignore[union-attr]


def test_give_answer_arguments_are_built_only_in_formats_finish():
    built = re.compile(r'"return_type"\s*:\s*"give_answer"\s*,\s*"final_answer"')
    holders = sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if built.search(p.read_text()))
    assert holders == ["formats/finish.py"]


def test_build_markers_and_training_cache_keys_are_one_hash():
    from agentflan.fingerprint import fingerprint
    from agentflan.pipeline.stages import ingest, mix, steps
    from agentflan.training.prepared import cache_key

    parts = ({"b": 1, "a": [1, 2]}, "x", Path("/p"))
    assert ingest.fingerprint is mix.fingerprint is steps.fingerprint is fingerprint  # the stage markers' hash
    assert fingerprint(*parts) == cache_key(*parts)[:16]
    assert len(cache_key(*parts)) == 20
    assert fingerprint(*parts) != fingerprint({"b": 1, "a": [2, 1]}, "x", Path("/p"))
    # dict key order does not matter; sets of inputs written by different code paths agree
    assert fingerprint(json.loads('{"a": [1, 2], "b": 1}'), "x", "/p") == fingerprint(*parts)


def test_fixture_records_are_written_by_the_fixture_script(tmp_path):
    """The committed fixtures are what `tests/fixtures/make_data.py` writes (no hand edits drift)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_data", Path(__file__).resolve().parents[1] / "fixtures/make_data.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    committed = mod.ROOT
    mod.ROOT = tmp_path
    mod.main()
    written = {str(p.relative_to(tmp_path)): p.read_bytes() for p in sorted(tmp_path.rglob("*")) if p.is_file()}
    shipped = {str(p.relative_to(committed)): p.read_bytes() for p in sorted(committed.rglob("*"))
               if p.is_file() and p.name != "README.md"}
    assert written == shipped
