"""The models layer: the engine registry and `make_engine`, `ModelInfo` reading protocol traits,
the one driver (`drive`, also `env play`'s loop), the formats-level reply reader and the teacher
built on it, and the seeded draws kept at their old values."""

from __future__ import annotations

import hashlib
import json
import random
import zlib

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.client import ClientConfig, RequestError
from agentflan.errors import ConfigError, ParseError
from agentflan.formats.openai import reply_message
from agentflan.formats.protocols import Completion, Prompt, get_protocol
from agentflan.models.driver import drive
from agentflan.models.engines import (
    ENGINES,
    EngineOptions,
    OpenAIEngine,
    ScriptedEngine,
    episode_protocols,
    make_engine,
)
from agentflan.models.info import ModelInfo
from agentflan.schema import SystemMessage, UserMessage

# ---- the engine registry ------------------------------------------------------------------------------


def test_the_registry_names_the_engines_the_cli_offers():
    assert ENGINES.names() == ["hf", "openai", "vllm"]
    assert ENGINES.get("openai") is OpenAIEngine
    from agentflan.cli.evaluate import eval_cmd

    choices = next(p for p in eval_cmd.params if p.name == "engine_name").type.choices  # type: ignore[attr-defined]
    assert list(choices) == ["auto", *ENGINES.names()]


