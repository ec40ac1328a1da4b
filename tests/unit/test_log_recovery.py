"""Append-only logs recover from a cut last line by themselves: the evaluation log, the client's
request cache. Each is cut at every byte of its last line (what a kill or a full disk during the
write leaves); reading skips the cut line with a warning, and resuming gives the same bytes as a
run that was never cut."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.client import ClientConfig, OpenAIClient
from agentflan.envs import get_env
from agentflan.errors import ConfigError
from agentflan.eval.envs import read_log, run_env, scripted_agent
from agentflan.jsonlog import read_records, records_of, repair_tail


def _cuts(data: bytes) -> list[tuple[int, bytes, bool]]:
    """(k, the file cut k bytes into its last line, whether only the newline is missing) for every k
    short of the whole line."""
    start = data.rstrip(b"\n").rfind(b"\n") + 1
    return [(k, data[:start + k], start + k == len(data) - 1) for k in range(len(data) - start)]


def test_jsonlog_at_every_byte(tmp_path, caplog):
    whole = b"".join(json.dumps({"i": i, "text": "caf\u00e9 \u2603" * 3}, ensure_ascii=False).encode() + b"\n"
                     for i in range(3))
    path = tmp_path / "log.jsonl"
    for k, data, complete in _cuts(whole):
        path.write_bytes(data)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            got = [v["i"] for _, v in read_records(path)]
        assert got == ([0, 1, 2] if complete else [0, 1]), k
        assert ("cut by an interrupted write" in caplog.text) == (k > 0 and not complete), (k, caplog.text)
        dropped = repair_tail(path)
        assert path.read_bytes() == (whole if complete else whole[:whole.rstrip(b"\n").rfind(b"\n") + 1]), k
        assert dropped == (0 if complete else k)
    path.write_bytes(b'{"i": 0}\n{"i": \n{"i": 2}\n')  # damage inside is not a cut write: an error
    with pytest.raises(ValueError, match=r"log.jsonl:2: not a JSON line"):
        list(read_records(path))


def _expert_run(out, tasks):
    return run_env("toolapi", tasks, scripted_agent("expert", "toolapi"), None, out, protocol_name="expert",
                   agent_name="expert", config={"n": len(tasks)})


def test_an_eval_log_cut_at_every_byte_of_its_last_line_resumes_to_the_same_bytes(tmp_path, caplog):
    tasks = get_env("toolapi").generate(3, "heldout", 0)
    ref = _expert_run(tmp_path / "ref", tasks)
    whole = (tmp_path / "ref" / "episodes.jsonl").read_bytes()
    out = tmp_path / "cut"
    _expert_run(out, tasks)
    log = out / "episodes.jsonl"
    cuts = _cuts(whole)
    assert len(cuts) > 1000  # a real episode record
    played = 0
    for k, data, complete in cuts:
        # reading (what `score` does) skips the cut line; in memory: writing a file per byte takes long
        assert [r["task_id"] for _, r in records_of(data, log)] == [t.id for t in tasks][:3 if complete else 2], k
        if k % 50 and k not in (1, 2) and not complete:
            continue  # resuming plays an episode: every 50th byte, the first ones and the last
        log.write_bytes(data)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            read_log(log)
        assert ("cut by an interrupted write" in caplog.text) == (k > 0 and not complete), k
        again = _expert_run(out, tasks)
        played += 1
        assert again.resumed == (3 if complete else 2), k  # only the cut episode is played again
        assert log.read_bytes() == whole, k
        assert again.records == ref.records and again.summary == ref.summary
    assert played > 20


def test_score_and_eval_resume_through_the_command_line(tmp_path, caplog):
    runner = CliRunner()
    assert runner.invoke(cli, ["eval", "toolapi", "--policy", "expert", "-n", "3", "-o", str(tmp_path)]).exit_code == 0
    log = tmp_path / "toolapi-expert" / "episodes.jsonl"
    whole = log.read_bytes()
    log.write_bytes(whole[:-40])
    with caplog.at_level(logging.WARNING):
        res = runner.invoke(cli, ["score", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert f"{log}: the last line" in caplog.text and "cut by an interrupted write" in caplog.text
    res = runner.invoke(cli, ["eval", "toolapi", "--policy", "expert", "-n", "3", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert log.read_bytes() == whole
    log.write_bytes(whole.replace(b"\n", b"\n{\n", 1))  # damaged before the last line: refused, named
    res = runner.invoke(cli, ["score", str(tmp_path)])
    assert res.exit_code == 4 and f"{log}:2: not a JSON line" in res.stderr, res.output
    with pytest.raises(ConfigError, match="damaged before it"):
        read_log(log)


def test_the_request_cache_cut_at_every_byte_asks_again_and_ends_whole(tmp_path, monkeypatch, caplog):
    cache = tmp_path / "requests.jsonl"
    cfg = ClientConfig(base_url="http://127.0.0.1:9/v1", model="m", cache=str(cache))
    sent: list[str] = []

    def send(self, body):
        sent.append(body["messages"][0]["content"])
        return {"choices": [{"message": {"role": "assistant", "content": "re: " + body["messages"][0]["content"]}}]}

    monkeypatch.setattr(OpenAIClient, "_send", send)
    client = OpenAIClient(cfg)
    bodies = [client.body([{"role": "user", "content": f"question {i} \u2603"}]) for i in range(3)]
    answers = [client.chat(b) for b in bodies]
    whole = cache.read_bytes()
    for k, data, complete in _cuts(whole):
        cache.write_bytes(data)
        sent.clear()
        with caplog.at_level(logging.WARNING):
            again = OpenAIClient(cfg)
        assert [again.chat(b) for b in bodies] == answers
        assert sent == ([] if complete else ["question 2 \u2603"]), k
        assert cache.read_bytes() == whole, k
