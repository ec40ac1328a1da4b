"""`agentflan eval` and `agentflan score`: calibration, lockstep batching, logs that re-score, and
failed requests that stay errors (a local fault-injecting server), resumably."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.client import ClientConfig, OpenAIClient, RequestError
from agentflan.envs import get_env
from agentflan.envs.base import ExpertPolicy, Task, run_episode
from agentflan.eval.envs import model_agent, read_log, rescore, run_env
from agentflan.formats.protocols import Prompt, conversation_key, get_protocol
from agentflan.models.engines import OpenAIEngine, ScriptedEngine
from agentflan.schema import AssistantMessage, Trajectory


def oracle(env: str, tasks: list[Task], protocol: str):
    """A 'model' that says what the expert episode of the task, rendered in `protocol`, says next."""
    info = get_env(env)
    proto = get_protocol(protocol)
    table = []
    for task in tasks:
        traj = run_episode(info.make(), task, ExpertPolicy(info.expert(task))).trajectory
        table.append([(m.role, m.content) for m in proto.render(traj, conversation_key(traj))])

    def respond(messages: list[tuple[str, str]]) -> str:
        n = len(messages)
        for msgs in table:
            if n < len(msgs) and msgs[n][0] == "assistant" and msgs[:n] == messages:
                return msgs[n][1]
        return "I cannot tell."

    return respond


def _prompt_pairs(p: Prompt) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in p.messages]


@pytest.mark.parametrize("env", ["toolapi", "db"])
def test_expert_scores_everything_and_random_almost_nothing(tmp_path, env):
    runner = CliRunner()
    for policy, lo, hi in (("expert", 1.0, 1.0), ("random", 0.0, 0.1)):
        res = runner.invoke(cli, ["eval", env, "--policy", policy, "-n", "40", "-o", str(tmp_path / policy)])
        assert res.exit_code == 0, res.output
        summary = json.loads((tmp_path / policy / f"{env}-{policy}" / "summary.json").read_text())
        assert summary["scored"] == 40 and lo <= summary["success"]["rate"] <= hi, summary
    res = runner.invoke(cli, ["score", str(tmp_path)])
    assert res.exit_code == 0 and "100.0 ± 0.0" in res.output, res.output


def test_the_folder_summary_covers_every_run_in_it(tmp_path):
    """`eval toolapi` then `eval db` into one folder: its summary lists both, not the last command's only."""
    runner = CliRunner()
    for env in ("toolapi", "db"):
        res = runner.invoke(cli, ["eval", env, "--policy", "expert", "-n", "3", "-o", str(tmp_path)])
        assert res.exit_code == 0, res.output
    runs = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert sorted(r["env"] for r in runs) == ["db", "toolapi"]
    md = (tmp_path / "summary.md").read_text()
    assert "| toolapi |" in md and "| db |" in md
    res = runner.invoke(cli, ["eval", "db", "--policy", "expert", "-n", "3", "-o", str(tmp_path)])  # again: no duplicate
    assert len(json.loads((tmp_path / "summary.json").read_text())["runs"]) == 2


@pytest.mark.parametrize(("env", "protocol"), [("toolapi", "tflan"), ("toolapi", "react:random"), ("db", "json"),
                                                ("db", "agentinstruct:db"), ("toolapi", "tflan:inline")])
def test_episodes_step_in_lockstep_and_rescore(tmp_path, env, protocol):
    tasks = get_env(env).generate(24, "heldout", 0)
    respond = oracle(env, tasks, protocol)
    engine = ScriptedEngine(respond=lambda p: respond(_prompt_pairs(p)))
    calls: list[int] = []
    real = engine.generate
    engine.generate = lambda prompts: (calls.append(len(prompts)), real(prompts))[1]  # type: ignore[method-assign]
    proto, agent_for = model_agent(protocol)
    run = run_env(env, tasks, agent_for, engine, tmp_path / "run", protocol_name=proto.name, agent_name="oracle",
                  config={})
    assert run.summary["success"]["rate"] == 1.0, run.summary
    assert run.summary["parse_failure"]["rate"] == 0.0
    # 24 episodes of a few actions each: one batched call per round, never one call per prompt
    assert len(calls) <= 12 and max(calls) == 24
    records = read_log(tmp_path / "run" / "episodes.jsonl")
    assert len(records) == 24 and all(rescore(r)["success"] for r in records)
    assert all(rescore(r)["observations_match"] for r in records)


