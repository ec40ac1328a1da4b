"""`agentflan serve`'s OpenAI surface: every error in OpenAI's shape, parameters honoured or refused,
tool calling through the official `openai` client and an agent framework's loop, keys, limits."""

from __future__ import annotations

import json
import socket
import time
import urllib.request

import pytest

pytest.importorskip("fastapi", reason="serving extras not installed (pip install 'agentflan[serve]')")
pytest.importorskip("torch", reason="training extras not installed")

from agentflan.serve import Limits
from tests.unit.test_serve import _OracleEngine, _post
from tests.unit.test_serve import served as served

CALL = 'Thought: I should look it up.\nAction: get_weather\nAction Input: {"city": "Paris"}'
FINAL = 'Thought: I know now.\nAction: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "sunny"}'
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
USER = [{"role": "user", "content": "What is the weather in Paris?"}]


def _weather_model(prompt):
    """A scripted model speaking ReAct: call the tool, then answer from its result."""
    text = "\n".join(str(m.content) for m in prompt.messages)
    asked = str(prompt.messages[-1].content) if prompt.messages else ""
    if "sunny" in text:
        return FINAL
    if "get_weather" not in text:  # no tools shown (plain chat)
        return "Hello there."
    return CALL if "weather" in asked.lower() else "Thought: nothing to do.\nAction: Finish\nAction Input: " \
        '{"return_type": "give_answer", "final_answer": "hello"}'


@pytest.fixture
def weather(served):
    engine = _OracleEngine(_weather_model, {"react": 1})
    return engine, served(engine)


def _shape(err: object) -> dict:
    assert isinstance(err, dict) and set(err) == {"error"}, err
    assert set(err["error"]) == {"message", "type", "param", "code"}, err
    assert isinstance(err["error"]["message"], str) and err["error"]["message"]
    return err["error"]


def _raw(url: str, method: str, data: bytes | None = None, headers: dict | None = None) -> tuple[int, object]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


