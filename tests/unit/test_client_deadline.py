"""The client's whole-request deadline and its empty replies, against a loopback server."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agentflan.client import ClientConfig, EmptyReply, OpenAIClient, RequestError
from agentflan.envs import get_env
from agentflan.eval.envs import model_agent, run_env
from agentflan.models.engines import OpenAIEngine

REPLY = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Final Answer: 42"},
                                 "finish_reason": "stop"}]}).encode()


class _Server(BaseHTTPRequestHandler):
    mode = "trickle"
    calls = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        type(self).calls += 1
        if self.mode == "trickle":  # the whole reply over about 4 s, a byte every 50 ms
            body = REPLY + b" " * max(0, 80 - len(REPLY))
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            try:
                for i in range(len(body)):
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up: as it should
                return
            return
        message = {"role": "assistant", "content": None}
        if self.mode == "null-refusal":
            message["refusal"] = "I cannot help with that."
        body = json.dumps({"choices": [{"message": message, "finish_reason": "length"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Server.calls = 0
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.shutdown()


def test_timeout_bounds_the_whole_request_not_each_read(server):
    _Server.mode = "trickle"
    client = OpenAIClient(ClientConfig(base_url=server, model="m", timeout_s=1.0, retries=0))
    start = time.monotonic()
    with pytest.raises(RequestError, match="timed out") as err:
        client.chat(client.body([{"role": "user", "content": "hi"}]))
    took = time.monotonic() - start
    assert took < 2.0, took  # each byte came within the socket timeout: only a whole-request deadline stops it
    assert err.value.retryable
    slow = OpenAIClient(ClientConfig(base_url=server, model="m", timeout_s=30.0, retries=0))
    assert slow.chat(slow.body([{"role": "user", "content": "hi"}]))["choices"][0]["message"]["content"]


@pytest.mark.parametrize("mode", ["null", "null-refusal"])
def test_a_null_reply_is_an_empty_reply_error_never_an_answer(server, tmp_path, mode):
    _Server.mode = mode
    client = OpenAIClient(ClientConfig(base_url=server, model="m", retries=2, cache=str(tmp_path / "c.jsonl")))
    with pytest.raises(EmptyReply, match=r"empty reply \(content null, no tool calls; finish_reason length") as err:
        client.chat(client.body([{"role": "user", "content": "hi"}]))
    assert ("refusal 'I cannot help" in str(err.value)) == (mode == "null-refusal")
    assert _Server.calls == 1 and not (tmp_path / "c.jsonl").exists()  # not retried, not cached
    tasks = get_env("toolapi").generate(3, "heldout", 0)
    proto, agent_for = model_agent("react")
    run = run_env("toolapi", tasks, agent_for, OpenAIEngine(ClientConfig(base_url=server, model="m", retries=0)),
                  tmp_path / "run", protocol_name=proto.name, agent_name="m", config={})
    assert run.summary["errors"] == 3 and run.summary["scored"] == 0, run.summary
    assert all("empty reply" in r["error"] and r["verdict"] is None for r in run.records)
