"""Continuous batching on a real (tiny) model: rows join and leave between steps and compute what
they compute alone; a poison request fails alone; streaming is token by token; a client that hangs
up stops its generation."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi", reason="serving extras not installed (pip install 'agentflan[serve]')")
pytest.importorskip("torch", reason="training extras not installed")

from agentflan.formats.protocols import Prompt
from agentflan.models.batching import Row, Sampling
from agentflan.models.engines import HFEngine
from agentflan.schema import UserMessage
from agentflan.serve import Limits
from agentflan.training.models import tiny_model, tiny_tokenizer
from tests.unit.test_serve import _OracleEngine, _post
from tests.unit.test_serve import served as served

WORDS = ["Thought: I need a tool", "Action: Finish", 'Action Input: {"final_answer": "x"}', "hello world",
         "the weather in Paris is sunny"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a busy shared machine two spinning threads make a tiny model ~50x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _engine(**kw) -> HFEngine:
    tok = tiny_tokenizer(WORDS * 3)
    return HFEngine("tiny", model=tiny_model(len(tok)), tokenizer=tok, template="agentflan",
                    **{"prefix_cache_gb": 0, **kw})


def _prompt(k: int) -> Prompt:
    return Prompt([UserMessage(content="hello " * k + "world")])


def test_rows_join_and_leave_between_steps_and_compute_what_they_compute_alone():
    engine = _engine(batch_size=1, max_new_tokens=12, prefix_cache_gb=0.1)
    prompts = [_prompt(k) for k in range(1, 7)]
    alone = engine.generate(prompts)  # one at a time (eval's decoder, tested equal to model.generate)
    dec = engine.decoder()
    rows = [Row(p, Sampling(max_tokens=12)) for p in prompts]
    short = Row(_prompt(3), Sampling(max_tokens=2))
    todo = [*rows[:3], short, *rows[3:]]
    dec.add(todo.pop(0))
    left_at: dict[int, int] = {}
    widths = []
    while len(dec) or todo:
        for r in dec.step():
            left_at[id(r)] = dec.steps
        widths.append(len(dec.rows))
        if todo:  # one more joins after every step, while others are mid-generation
            dec.add(todo.pop(0))
    assert [r.text for r in rows] == [c.text for c in alone]
    assert all(r.finish in ("stop", "length") for r in rows)
    assert short.finish == "length" and short.tokens == 2
    assert left_at[id(short)] == 5  # joined at step 4, left after its 2 tokens while the others ran on
    assert max(widths) > 1 and dec.cache is None and dec.rows == []


def test_per_row_stop_strings_and_seeded_sampling():
    engine = _engine(max_new_tokens=16)
    dec = engine.decoder()
    free = Row(_prompt(2), Sampling(max_tokens=16))
    dec.add(free)
    while len(dec):
        dec.step()
    assert len(free.text) > 4
    tok = engine.tokenizer
    # a stop string across a token boundary: its first character is generated a step before the rest
    ends = [len(tok.decode(free.new[:j])) for j in range(1, len(free.new))
            if free.text.startswith(tok.decode(free.new[:j]))]
    at = next(e for e in ends if 0 < e < len(free.text) and free.text[e - 1:e + 1] not in free.text[:e])
    stop = free.text[at - 1:at + 1]
    pieces: list[str] = []
    cut = Row(_prompt(2), Sampling(max_tokens=16), stops=(stop,), on_text=pieces.append)
    dec.add(cut)
    while len(dec):
        dec.step()
    assert cut.text == free.text[:free.text.index(stop)] and cut.stop == stop and cut.finish == "stop"
    assert "".join(pieces) == cut.text  # the stop string's start was held back, never sent

    def sample(seed: int, others: int) -> str:
        rows = [Row(_prompt(4), Sampling(max_tokens=10, temperature=1.5, top_p=0.9, seed=seed))]
        rows += [Row(_prompt(k), Sampling(max_tokens=10, temperature=1.0)) for k in range(others)]
        for r in rows:
            dec.add(r)
        while len(dec):
            dec.step()
        return rows[0].text

    assert sample(7, 0) == sample(7, 3)  # a seeded row draws the same, whatever shares its batch
    assert len({sample(s, 0) for s in range(5)}) > 1


def _body(content: str, **kw) -> dict:
    return {"messages": [{"role": "user", "content": content}], **kw}


def test_a_poison_request_fails_alone(served):
    engine = _engine(max_new_tokens=8)
    real = engine.prompt_ids

    def prompt_ids(prompt: Prompt) -> list[int]:
        if "POISON" in str(prompt.messages[-1].content):
            raise ValueError("the tokenizer choked")
        return real(prompt)

    engine.prompt_ids = prompt_ids  # type: ignore[method-assign]
    engine.context = 96  # a long request overflows the context
    url = served(engine, max_active=16)
    solo = _post(url + "/chat/completions", _body("hello world 0"))[1]
    results: dict[str, tuple[int, object]] = {}
    bodies = {f"good{i}": _body(f"hello world {i % 3}") for i in range(8)}
    bodies["poison"] = _body("POISON hello")
    bodies["long"] = _body("hello world " * 80)
    bodies["surrogate"] = _body("hello \ud800 world")
    threads = [threading.Thread(target=lambda k=k, b=b: results.__setitem__(k, _post(url + "/chat/completions", b)))
               for k, b in bodies.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {k: results[k][0] for k in ("poison", "long", "surrogate")} == {"poison": 400, "long": 400,
                                                                           "surrogate": 400}
    assert "tokenized" in results["poison"][1]["error"]["message"]  # type: ignore[index]
    assert results["long"][1]["error"]["code"] == "context_length_exceeded"  # type: ignore[index]
    assert all(results[f"good{i}"][0] == 200 for i in range(8)), results
    texts = [results[f"good{i}"][1]["choices"][0]["message"]["content"] for i in (0, 3, 6)]  # type: ignore[index]
    assert texts == [solo["choices"][0]["message"]["content"]] * 3  # type: ignore[index]


def test_streaming_is_token_by_token_and_length_is_reported(served):
    engine = _engine()
    engine.stop_ids, engine.end_stops = set(), ()  # the reply runs to max_tokens
    url = served(engine)
    whole = _post(url + "/chat/completions", _body("hello world", max_tokens=6))[1]
    assert whole["choices"][0]["finish_reason"] == "length" and whole["usage"]["completion_tokens"] == 6
    code, text = _post(url + "/chat/completions", _body("hello world", max_tokens=6, stream=True,
                                                         stream_options={"include_usage": True}))
    chunks = [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    assert code == 200 and len([p for p in pieces if p]) >= 3  # not one lump at the end
    assert "".join(p for p in pieces if p) == whole["choices"][0]["message"]["content"]
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 6


def _hang_up_after(port: int, body: dict, wait_for) -> None:
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    deadline = time.monotonic() + 20
    while not wait_for() and time.monotonic() < deadline:
        time.sleep(0.02)
    s.close()


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_hangs_up_stops_its_generation(served, stream):
    engine = _engine()
    engine.stop_ids, engine.end_stops = set(), ()
    url = served(engine, limits=Limits(max_tokens_limit=100_000))
    port = int(url.split(":")[2].split("/")[0])
    decoder_of = lambda: served.servers[-1].scheduler.backend  # noqa: E731
    scheduler = served.servers[-1].scheduler
    _hang_up_after(port, _body("hello world", max_tokens=4000, stream=stream),
                   lambda: decoder_of().tokens_generated > 20)
    deadline = time.monotonic() + 5
    while scheduler.active and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not scheduler.active and not len(decoder_of())
    generated = decoder_of().tokens_generated
    time.sleep(0.3)
    assert decoder_of().tokens_generated == generated and 20 < generated < 1000
    # the server is still up and serving
    assert _post(url + "/chat/completions", _body("hello", max_tokens=3))[0] == 200


def test_deadline_ends_a_request_with_504(served):
    engine = _engine()
    engine.stop_ids, engine.end_stops = set(), ()
    url = served(engine, limits=Limits(max_tokens_limit=100_000, request_timeout=0.5))
    start = time.monotonic()
    code, err = _post(url + "/chat/completions", _body("hello", max_tokens=4000))
    assert code == 504 and err["error"]["code"] == "timeout" and time.monotonic() - start < 5


class _Faulty:
    """The decoder's model, raising (as a device-side assert or a NaN check would) in every step
    where `bad(decoder)` holds."""

    def __init__(self, decoder, bad) -> None:
        self.model, self.decoder, self.bad = decoder.model, decoder, bad
        self.config = decoder.model.config
        self.raised = 0

    def __call__(self, **kw):
        if self.bad(self.decoder):
            self.raised += 1
            raise RuntimeError("CUDA error: device-side assert triggered")
        return self.model(**kw)


def _stream_text(url: str, body: dict) -> tuple[int, str]:
    code, text = _post(url + "/chat/completions", {**body, "stream": True})
    chunks = [json.loads(line[6:]) for line in str(text).splitlines() if line.startswith("data: {")]
    if any("error" in c for c in chunks):
        return 500, ""
    return code, "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))


@pytest.mark.parametrize("fault", ["poison", "transient"])
def test_a_model_that_raises_mid_step_fails_only_the_request_that_makes_it(served, fault):
    """The model raises in a decoding step while six requests are mid-generation: each of the
    step's requests starts again alone; the one that makes the model raise ('poison': whenever it is
    in the batch) fails with 500, the others (greedy, seeded sampling, streaming) get 200 with the
    text they get without the fault."""
    engine = _engine()
    engine.stop_ids, engine.end_stops = set(), ()  # every reply runs to its max_tokens
    armed = threading.Event()
    models: list[_Faulty] = []
    real = engine.decoder

    def poisoned(dec) -> bool:
        return any("POISON" in str(r.prompt.messages[-1].content) for r in dec.rows)

    def transient(dec) -> bool:
        if armed.is_set() and len(dec.rows) >= 3:
            armed.clear()
            return True
        return False

    def decoder():
        dec = real()
        dec.model = _Faulty(dec, poisoned if fault == "poison" else transient)
        models.append(dec.model)
        return dec

    engine.decoder = decoder  # type: ignore[method-assign]
    url = served(engine, max_active=16)
    scheduler = served.servers[-1].scheduler
    goods = {f"good{i}": _body(f"hello world {i}", max_tokens=24) for i in range(6)}
    goods["good4"].update(temperature=1.0, seed=5)
    alone = {k: _post(url + "/chat/completions", b)[1]["choices"][0]["message"]["content"]  # type: ignore[index]
             for k, b in goods.items()}
    results: dict[str, tuple[int, object]] = {}

    def send(k: str, b: dict) -> None:
        results[k] = _stream_text(url, b) if k == "good5" else _post(url + "/chat/completions", b)

    threads = [threading.Thread(target=send, args=item) for item in goods.items()]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while len(scheduler.active) < 6 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(scheduler.active) == 6  # all six are mid-generation when the fault comes
    if fault == "poison":
        threads.append(threading.Thread(target=send, args=("poison", _body("POISON hello", max_tokens=24))))
        threads[-1].start()
    else:
        armed.set()
    for t in threads:
        t.join(60)
    assert scheduler.faults == 1 and sum(m.raised for m in models) == (2 if fault == "poison" else 1)
    if fault == "poison":
        code, err = results.pop("poison")
        assert code == 500 and "device-side assert" in err["error"]["message"]  # type: ignore[index]
    assert {k: r[0] for k, r in results.items()} == dict.fromkeys(goods, 200)
    got = {k: r[1] if k == "good5" else r[1]["choices"][0]["message"]["content"]  # type: ignore[index]
           for k, r in results.items()}
    assert got == alone
    assert _post(url + "/chat/completions", _body("hello", max_tokens=3))[0] == 200  # and the server goes on


def test_n_choices_sampled_independently_with_per_choice_seeds_and_streamed_by_index(served):
    """`n`: independent choices in one request (each its own row in the batch), `index` on each,
    usage summed; with `seed` the first choice is the `n=1` reply and every choice is the same on a
    rerun; streamed, every chunk names its choice and the pieces assemble to the same texts."""
    openai = pytest.importorskip("openai")
    engine = _engine()
    engine.stop_ids, engine.end_stops = set(), ()
    url = served(engine)
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    ask = {"model": "tiny", "messages": [{"role": "user", "content": "hello world"}], "max_tokens": 8,
           "temperature": 1.0, "seed": 11}
    r = client.chat.completions.create(n=4, **ask)
    texts = [c.message.content for c in r.choices]
    assert [c.index for c in r.choices] == [0, 1, 2, 3] and len(set(texts)) > 1
    assert r.usage.completion_tokens == 4 * 8 and all(c.finish_reason == "length" for c in r.choices)
    one = client.chat.completions.create(**ask)
    assert one.choices[0].message.content == texts[0] and r.usage.prompt_tokens == 4 * one.usage.prompt_tokens
    assert [c.message.content for c in client.chat.completions.create(n=4, **ask).choices] == texts
    pieces: dict[int, list[str]] = {}
    finishes: dict[int, str] = {}
    usage = None
    for chunk in client.chat.completions.create(n=4, stream=True, stream_options={"include_usage": True}, **ask):
        for c in chunk.choices:
            pieces.setdefault(c.index, []).append(c.delta.content or "")
            if c.finish_reason:
                finishes[c.index] = c.finish_reason
        usage = chunk.usage or usage
    assert ["".join(pieces[i]) for i in range(4)] == texts and finishes == dict.fromkeys(range(4), "length")
    assert all(len([p for p in pieces[i] if p]) > 1 for i in range(4))  # token by token, not one lump each
    assert usage is not None and usage.completion_tokens == 4 * 8
    greedy = client.chat.completions.create(n=2, **{**ask, "temperature": 0})
    assert greedy.choices[0].message.content == greedy.choices[1].message.content


def test_n_beyond_what_the_server_runs_is_400_and_n_beyond_its_free_room_is_503(served):
    """A request's choices are queued together or not at all."""
    gate = threading.Event()

    def slow(prompt):
        gate.wait(20)
        return "ok"

    url = served(_OracleEngine(slow, {"chat": 1}), max_active=1, max_queue=2)
    code, err = _post(url + "/chat/completions", _body("hello", n=4))
    assert code == 400 and err["error"]["param"] == "n" and "at most 3" in err["error"]["message"]  # type: ignore[index]
    scheduler = served.servers[-1].scheduler
    first: list[tuple[int, object]] = []
    held = threading.Thread(target=lambda: first.append(_post(url + "/chat/completions", _body("hello"))))
    held.start()
    deadline = time.monotonic() + 10
    while not scheduler.active and time.monotonic() < deadline:
        time.sleep(0.01)
    code, err = _post(url + "/chat/completions", _body("hello", n=3))  # two places left, three choices
    assert code == 503 and err["error"]["code"] == "server_busy"  # type: ignore[index]
    assert scheduler.waiting.qsize() == 0  # none of its choices was queued
    gate.set()
    held.join(20)
    code, reply = _post(url + "/chat/completions", _body("hello", n=3))
    assert first[0][0] == 200 and code == 200 and [c["index"] for c in reply["choices"]] == [0, 1, 2]  # type: ignore[index]


def test_an_unseeded_row_restarted_after_a_fault_draws_the_same_tokens():
    """A sampled row without a seed keeps the seed it drew, so its rerun alone (`serve._fresh`)
    generates what it was generating, and its stream does not send again what was sent."""
    from agentflan.serve import _fresh

    engine = _engine(max_new_tokens=10)
    engine.stop_ids, engine.end_stops = set(), ()
    pieces: list[str] = []
    row = Row(_prompt(3), Sampling(max_tokens=10, temperature=1.0), on_text=pieces.append)
    dec = engine.decoder()
    dec.add(row)
    for _ in range(4):  # partway: the fault comes here
        dec.step()
    assert row.sampling.seed is not None and 0 < row.emitted < 40
    again = _fresh(row)
    dec = engine.decoder()
    dec.add(again)
    while len(dec):
        dec.step()
    whole = Row(_prompt(3), Sampling(max_tokens=10, temperature=1.0, seed=row.sampling.seed))
    dec.add(whole)
    while len(dec):
        dec.step()
    assert again.text == whole.text and "".join(pieces) == whole.text
