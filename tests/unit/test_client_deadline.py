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


def test_a_body_cut_by_the_deadline_is_a_timeout_not_a_bad_reply(server, monkeypatch):
    """When the watchdog's shutdown (not a read's own timeout) ends a trickled body, the read sees an
    early end: what arrived is cut JSON, and the error must be the deadline, retryable."""
    import agentflan.client as client_mod

    def read_without_timeouts(resp, deadline, timeout_s):  # only the watchdog can stop this read
        parts = []
        while chunk := resp.read1(1 << 16):
            parts.append(chunk)
        return b"".join(parts)

    monkeypatch.setattr(client_mod, "_read_by", read_without_timeouts)
    _Server.mode = "trickle"
    client = OpenAIClient(ClientConfig(base_url=server, model="m", timeout_s=1.0, retries=0))
    with pytest.raises(RequestError, match="timed out") as err:
        client.chat(client.body([{"role": "user", "content": "hi"}]))
    assert err.value.retryable


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


# ---- the response headers, against a raw socket server ---------------------------------------------

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: " + b"p" * 60 + b"\r\n"
        b"Content-Length: " + str(len(REPLY)).encode() + b"\r\nConnection: close\r\n\r\n")


@pytest.fixture
def raw_server():
    """A TCP server that answers each connection as `state["mode"]` says: `silent` reads the request
    and never answers, `trickle-headers` sends the status line and headers a byte every 50 ms (about
    8 s), `garbage` answers something that is not HTTP, `ok` answers at once."""
    import socket

    state = {"mode": "silent", "connections": 0}
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def handle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                if state["mode"] == "silent":
                    stop.wait(30)
                elif state["mode"] == "trickle-headers":
                    for i in range(len(HEAD)):
                        conn.sendall(HEAD[i:i + 1])
                        if stop.wait(0.05):
                            return
                    conn.sendall(REPLY)
                elif state["mode"] == "garbage":
                    conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
                else:
                    conn.sendall(HEAD + REPLY)
            except OSError:  # the client hung up: as it should at its deadline
                return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            state["connections"] += 1
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    yield state, f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    stop.set()
    listener.close()


def _timers() -> int:
    return sum(isinstance(t, threading.Timer) and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("mode", ["silent", "trickle-headers"])
def test_timeout_bounds_the_wait_for_the_response_headers(raw_server, mode):
    state, url = raw_server
    state["mode"] = mode
    client = OpenAIClient(ClientConfig(base_url=url, model="m", timeout_s=1.0, retries=1, backoff_s=0))
    start = time.monotonic()
    with pytest.raises(RequestError, match=r"timed out after 1 s \(the whole request") as err:
        client.chat(client.body([{"role": "user", "content": "hi"}]))
    took = time.monotonic() - start
    # two attempts of 1 s each; a per-read timeout lets the trickled headers (8 s) through
    assert 2.0 <= took < 3.5, took
    assert err.value.retryable and err.value.attempts == 2 and state["connections"] == 2
    assert _timers() == 0  # every watchdog cancelled or spent


def test_a_reply_within_the_deadline_is_untouched_by_its_watchdog(raw_server):
    state, url = raw_server
    state["mode"] = "ok"
    client = OpenAIClient(ClientConfig(base_url=url, model="m", timeout_s=0.5, retries=0))
    for i in range(3):  # each watchdog is cancelled: none fires into a later request
        reply = client.chat(client.body([{"role": "user", "content": f"hi {i}"}]))
        assert reply["choices"][0]["message"]["content"] == "Final Answer: 42"
    time.sleep(0.6)
    assert _timers() == 0 and client.failures == 0


def test_a_reply_that_is_not_http_is_a_request_error(raw_server):
    state, url = raw_server
    state["mode"] = "garbage"
    client = OpenAIClient(ClientConfig(base_url=url, model="m", timeout_s=5.0, retries=3, backoff_s=0))
    with pytest.raises(RequestError, match="the reply is not HTTP") as err:
        client.chat(client.body([{"role": "user", "content": "hi"}]))
    assert not err.value.retryable and state["connections"] == 1  # another server on that port: not retried
