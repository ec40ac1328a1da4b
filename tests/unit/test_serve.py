"""`agentflan serve`: OpenAI-compatible, prompting as trained; `eval` through it equals local `eval`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="serving extras not installed (pip install 'agentflan[serve]')")
torch = pytest.importorskip("torch", reason="training extras not installed")

from agentflan.client import ClientConfig  # noqa: E402
from agentflan.envs import get_env  # noqa: E402
from agentflan.eval.envs import model_agent, read_log, run_env  # noqa: E402
from agentflan.formats.templates import get_template  # noqa: E402
from agentflan.models.engines import HFEngine, OpenAIEngine, ScriptedEngine  # noqa: E402
from agentflan.models.info import ModelInfo  # noqa: E402
from agentflan.serve import Server, create_app  # noqa: E402
from agentflan.training.models import INFO_FILE, tiny_model, tiny_tokenizer  # noqa: E402
from tests.unit.test_eval import _prompt_pairs, oracle  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: bytes | dict, timeout: float = 60) -> tuple[int, dict | str]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            text = r.read().decode()
            return r.status, json.loads(text) if not text.startswith("data:") else text
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class _OracleEngine(ScriptedEngine):
    """A 'model' behind the server: the expert's next turn in the protocol's rendering."""

    def __init__(self, respond, protocols):
        super().__init__(respond=respond)
        self.info = ModelInfo(template="agentflan", protocols=protocols, trained=True)
        self.template = get_template("agentflan")
        self.path = "oracle"
        self.model = None

    def prompt_ids(self, prompt):
        return []


@pytest.fixture
def served():
    started = []

    def start(engine, **kw):
        server = Server(engine, **kw)
        import uvicorn

        port = _free_port()
        uv = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="error"))
        thread = threading.Thread(target=uv.run, daemon=True)
        thread.start()
        for _ in range(200):
            if uv.started:
                break
            time.sleep(0.05)
        started.append((uv, thread, server))
        start.servers.append(server)  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{port}/v1"

    start.servers = []  # type: ignore[attr-defined]
    yield start
    for uv, thread, server in started:
        uv.should_exit = True
        thread.join(timeout=10)
        server.close()


@pytest.mark.parametrize(("env", "protocol"), [("toolapi", "tflan"), ("db", "react"), ("toolapi", "tflan:inline")])
def test_eval_through_the_server_equals_local_eval(tmp_path, served, env, protocol):
    """The server plays the trained protocol inside (T-FLAN's elicit turns included): an agent that
    speaks plain OpenAI tool calling gets the same episodes as the local harness."""
    tasks = get_env(env).generate(10, "heldout", 0)
    respond = oracle(env, tasks, protocol)
    url = served(_OracleEngine(lambda p: respond(_prompt_pairs(p)), {protocol: 10}))
    _, local_agent = model_agent(protocol)
    local = run_env(env, tasks, local_agent, ScriptedEngine(respond=lambda p: respond(_prompt_pairs(p))),
                    tmp_path / "local", protocol_name=protocol, agent_name="o", config={})
    _, remote_agent = model_agent("native")
    remote = run_env(env, tasks, remote_agent, OpenAIEngine(ClientConfig(base_url=url, model="oracle", concurrency=4)),
                     tmp_path / "remote", protocol_name="native", agent_name="o", config={})
    assert local.summary["success"]["rate"] == 1.0
    assert [r["verdict"] for r in remote.records] == [r["verdict"] for r in local.records]
    calls = [[(c["name"], c.get("arguments")) for m in r["transcript"]["messages"] for c in m.get("tool_calls", [])]
             for r in (local.records, remote.records) for r in r]
    assert calls[: len(tasks)] == calls[len(tasks):]


def _tiny_model_folder(path: Path) -> Path:
    tok = tiny_tokenizer(["Thought: I need a tool", "Action: Finish", 'Action Input: {"final_answer": "x"}'])
    model = tiny_model(len(tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    (path / INFO_FILE).write_text(json.dumps({"template": "agentflan", "protocols": {"react": 3, "chat": 1}}))
    return path


def test_agentflan_serve_loopback_matches_local_greedy(tmp_path):
    """`agentflan serve` on a tiny model, `eval` through the OpenAI client: the same texts and
    verdicts as the local engine with greedy decoding (batch 1 on both sides)."""
    folder = _tiny_model_folder(tmp_path / "model")
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "agentflan.cli.main", "serve", str(folder), "--port", str(port),
                             "--batch-size", "1", "--max-new-tokens", "24", "--model-name", "t"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                with urllib.request.urlopen(base + "/health", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                time.sleep(0.1)
        tasks = get_env("toolapi").generate(4, "heldout", 0)
        _, agent = model_agent("react")
        local = run_env("toolapi", tasks, agent, HFEngine(folder, batch_size=1, max_new_tokens=24), tmp_path / "l",
                        protocol_name="react", agent_name="t", config={})
        _, native = model_agent("native")
        remote = run_env("toolapi", tasks, native, OpenAIEngine(ClientConfig(base_url=base + "/v1", model="t",
                                                                             concurrency=1), max_tokens=24),
                         tmp_path / "r", protocol_name="native", agent_name="t", config={})
        assert remote.summary["errors"] == 0
        assert [a["texts"] for r in local.records for a in r["actions"]] == \
               [a["texts"] for r in remote.records for a in r["actions"]]
        assert [r["verdict"] for r in local.records] == [r["verdict"] for r in remote.records]
        # the HTTP surface: models, malformed requests as 4xx JSON, streaming
        with urllib.request.urlopen(base + "/v1/models", timeout=5) as r:
            assert json.loads(r.read())["data"][0]["protocol"] == "react"
        assert _post(base + "/v1/chat/completions", b"{not json")[0] == 400
        code, err = _post(base + "/v1/chat/completions", {"model": "t"})
        assert code == 400 and err["error"]["param"] == "messages"
        code, err = _post(base + "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]})
        assert code == 400 and "role" in err["error"]["message"]
        code, err = _post(base + "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                          "tools": [{"type": "function", "function": {"name": "f"}}],
                                                          "protocol": "nope"})
        assert code == 400 and err["error"]["param"] == "protocol"
        code, text = _post(base + "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                                           "stream": True})
        assert code == 200 and isinstance(text, str) and text.rstrip().endswith("data: [DONE]")
        chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
        assert chunks[0]["object"] == "chat.completion.chunk" and chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        proc.terminate()  # SIGTERM: a clean exit (143, the README's status for it), no traceback
        out = proc.communicate(timeout=30)[0]
        assert proc.returncode == 143 and "Traceback" not in out, out
        assert "protocol react" in out  # the banner names the protocol replies use (native falls back)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=20)


def test_busy_server_answers_503_not_a_hang(served):
    import threading as th

    gate = th.Event()

    def slow(prompt):
        gate.wait(10)
        return "ok"

    url = served(_OracleEngine(slow, {"chat": 1}), max_active=1, max_queue=1)
    body = {"messages": [{"role": "user", "content": "hi"}]}
    results: list[int] = []
    threads = [th.Thread(target=lambda: results.append(_post(url + "/chat/completions", body)[0])) for _ in range(3)]
    for t in threads:
        t.start()
        time.sleep(0.3)
    gate.set()
    for t in threads:
        t.join(timeout=20)
    assert sorted(results) == [200, 200, 503]


def test_logs_keep_protocol_and_texts(tmp_path, served):
    tasks = get_env("toolapi").generate(2, "heldout", 0)
    respond = oracle("toolapi", tasks, "tflan")
    url = served(_OracleEngine(lambda p: respond(_prompt_pairs(p)), {"tflan": 1}))
    _, agent = model_agent("native")
    run_env("toolapi", tasks, agent, OpenAIEngine(ClientConfig(base_url=url, model="oracle")), tmp_path,
            protocol_name="native", agent_name="o", config={})
    recs = read_log(tmp_path / "episodes.jsonl")
    assert all(r["verdict"]["success"] for r in recs)


def test_cli_refuses_bad_options_and_a_port_in_use(tmp_path):
    from click.testing import CliRunner

    from agentflan.cli.main import cli

    runner = CliRunner()
    for args in (["--batch-size", "0"], ["--max-queue", "-1"], ["--port", "70000"], ["--max-body-mb", "0"], ["--max-per-client", "0"],
                 ["--max-new-tokens", "9000"]):
        res = runner.invoke(cli, ["serve", str(tmp_path), *args])
        assert res.exit_code == 2, (args, res.output)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = subprocess.run([sys.executable, "-m", "agentflan.cli.main", "serve", str(tmp_path), "--port", str(port)],
                             capture_output=True, text=True, timeout=120)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1 and lines[0].startswith("agentflan: error: cannot listen on"), \
        res.stderr


def test_loopback_check():
    from agentflan.cli.serve import is_loopback, listen_socket

    sock = listen_socket("127.0.0.1", 0)
    try:
        assert is_loopback(sock)
    finally:
        sock.close()