def test_score_detects_a_doctored_log(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["eval", "toolapi", "--policy", "random", "-n", "10", "-o", str(tmp_path)]).exit_code == 0
    log = tmp_path / "toolapi-random" / "episodes.jsonl"
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    recs[3]["verdict"]["success"] = True  # a failed episode claimed as a success
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = runner.invoke(cli, ["score", str(log), "-o", str(tmp_path / "report.md")])
    assert res.exit_code == 1 and "differ" in res.output
    assert (tmp_path / "report.md").exists()


class _Faulty(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that fails on purpose: 500s, timeouts, garbage, then good."""

    mode: ClassVar[str] = "good"
    respond: ClassVar[Any] = None
    calls: ClassVar[int] = 0

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        mode = type(self).mode
        if mode == "500":
            self._send(500, b'{"error": "boom"}')
        elif mode == "slow":
            time.sleep(1.5)
            self._send(200, b"{}")
        elif mode == "garbage":
            self._send(200, b"<html>not json</html>")
        elif mode == "400":
            self._send(400, b'{"error": "bad request"}')
        else:
            content = type(self).respond([(m["role"], m["content"]) for m in body["messages"]])
            self._send(200, json.dumps({"choices": [{"message": {"role": "assistant", "content": content},
                                                     "finish_reason": "stop"}]}).encode())

    def _send(self, code: int, payload: bytes) -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def faulty():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Faulty.calls = 0
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


@pytest.mark.parametrize("mode", ["500", "slow", "garbage", "400"])
def test_a_faulty_endpoint_gives_errors_not_answers_and_the_run_resumes(tmp_path, faulty, mode):
    tasks = get_env("toolapi").generate(6, "heldout", 0)
    _Faulty.respond = staticmethod(oracle("toolapi", tasks, "react"))
    _Faulty.mode = mode
    config = ClientConfig(base_url=faulty, model="m", retries=1, backoff_s=0.01, timeout_s=0.5, concurrency=3)
    proto, agent_for = model_agent("react")
    run = run_env("toolapi", tasks, agent_for, OpenAIEngine(config), tmp_path, protocol_name=proto.name,
                  agent_name="m", config={"model": "m"})
    assert run.summary["errors"] == 6 and run.summary["scored"] == 0, run.summary
    assert all(r["verdict"] is None and r["error"] for r in read_log(tmp_path / "episodes.jsonl"))
    retried = mode in ("500", "slow")
    assert _Faulty.calls == (12 if retried else 6)  # retries only on 5xx and timeouts
    _Faulty.mode = "good"  # the endpoint recovers: the same run resumes the errored episodes
    again = run_env("toolapi", tasks, agent_for, OpenAIEngine(config), tmp_path, protocol_name=proto.name,
                    agent_name="m", config={"model": "m"})
    assert again.summary["errors"] == 0 and again.summary["success"]["rate"] == 1.0, again.summary
    third = run_env("toolapi", tasks, agent_for, OpenAIEngine(config), tmp_path, protocol_name=proto.name,
                    agent_name="m", config={"model": "m"})
    assert third.resumed == 6  # nothing left to play


def test_eval_cli_exits_nonzero_on_errors_and_names_them(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    res = CliRunner().invoke(cli, ["eval", "toolapi", "--base-url", f"http://127.0.0.1:{port}/v1", "--model", "m",
                                   "-n", "3", "--retries", "0", "-o", str(tmp_path)])
    assert res.exit_code == 1, res.output  # nothing was scored: a failed run, as `env play` says (README)
    assert "every one of the 3 episode(s) ended in an error" in res.output and "cannot connect" in res.output


def test_client_retries_caches_and_fails_honestly(tmp_path, faulty):
    _Faulty.respond = staticmethod(lambda msgs: "hello")
    _Faulty.mode = "good"
    cfg = ClientConfig(base_url=faulty, model="m", retries=2, backoff_s=0.0, cache=str(tmp_path / "c.jsonl"))
    client = OpenAIClient(cfg)
    body = client.body([{"role": "user", "content": "hi"}])
    assert client.chat(body)["choices"][0]["message"]["content"] == "hello"
    again = OpenAIClient(cfg)  # a new process: served from the cache file, no request
    assert again.chat(body)["choices"][0]["message"]["content"] == "hello" and again.requests == 0
    _Faulty.mode = "500"
    with pytest.raises(RequestError, match="HTTP 500") as err:
        client.chat(client.body([{"role": "user", "content": "other"}]))
    assert err.value.attempts == 3 and err.value.retryable
    _Faulty.mode = "400"
    with pytest.raises(RequestError, match="HTTP 400") as err:
        client.chat(client.body([{"role": "user", "content": "third"}]))
    assert err.value.attempts == 1 and not err.value.retryable


def test_dead_endpoint_in_env_play_is_an_error(tmp_path):
    res = CliRunner().invoke(cli, ["env", "play", "toolapi", "--policy", "model", "--base-url", "http://127.0.0.1:9/v1",
                                   "--model", "x", "--retries", "0"])
    assert res.exit_code != 0 and "error, not a verdict" in res.output and "SUCCESS" not in res.output
    assert "FAILURE" not in res.output


def test_context_limit_ends_an_episode_as_a_failure():
    from agentflan.client import ContextLimitError
    from agentflan.envs.base import play
    from agentflan.models.driver import drive

    task = get_env("toolapi").generate(1, "heldout", 0)[0]
    engine = ScriptedEngine(respond=lambda p: ContextLimitError("too long", url="x", status=400))
    (ep,) = drive([play(get_env("toolapi").make(), task, get_protocol("react"))], engine)
    assert ep.error is None and ep.verdict is not None and not ep.verdict.success
    assert ep.actions[-1]["kind"] == "context_limit"


def test_transcripts_keep_every_generated_text(tmp_path):
    tasks = get_env("db").generate(3, "heldout", 0)
    respond = oracle("db", tasks, "tflan")
    proto, agent_for = model_agent("tflan")
    run_env("db", tasks, agent_for, ScriptedEngine(respond=lambda p: respond(_prompt_pairs(p))), tmp_path,
            protocol_name=proto.name, agent_name="o", config={})
    rec = read_log(tmp_path / "episodes.jsonl")[0]
    traj = Trajectory.model_validate(rec["transcript"])
    raw = [t for m in traj.messages if isinstance(m, AssistantMessage) for t in m.metadata.get("raw", [])]
    assert raw and raw == [t for a in rec["actions"] for t in a["texts"]]
    assert rec["protocol"] == "tflan" and rec["task"]["id"] == rec["task_id"]


def test_prefix_cached_decoding_equals_generate():
    """The lockstep decoder with a prefix cache generates exactly what `model.generate` does."""
    torch = pytest.importorskip("torch")
    from agentflan.models.decode import PrefixCache, greedy
    from agentflan.training.models import tiny_model

    torch.manual_seed(0)
    model = tiny_model(300).eval()
    g = torch.Generator().manual_seed(1)
    base = torch.randint(3, 300, (40,), generator=g).tolist()
    prompts = [base + torch.randint(3, 300, (n,), generator=g).tolist() for n in (5, 17, 1, 30)]

    def reference(p):
        with torch.no_grad():
            out = model.generate(input_ids=torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=12, do_sample=False, pad_token_id=2)
        return out[0, len(p):].tolist()

    expected = [reference(p) for p in prompts]
    never = lambda i, new: False  # noqa: E731
    cache = PrefixCache()
    assert greedy(model, prompts, max_new_tokens=12, pad_id=2, stop_ids=set(), stopped=never, cache=None) == expected
    assert greedy(model, prompts[:2], max_new_tokens=12, pad_id=2, stop_ids=set(), stopped=never, cache=cache) \
        == expected[:2]
    # the next turn extends what was generated: its prefix comes from the cache, the result does not change
    longer = [prompts[0] + expected[0] + [7, 8, 9], prompts[3]]
    again = greedy(model, longer, max_new_tokens=12, pad_id=2, stop_ids=set(), stopped=never, cache=cache)
    assert again == [reference(p) for p in longer]
    assert cache.hits >= 2 and cache.reused_tokens >= len(prompts[0]) + 40


def test_a_folder_holding_another_configuration_is_refused(tmp_path):
    runner = CliRunner()
    assert runner.invoke(cli, ["eval", "toolapi", "--policy", "expert", "-n", "3", "-o", str(tmp_path)]).exit_code == 0
    res = runner.invoke(cli, ["eval", "toolapi", "--policy", "expert", "-n", "3", "--max-steps", "5", "-o",
                              str(tmp_path)])
    assert res.exit_code == 4 and "holds a run with another configuration" in res.output, res.output