def test_make_engine_builds_an_endpoint_engine_from_options(tmp_path):
    engine = make_engine(EngineOptions(model="m", base_url="http://127.0.0.1:9/v1", concurrency=3, max_new_tokens=7,
                                       retries=1, timeout_s=5.0, cache=str(tmp_path / "r.jsonl")))
    assert isinstance(engine, OpenAIEngine)
    assert (engine.batch_size, engine.max_tokens, engine.client.config.retries) == (3, 7, 1)
    assert engine.describe()["base_url"] == "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(("options", "message"), [
    (EngineOptions(engine="openai", model="m"), "an endpoint needs --base-url and --model"),
    (EngineOptions(base_url="http://x/v1"), "an endpoint needs --base-url and --model"),
    (EngineOptions(), "--model FOLDER is required"),
    (EngineOptions(engine="hff", model="m"), "unknown engine 'hff' (known: hf, openai, vllm); did you mean hf"),
])
def test_make_engine_refuses_what_it_cannot_build(options, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_engine(options)


def test_the_cli_reports_a_missing_option_as_a_usage_error():
    res = CliRunner().invoke(cli, ["eval", "toolapi", "--engine", "openai", "--model", "m"])
    assert res.exit_code == 2 and "an endpoint needs --base-url and --model" in res.output


# ---- ModelInfo: traits, not names ---------------------------------------------------------------------


def test_episode_protocols_read_the_protocols_traits():
    info = ModelInfo(protocols={"tflan": 9, "instruct:json": 8, "source": 7, "fireact": 6, "chat": 5,
                                "agentinstruct:db": 4, "agentinstruct:os": 3, "react:random": 2}, trained=True)
    assert info.episode_protocols("db") == ["tflan", "agentinstruct:db", "react:random"]
    assert info.episode_protocols("toolapi") == ["tflan", "react:random"]
    assert info.episode_protocols(None) == ["tflan", "agentinstruct:db", "agentinstruct:os", "react:random"]
    assert ModelInfo().episode_protocols("db") == ["native"]
    assert (get_protocol("agentinstruct:db").task, get_protocol("tflan").task) == ("db", None)
    assert not get_protocol("fireact").plays_envs and not get_protocol("source").plays_envs


def test_episode_protocols_of_an_engine():
    engine = ScriptedEngine()
    assert episode_protocols(engine, "db") == ["native"]
    engine.info = ModelInfo(protocols={"agentinstruct:db": 2, "tflan": 1})
    assert episode_protocols(engine, "toolapi") == ["tflan"]
    assert episode_protocols(engine, "db", ("react",)) == ["react"]


# ---- the driver ---------------------------------------------------------------------------------------


def _asks(n: int, tag: str):
    got = []
    for i in range(n):
        completion = yield Prompt([UserMessage(content=f"{tag}{i}")])
        got.append(completion.text)
    return got


def test_drive_batches_every_round_and_shows_the_prompts():
    engine = ScriptedEngine(respond=lambda p: p.messages[0].content.upper())
    rounds: list[list[str]] = []
    out = drive([_asks(2, "a"), _asks(1, "b"), _asks(0, "c")], engine,
                on_prompts=lambda ps: rounds.append([p.messages[0].content for p in ps]))
    assert out == [["A0", "A1"], ["B0"], []]
    assert rounds == [["a0", "b0"], ["a1"]]


def test_drive_without_an_engine_plays_scripted_generators_and_refuses_a_prompt():
    assert drive([_asks(0, "x")], None) == [[]]
    with pytest.raises(ConfigError, match="needs an engine"):
        drive([_asks(1, "x")], None)


def test_drive_ends_a_generator_with_its_request_error():
    failed = RequestError("down", url="u")
    assert drive([_asks(1, "a")], ScriptedEngine(respond=lambda p: failed)) == [failed]


def test_env_play_steps_its_episode_through_the_driver(monkeypatch):
    import agentflan.cli.evaluate as evaluate

    engine = ScriptedEngine(["I cannot tell."])
    monkeypatch.setattr(evaluate, "make_engine", lambda options: engine)
    res = CliRunner().invoke(cli, ["env", "play", "toolapi", "--policy", "model", "--base-url", "http://x/v1",
                                   "--model", "m", "--protocol", "react"])
    assert res.exit_code == 0, res.output
    assert "== FAILURE" in res.output and "protocol react" in res.output
    assert len(engine.prompts) == 1 and engine.prompts[0].stop  # react's observation marker is a stop


# ---- the reply reader and the teacher ------------------------------------------------------------------


def test_reply_message_reads_a_completion_and_names_what_is_missing():
    msg = reply_message({"choices": [{"message": {"role": "assistant", "content": [
        {"type": "text", "text": "a"}, {"type": "text", "text": "b"}], "tool_calls": [
        {"id": "c1", "function": {"name": "f", "arguments": "{\"x\": 1}"}}]}}]})
    assert msg.content == "a\nb" and [(c.id, c.name, c.arguments) for c in msg.tool_calls] == [("c1", "f", {"x": 1})]
    for bad, field in [({}, "choices"), ({"choices": []}, "choices[0]"), ({"choices": [{}]}, "choices[0].message"),
                       ({"choices": [{"message": {"content": 3}}]}, "choices[0].message.content")]:
        with pytest.raises(ParseError) as e:
            reply_message(bad)
        assert e.value.field == field


def test_the_teacher_sends_our_messages_and_reads_replies_with_the_formats_reader(tmp_path, monkeypatch):
    from agentflan.pipeline.teacher import Teacher, TeacherConfig

    teacher = Teacher(TeacherConfig(base_url="http://127.0.0.1:9/v1", model="t"))
    sent = []

    def chat(body):
        sent.append(body)
        if body["messages"][1]["content"] == "broken":
            return {"choices": [{"message": {"content": {"not": "text"}}}]}
        return {"choices": [{"message": {"role": "assistant", "content": [{"type": "text", "text": "fine"}]}}]}

    monkeypatch.setattr(teacher.client, "chat", chat)
    got = teacher.complete_many([[SystemMessage(content="s"), UserMessage(content="q")],
                                 [SystemMessage(content="s"), UserMessage(content="broken")]])
    assert got[0] == "fine"
    assert isinstance(got[1], RequestError) and "unreadable message in the reply" in str(got[1])
    assert sent[0]["messages"] == [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert (sent[0]["temperature"], sent[0]["max_tokens"]) == (0.7, 512)


def test_the_openai_engine_uses_the_same_reader(monkeypatch):
    engine = OpenAIEngine(ClientConfig(base_url="http://127.0.0.1:9/v1", model="m"))
    monkeypatch.setattr(engine.client, "chat", lambda body: {"choices": [{"message": {"content": None}}]} if
                        body["messages"][0]["content"] == "a" else {"choices": []})
    ok, bad = engine.generate([Prompt([UserMessage(content="a")]), Prompt([UserMessage(content="b")])])
    assert isinstance(ok, Completion) and ok.text == ""
    assert isinstance(bad, RequestError) and "choices[0]" in str(bad)


# ---- seeded draws keep their values -------------------------------------------------------------------


def test_the_seeded_draws_are_the_formulas_builds_and_logs_depend_on():
    from agentflan import seeds

    blake = hashlib.blake2b(repr((3, "split", "a")).encode(), digest_size=8).digest()
    assert seeds.unit(3, "split", "a") == int.from_bytes(blake, "big") / 2**64
    assert seeds.rng_for(3, "k").random() == random.Random(int(seeds.unit(3, "k") * 2**53)).random()
    phrase = hashlib.blake2b(b"key\x1f3\x1fHi", digest_size=8).digest()
    assert seeds.phrase_index(7, "key", 3, "Hi") == int.from_bytes(phrase, "big") % 7
    sha = int(hashlib.sha256(b"instruct\x1fk").hexdigest()[:12], 16)
    assert seeds.text_rng("instruct\x1fk").random() == random.Random(sha).random()
    assert seeds.crc_seed("0:t1") == zlib.crc32(b"0:t1")
    assert seeds.task_rng(2, 11).random() == random.Random(2 * 7919 + 11).random()
    assert json.dumps(seeds.unit(0, "x")) == "0.9179524772525433"  # pinned (main's pipeline.base.unit gave it)