BAD = [  # (body change, status, param)
    ({"n": "abc"}, 400, "n"), ({"n": [2]}, 400, "n"), ({"n": 0}, 400, "n"), ({"n": 129}, 400, "n"),
    ({"temperature": -1}, 400, "temperature"), ({"temperature": "hot"}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"), ({"max_tokens": 0}, 400, "max_tokens"),
    ({"max_tokens": 10**6}, 400, "max_tokens"), ({"max_completion_tokens": 1.5}, 400, "max_completion_tokens"),
    ({"max_tokens": 5, "max_completion_tokens": 6}, 400, "max_tokens"), ({"seed": "x"}, 400, "seed"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"), ({"stop": 3}, 400, "stop"),
    ({"model": "../../etc/passwd"}, 404, "model"), ({"model": 3}, 404, "model"),
    ({"logprobs": True}, 400, "logprobs"), ({"response_format": {"type": "json_object"}}, 400, "response_format"),
    ({"frequency_penalty": 0.5}, 400, "frequency_penalty"), ({"functions": [{"name": "f"}]}, 400, "functions"),
    ({"wizard": 1}, 400, "wizard"), ({"stream": "yes"}, 400, "stream"),
    ({"stream_options": {"include_usage": True}}, 400, "stream_options"),
    ({"tool_choice": "required"}, 400, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, 400, "tool_choice"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, 400, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "no"}, 400, "parallel_tool_calls"),
    ({"messages": [{"role": "user", "content": "bad \ud800 text"}]}, 400, "messages[0].content"),
    ({"messages": []}, 400, "messages"), ({"messages": [{"role": "wizard", "content": "x"}]}, 400, None),
]


def test_every_error_in_openai_shape(weather):
    _, url = weather
    for change, status, param in BAD:
        code, err = _post(url + "/chat/completions", {"model": "oracle", "messages": USER, **change})
        e = _shape(err)
        assert code == status, (change, code, err)
        if param is not None:
            assert e["param"] == param, (change, err)
    assert _shape(_post(url + "/chat/completions", {"model": "oracle", "messages": USER,
                                                    "model_x": 1})[1])["message"].startswith("Unrecognized")
    code, err = _post(url + "/chat/completions", b"{not json")
    assert code == 400 and _shape(err)["code"] == "invalid_json"
    code, err = _post(url + "/chat/completions", b"[1]")
    assert code == 400 and _shape(err)
    deep = b"[" * 100_000 + b"]" * 100_000
    code, err = _post(url + "/chat/completions", b'{"messages": ' + deep + b"}")
    assert code == 400 and "nests deeper" in _shape(err)["message"]
    code, err = _post(url + "/chat/completions", b'{"temperature": NaN, "messages": []}')
    assert code == 400 and _shape(err)
    assert _raw(url + "/nowhere", "POST", b"{}")[0] == 404 and _shape(_raw(url + "/nowhere", "GET")[1])
    code, err = _raw(url + "/chat/completions", "GET")
    assert code == 405 and _shape(err)["code"] == "method_not_allowed"
    code, err = _raw(url + "/models/other", "GET")
    assert code == 404 and _shape(err)["code"] == "model_not_found"


def test_models_health_and_accepted_neutral_parameters(weather):
    _, url = weather
    with urllib.request.urlopen(url + "/models", timeout=10) as r:
        listed = json.loads(r.read())["data"]
    assert [m["id"] for m in listed] == ["oracle"] and isinstance(listed[0]["created"], int)
    assert listed[0]["protocol"] == "react"
    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as r:
        assert json.loads(r.read())["status"] == "ok"
    code, reply = _post(url + "/chat/completions", {
        "model": "oracle", "messages": USER, "logprobs": False, "frequency_penalty": 0, "user": "u1",
        "metadata": {"a": "b"}, "response_format": {"type": "text"}, "n": 1, "store": False})
    assert code == 200 and reply["choices"][0]["message"]["content"] == "Hello there."


def test_openai_client_tool_calls_choice_and_streaming(weather):
    openai = pytest.importorskip("openai")
    engine, url = weather
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    r = client.chat.completions.create(model="oracle", messages=USER, tools=TOOLS)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert r.usage is not None and r.model == "oracle"
    # the tool's result goes back; the model answers
    history = [*USER, choice.message.model_dump(exclude_none=True),
               {"role": "tool", "tool_call_id": call.id, "content": "sunny"}]
    r2 = client.chat.completions.create(model="oracle", messages=history, tools=TOOLS)
    assert r2.choices[0].message.content == "sunny" and r2.choices[0].finish_reason == "stop"
    # streamed: the same call as deltas, assembled by the client's own stream helper
    with client.chat.completions.stream(model="oracle", messages=USER, tools=TOOLS) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls[0]
    assert streamed.function.name == "get_weather" and json.loads(streamed.function.arguments) == {"city": "Paris"}
    assert streamed.id.startswith("call_") and final.choices[0].finish_reason == "tool_calls"
    chunks = list(client.chat.completions.create(model="oracle", messages=USER, tools=TOOLS, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    # tool_choice: none renders no tools (the model sees plain chat), required and a named function are checked
    engine.prompts.clear()
    r = client.chat.completions.create(model="oracle", messages=USER, tools=TOOLS, tool_choice="none")
    assert not r.choices[0].message.tool_calls and "get_weather" not in str(engine.prompts[-1].messages)
    r = client.chat.completions.create(model="oracle", messages=USER, tools=TOOLS, tool_choice="required")
    assert r.choices[0].message.tool_calls
    r = client.chat.completions.create(model="oracle", messages=USER, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"
    with pytest.raises(openai.UnprocessableEntityError, match="tool_choice"):
        client.chat.completions.create(model="oracle", messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
                                       tool_choice="required")
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=USER)
    assert [m.id for m in client.models.list()] == ["oracle"]


def test_agents_sdk_tool_loop_end_to_end(weather):
    """The OpenAI Agents SDK's own loop: the model calls the tool, the SDK runs it and sends its
    result, the model answers."""
    agents = pytest.importorskip("agents")
    openai = pytest.importorskip("openai")
    _, url = weather
    agents.set_tracing_disabled(True)
    seen: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The weather of a city."""
        seen.append(city)
        return "sunny"

    model = agents.OpenAIChatCompletionsModel(model="oracle", openai_client=openai.AsyncOpenAI(
        base_url=url, api_key="none", max_retries=0))
    agent = agents.Agent(name="weather", instructions="Answer with the tool.", tools=[get_weather], model=model)
    result = agents.Runner.run_sync(agent, "What is the weather in Paris?")
    assert seen == ["Paris"] and result.final_output == "sunny"


def test_api_key(served):
    url = served(_OracleEngine(_weather_model, {"react": 1}), api_keys=("s3cret",))
    code, err = _post(url + "/chat/completions", {"model": "oracle", "messages": USER})
    assert code == 401 and _shape(err)["code"] == "invalid_api_key"
    code, err = _raw(url + "/models", "GET", headers={"Authorization": "Bearer wrong"})
    assert code == 401 and _shape(err)["message"].startswith("Incorrect API key")
    assert _raw(url + "/models", "GET", headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert _raw(url.removesuffix("/v1") + "/health", "GET")[0] == 200  # probes need no key
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url, api_key="nope", max_retries=0).models.list()
    r = openai.OpenAI(base_url=url, api_key="s3cret", max_retries=0).chat.completions.create(
        model="oracle", messages=USER, tools=TOOLS)
    assert r.choices[0].message.tool_calls


def _send_and_read(port: int, head: bytes, body_parts: list[bytes]) -> tuple[bytes, float]:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head)
        try:
            for part in body_parts:
                s.sendall(part)
        except OSError:  # the server answered and closed before the body was all sent
            pass
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            got = s.recv(65536)
            if not got:
                break
            data += got
    return data, time.monotonic() - start


def test_oversized_body_is_413_at_once(served):
    url = served(_OracleEngine(_weather_model, {"react": 1}), limits=Limits(max_body_bytes=64 * 1024))
    port = int(url.split(":")[2].split("/")[0])
    # Content-Length says 50 MB: refused from the header, before the body is read (we send 64 KiB only)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 52428800\r\n\r\n")
    data, took = _send_and_read(port, head, [b"x" * 65536])
    assert data.startswith(b"HTTP/1.1 413") and took < 1.0, (data[:200], took)
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"
    # chunked (no length): counted as it arrives, refused once over the limit
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    part = b"%x\r\n%s\r\n" % (32768, b"x" * 32768)
    data, took = _send_and_read(port, head, [part] * 3)
    assert data.startswith(b"HTTP/1.1 413") and took < 1.0, (data[:200], took)
    # under the limit: served
    code, reply = _post(url + "/chat/completions", {"model": "oracle", "messages": USER, "tools": TOOLS})
    assert code == 200 and reply["choices"][0]["finish_reason"] == "tool_calls"


def test_parallel_tool_calls_false_keeps_one_call():
    """(ReAct states one call per reply; a structured protocol may read several.)"""
    from agentflan.formats.protocols import Action
    from agentflan.schema import ToolCall, Trajectory
    from agentflan.serve import Job, Server

    calls = [ToolCall(id="x", name="get_weather", arguments={"city": c}) for c in ("Paris", "Rome")]
    action = Action("call", thought="both", calls=calls)
    job = Job(traj=Trajectory(id="t", source={"format": "test"}, messages=[]), proto=None, max_tokens=8, explicit_max_tokens=False)
    message, dropped = Server.message(action, job)
    assert [json.loads(c["function"]["arguments"])["city"] for c in message["tool_calls"]] == ["Paris", "Rome"]
    assert len({c["id"] for c in message["tool_calls"]}) == 2 and dropped == 0
    job.parallel_tool_calls = False
    message, dropped = Server.message(action, job)
    assert len(message["tool_calls"]) == 1 and dropped == 1
    job.tool_choice = "function:other"
    with pytest.raises(Exception, match="tool_choice names 'other'"):
        Server.message(action, job)


def test_n_choices_with_tools_through_the_openai_client(weather):
    """Each choice is parsed by the protocol on its own: `tool_calls` per choice (own ids), also
    streamed, where the client's stream helper assembles the deltas per choice index."""
    openai = pytest.importorskip("openai")
    _, url = weather
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    r = client.chat.completions.create(model="oracle", messages=USER, tools=TOOLS, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2] and {c.finish_reason for c in r.choices} == {"tool_calls"}
    calls = [c.message.tool_calls[0] for c in r.choices]
    assert {c.function.name for c in calls} == {"get_weather"} and len({c.id for c in calls}) == 3
    with client.chat.completions.stream(model="oracle", messages=USER, tools=TOOLS, n=2) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    assert [json.loads(c.message.tool_calls[0].function.arguments) for c in final.choices] == [{"city": "Paris"}] * 2
    with pytest.raises(openai.UnprocessableEntityError, match="choice 0"):
        client.chat.completions.create(model="oracle", messages=[{"role": "user", "content": "hi"}], tools=TOOLS,
                                       tool_choice="required", n=2)


def test_429_per_client_and_503_when_full_as_the_openai_client_retries_them(served):
    """A client over `--max-per-client` gets 429 `rate_limit_exceeded` with `Retry-After` (other
    clients go on); the `openai` client waits what Retry-After says and retries, and its retry is
    served once the client's earlier request ended. A full queue is 503 with Retry-After, which the
    client also retries (overload), and which, with retries off, it raises as a server error."""
    openai = pytest.importorskip("openai")
    import threading

    gate = threading.Event()

    def slow(prompt):
        gate.wait(20)
        return "ok"

    url = served(_OracleEngine(slow, {"chat": 1}), api_keys=("key-a", "key-b"), max_per_client=1, max_active=4,
                 max_queue=0)
    server = served.servers[-1]
    ask = {"model": "oracle", "messages": [{"role": "user", "content": "hi"}]}
    a = openai.OpenAI(base_url=url, api_key="key-a", max_retries=0)
    b = openai.OpenAI(base_url=url, api_key="key-b", max_retries=0)
    done: list[str] = []
    first = threading.Thread(target=lambda: done.append(a.chat.completions.create(**ask).choices[0].message.content))
    first.start()
    deadline = time.monotonic() + 10
    while not server.scheduler.active and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(openai.RateLimitError) as limited:
        a.chat.completions.create(**ask)
    assert limited.value.status_code == 429 and limited.value.response.headers["retry-after"] == "1"
    assert _shape(limited.value.body and {"error": limited.value.body})["code"] == "rate_limit_exceeded"
    other = threading.Thread(target=lambda: done.append(b.chat.completions.create(**ask).choices[0].message.content))
    other.start()  # another key is not limited by key-a's request

    def open_gate_after_the_first_429() -> None:  # key-a's first request ends while its retry waits
        while server.refused[429] < 2 and time.monotonic() < deadline + 20:
            time.sleep(0.01)
        gate.set()

    threading.Thread(target=open_gate_after_the_first_429, daemon=True).start()
    start = time.monotonic()
    retried = openai.OpenAI(base_url=url, api_key="key-a", max_retries=2).chat.completions.create(**ask)
    waited = time.monotonic() - start
    first.join(20)
    other.join(20)
    assert retried.choices[0].message.content == "ok" and done == ["ok", "ok"]
    assert server.refused[429] == 2 and waited >= 0.9  # one 429 on the retried call, then Retry-After's second
    assert json.loads(urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=5).read())["refused"] == \
        {"429": 2}
    # the queue full (4 running, none may wait): 503 with Retry-After; the openai client retries it too
    gate.clear()
    clients = [openai.OpenAI(base_url=url, api_key="key-a" if i % 2 else "key-b", max_retries=0) for i in range(4)]
    server.max_per_client = 4
    running = [threading.Thread(target=lambda c=c: c.chat.completions.create(**ask)) for c in clients]
    for t in running:
        t.start()
    while len(server.scheduler.active) + server.scheduler.waiting.qsize() < 4 and time.monotonic() < deadline + 40:
        time.sleep(0.01)
    with pytest.raises(openai.InternalServerError) as busy:
        b.chat.completions.create(**ask)
    assert busy.value.status_code == 503 and busy.value.response.headers["retry-after"] == "1"
    threading.Timer(0.3, gate.set).start()
    again = openai.OpenAI(base_url=url, api_key="key-b", max_retries=2).chat.completions.create(**ask)
    for t in running:
        t.join(20)
    assert again.choices[0].message.content == "ok" and server.refused[503] == 2
