"""`agentflan serve MODEL`: an OpenAI-compatible chat server for a model saved by `agentflan train`,
prompting it exactly as it was trained.

A request with `tools` (or with tool calls and results in its history) is rendered by the
model's trained protocol (`agentflan.json`, or `--protocol`, or the request's `protocol` field)
and its trained chat template; the reply is parsed by the same protocol and returned as OpenAI
`tool_calls` (T-FLAN's elicit turns are played inside the server: one request, one action). A
request without tools is plain chat through the template.

Scheduling: one thread runs the local engine's `ContinuousDecoder` (`models.batching`): a request's
generation joins the running batch at the next decoding step and leaves it when done, at most
`max_active` requests at once; up to `max_queue` more wait, and beyond that the server answers
503 with `Retry-After`; a client (its key, or its address) over `max_per_client` gets 429 with
`Retry-After`. Every request is validated at the door (size, JSON depth, lone surrogates, every
parameter) and tokenized alone: a request that fails, fails alone with a 4xx. When the model
itself raises in a step, the step's requests rerun one by one so only the one that makes it
raise fails (500). A request whose client went away, or whose deadline passed, leaves the batch
at the next step.

OpenAI's surface: `max_tokens`/`max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`
(with tools it cuts the raw reply before the protocol reads it, as vLLM does), `n` (independent
choices, per-choice seeds), `tools`, `tool_choice` (`auto`,
`none`: tools not rendered, `required` and a named function: checked on the parsed reply, 422
when the model did not comply), `parallel_tool_calls`, `stream` (chat: token by token; tools: the
parsed calls as deltas once the reply is whole) with `stream_options.include_usage`. Any other
parameter is rejected with 400 unless it asks for nothing (`logprobs: false`,
`frequency_penalty: 0`, `user`, `metadata`, ...). Every error is `{"error": {"message", "type",
"param", "code"}}`.

Extensions (ignored by other clients): request fields `protocol` and `final_tool` (the tool whose
call is the final answer; default: a tool named Finish, finish, final_answer or answer); response
field `agentflan` with the protocol, the action kind (`call`, `answer`, `unparseable`), its error,
and every generated text. A `stop_reason` names the stop string that ended a reply, as vLLM does.
"""

# no `from __future__ import annotations`: FastAPI resolves the endpoints' annotations at runtime
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import queue
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from agentflan.client import ContextLimitError, RequestError
from agentflan.errors import ConfigError, ParseError
from agentflan.formats.openai import tool_call_dicts
from agentflan.formats.protocols import Action, Completion, Prompt, Protocol, conversation_key, get_protocol
from agentflan.models.batching import Row, Sampling
from agentflan.models.engines import Engine
from agentflan.schema import Trajectory

log = logging.getLogger(__name__)
FINAL_TOOL_NAMES = ("Finish", "finish", "final_answer", "answer")
MAX_STOPS = 4
MAX_N = 128


class HTTPError(Exception):
    """An answer other than 200, in OpenAI's error shape."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class Cancelled(Exception):
    """The client went away; nothing more is generated for its request."""


@dataclass
class Limits:
    """What one request may ask (`agentflan serve --help` names each)."""

    max_tokens: int = 512
    """Generated tokens when a request names none."""
    max_tokens_limit: int = 4096
    """The most a request may ask for (400 above)."""
    max_prompt_tokens: int | None = None
    """The longest prompt (None: the model's context less one token)."""
    max_body_bytes: int = 2 * 2**20
    request_timeout: float = 600.0
    """Seconds from arrival (queue included) until the request fails with 504."""
    max_depth: int = 64
    """JSON nesting."""


@dataclass
class Job:
    """A validated request."""

    traj: Trajectory
    proto: Protocol | None
    """None: plain chat (no tools rendered)."""
    max_tokens: int
    explicit_max_tokens: bool
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    tool_choice: str = "auto"
    """`auto`, `none`, `required`, or `function:NAME`."""
    parallel_tool_calls: bool = True
    n: int = 1
    """Choices, generated independently."""


@dataclass(eq=False)
class Session:
    """A request in the scheduler: its protocol generator and what its generations cost."""

    job: Job
    gen: Generator[Prompt, Completion, Any]
    deadline: float
    on_text: Callable[[str], None] | None = None
    future: Future[Any] = field(default_factory=Future)
    row: Row | None = None
    cancelled: bool = False
    value: Any = None
    tokens: int = 0
    prompt_tokens: int = 0
    generations: int = 0
    cut: bool = False
    """A generation stopped at its token limit."""
    stop_reason: str | None = None
    arrival: float = field(default_factory=time.monotonic)
    index: int = 0
    """Which of the request's `n` choices."""
    seed: int | None = None
    """This choice's seed (`choice_seed`)."""

    def cancel(self) -> None:
        self.cancelled = True


class LockstepBackend:
    """Any `Engine` behind the scheduler: the rows present at a step are generated together, to
    their end, by one `generate` call (test engines; the continuous decoder is the real path)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.rows: list[Row] = []

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: Row) -> None:
        self.rows.append(row)

    def remove(self, row: Row) -> None:
        if row in self.rows:
            self.rows.remove(row)

    def step(self) -> list[Row]:
        rows, self.rows = self.rows, []
        for row, out in zip(rows, self.engine.generate([r.prompt for r in rows]), strict=True):
            if isinstance(out, RequestError):
                raise out
            row.text, row.stop, row.finish, row.tokens = out.text, out.stop, "stop", out.tokens
            if row.on_text is not None and out.text:
                row.on_text(out.text)
        return rows


class Scheduler:
    """Runs sessions on one engine from a worker thread: continuous batching when the engine has a
    `decoder()` (`HFEngine`), lockstep rounds otherwise."""

    def __init__(self, engine: Engine, limits: Limits, max_active: int = 16, max_queue: int = 64) -> None:
        if max_active < 1:
            raise ConfigError(f"max_active must be at least 1, not {max_active}")
        self.engine = engine
        self.limits = limits
        self.max_active = max_active
        self.waiting: queue.Queue[Session] = queue.Queue()  # bounded by `submit`
        self.queue_limit = max(0, max_queue)
        self.lock = threading.Lock()
        self.active: set[Session] = set()
        self.backend: Any = self._backend()
        self.context: int | None = getattr(engine, "context", None)
        self.suspects: deque[Session] = deque()
        """After a fault: the step's requests, each to run alone (`_fault`)."""
        self.solo: Session | None = None
        """The suspect running alone now."""
        self.held: list[Session] = []
        """Requests whose next generation waits until the isolation is over."""
        self.faults = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="agentflan-scheduler", daemon=True)
        self.thread.start()

    def _backend(self) -> Any:
        make = getattr(self.engine, "decoder", None)
        return make() if callable(make) else LockstepBackend(self.engine)

    def submit(self, sessions: list[Session]) -> None:
        """Queue `sessions` (a request's choices) together or not at all: 503 with `Retry-After`
        when the queue has no room for them all (or the server is stopping)."""
        if self.stopped.is_set():
            raise HTTPError(503, "the server is shutting down", "server_error", code="server_shutting_down")
        with self.lock:  # one submitter at a time: the room seen is still there when they are queued
            room = self.queue_limit + max(0, self.max_active - len(self.active)) - self.waiting.qsize()
            if len(sessions) > room:
                raise self._busy()
            for session in sessions:
                self.waiting.put_nowait(session)

    @staticmethod
    def _busy() -> HTTPError:
        return HTTPError(503, "the server is busy (request queue full); retry later", "server_error",
                         code="server_busy", headers={"Retry-After": "1"})

    def stop(self) -> None:
        """Stop the worker; every request still queued or running fails with 503."""
        self.stopped.set()
        self.thread.join(timeout=30)
        gone = HTTPError(503, "the server is shutting down", "server_error", code="server_shutting_down")
        for s in list(self.active):
            self._fail(s, gone)
        while True:
            try:
                self._fail(self.waiting.get_nowait(), gone)
            except queue.Empty:
                break

    # ---- the worker thread ----

    def _loop(self) -> None:
        try:
            self._run()
        except BaseException as e:  # a bug here must not leave requests hanging: they fail, /health says so
            log.exception("the scheduler stopped")
            self.stopped.set()
            error = HTTPError(500, f"the scheduler stopped: {type(e).__name__}: {e}"[:500], "server_error")
            for s in list(self.active):
                self._fail(s, error)
            raise

    def _run(self) -> None:
        while not self.stopped.is_set():
            self._reap()
            if self.solo is None and self.suspects:  # isolating after a fault: the next suspect runs alone
                session = self.suspects.popleft()
                self.solo = session
                if session.row is not None:
                    self._join(session, _fresh(session.row))
            if self.solo is None and not self.suspects:
                held, self.held = self.held, []
                for session in held:
                    if session.row is not None:
                        self._join(session, session.row)
                self._admit()
            if not len(self.backend):
                self.solo = None  # the suspect failed at the door or was cancelled
                if not self.active:  # idle: wait for work without spinning
                    with contextlib.suppress(queue.Empty):
                        self._start(self.waiting.get(timeout=0.05))
                continue
            try:
                finished = self.backend.step()
            except Exception as e:  # the model itself failed in this step
                self._fault(e)
                continue
            for row in finished:
                session = row.owner
                if session is self.solo:
                    self.solo = None
                if session in self.active:
                    self._finished(session, row)

    def _fault(self, error: Exception) -> None:
        """The model raised during a step: the step's rows start again, each alone, so the request
        that makes it raise (a bad sequence, a numeric fault) fails by itself with 500 and the others
        complete with what they would have generated (a row restarts with its own seed, and its
        stream resumes where it was). A row that raised alone fails at once."""
        log.exception("generation failed (%d rows in the step)", len(self.backend))
        in_step = [s for s in self.active if self._in_backend(s)]
        self.backend = self._backend()
        if self.solo is not None or len(in_step) == 1:
            failure = HTTPError(500, f"generation failed: {type(error).__name__}: {error}"[:500], "server_error")
            for s in in_step:
                self._fail(s, failure)
        else:
            self.faults += 1
            self.suspects.extend(sorted(in_step, key=lambda s: s.arrival))
        self.solo = None

    def _in_backend(self, session: Session) -> bool:
        return session.row is not None and session not in self.held and session not in self.suspects

    def _admit(self) -> None:
        while len(self.active) < self.max_active:
            try:
                session = self.waiting.get_nowait()
            except queue.Empty:
                return
            self._start(session)

    def _start(self, session: Session) -> None:
        if session.cancelled or time.monotonic() > session.deadline:
            self._fail(session, Cancelled() if session.cancelled else self._late())
            return
        self.active.add(session)
        self._next(session, None)

    @staticmethod
    def _late() -> HTTPError:
        return HTTPError(504, "the request ran past the server's deadline (--request-timeout)", "server_error",
                         code="timeout")

    def _reap(self) -> None:
        now = time.monotonic()
        for s in list(self.active):
            if s.cancelled or now > s.deadline:
                if s in self.held:
                    self.held.remove(s)
                elif s in self.suspects:
                    self.suspects.remove(s)
                elif s.row is not None:
                    self.backend.remove(s.row)
                if s is self.solo:
                    self.solo = None
                self._fail(s, Cancelled() if s.cancelled else self._late())

    def _fail(self, session: Session, error: BaseException) -> None:
        self.active.discard(session)
        session.row = None
        session.gen.close()
        if not session.future.done():
            session.future.set_exception(error)

    def _finished(self, session: Session, row: Row) -> None:
        session.row = None
        session.generations += 1
        session.tokens += row.tokens
        session.prompt_tokens += len(row.ids)
        session.cut = session.cut or row.finish == "length"
        session.stop_reason = row.stop
        stop = row.stop if row.stop in row.prompt.stop else None
        self._next(session, Completion(text=row.text, stop=stop, tokens=row.tokens, prompt_tokens=len(row.ids)))

    def _next(self, session: Session, completion: Completion | None) -> None:
        """Advance the session's generator: its next generation joins the batch, or it is done."""
        job = session.job
        while True:
            try:
                prompt = next(session.gen) if completion is None else session.gen.send(completion)
            except StopIteration as stop:
                self.active.discard(session)
                session.value = stop.value
                session.future.set_result(session)
                return
            except Exception as e:  # a bug in one request's protocol must not stop the others
                log.exception("request failed")
                self._fail(session, HTTPError(500, f"internal error: {type(e).__name__}: {e}"[:500], "server_error"))
                return
            budget = job.max_tokens - session.tokens
            if budget > 0:
                break
            session.cut = True  # the protocol wants another generation but the request's tokens are spent
            completion = Completion(text="")
        row = Row(prompt, Sampling(budget, job.temperature, job.top_p, session.seed), stops=(*prompt.stop, *job.stop),
                  on_text=session.on_text if job.proto is None else None, owner=session)
        if self.solo is not None or self.suspects:  # isolating after a fault: it joins when that is over
            session.row = row
            self.held.append(session)
            return
        self._join(session, row)

    def _join(self, session: Session, row: Row) -> None:
        """Tokenize `row` into the batch; a request that cannot be tokenized or is too long fails alone."""
        session.row = None
        try:
            self.backend.add(row)
        except ContextLimitError as e:
            self._fail(session, HTTPError(400, str(e), param="messages", code="context_length_exceeded"))
            return
        except Exception as e:  # tokenizing this request failed: it fails alone
            self._fail(session, HTTPError(400, f"the request could not be tokenized: {type(e).__name__}: {e}"[:500],
                                          param="messages"))
            return
        problem = self._too_long(row, session.job)
        if problem is not None:
            self.backend.remove(row)
            self._fail(session, HTTPError(400, problem, param="messages", code="context_length_exceeded"))
            return
        session.row = row

    def _too_long(self, row: Row, job: Job) -> str | None:
        if not row.ids:
            return None
        n = len(row.ids)
        limit = self.limits.max_prompt_tokens
        if limit is not None and n > limit:
            return f"the prompt has {n} tokens; this server accepts at most {limit} (--max-prompt-tokens)"
        if job.explicit_max_tokens and self.context is not None and n + job.max_tokens > self.context:
            return (f"the prompt has {n} tokens and max_tokens is {job.max_tokens}; the model's context is "
                    f"{self.context} tokens")
        return None


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice `index`'s seed: `seed` itself for the first (so `n=1` and the first of `n` agree),
    a hash of (seed, index) for the others (independent draws, the same on every run)."""
    if seed is None or index == 0:
        return seed
    return int.from_bytes(hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest(), "little")


def _fresh(row: Row) -> Row:
    """`row` from its start again (same prompt, sampling and seed, so the same tokens); its stream
    resumes after what was already sent."""
    return Row(row.prompt, replace(row.sampling), stops=row.stops, on_text=row.on_text, owner=row.owner,
               emitted=row.emitted)


def _chat(prompt: Prompt) -> Generator[Prompt, Completion, Completion]:
    completion = yield prompt
    return completion


# ---- request validation ----

_IGNORABLE = {"user", "metadata", "service_tier", "prompt_cache_key", "safety_identifier"}
"""Parameters about OpenAI's account, logs or caching: nothing to do here."""
_NEUTRAL: dict[str, tuple[Any, ...]] = {  # parameters accepted only at the value that asks for nothing
    "logprobs": (False,), "top_logprobs": (0,), "frequency_penalty": (0, 0.0), "presence_penalty": (0, 0.0),
    "logit_bias": ({},), "response_format": ({"type": "text"},), "store": (False,), "modalities": (["text"],),
    "reasoning_effort": (), "audio": (), "prediction": (), "web_search_options": (), "functions": (),
    "function_call": (), "verbosity": (),
}
_KNOWN = {"model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens", "max_completion_tokens",
          "temperature", "top_p", "seed", "stop", "n", "stream", "stream_options", "protocol", "final_tool"}


def _number(body: dict[str, Any], name: str, lo: float, hi: float, *, integer: bool = False,
            lo_open: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if not ok or isinstance(value, bool) or not math.isfinite(value):
        raise HTTPError(400, f"`{name}` must be {'an integer' if integer else 'a number'}, not {value!r}"[:300],
                        param=name, code="invalid_type")
    if value < lo or value > hi or (lo_open and value == lo):
        low = f"greater than {lo}" if lo_open else f"at least {lo}"
        raise HTTPError(400, f"`{name}` must be {low} and at most {hi}, not {value}", param=name,
                        code="invalid_value")
    return value


def check_tree(value: Any, max_depth: int) -> None:
    """400 for JSON nested deeper than `max_depth` or holding a lone surrogate (text no tokenizer can
    encode) anywhere, keys included."""
    stack: list[tuple[Any, int, str]] = [(value, 0, "")]
    while stack:
        v, depth, path = stack.pop()
        if depth > max_depth:
            raise HTTPError(400, f"the request nests deeper than {max_depth} levels", param=path or None)
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    raise HTTPError(400, f"`{path}` holds a lone surrogate (not valid Unicode text)",
                                    param=path or None, code="invalid_text") from None
        elif isinstance(v, dict):
            for k, item in v.items():
                stack.append((k, depth + 1, path))
                stack.append((item, depth + 1, f"{path}.{k}" if path else str(k)))
        elif isinstance(v, list):
            stack.extend((item, depth + 1, f"{path}[{i}]") for i, item in enumerate(v))


def parse_body(raw: bytes, limits: Limits) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying why not."""
    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not a JSON number")

    try:
        body = json.loads(raw, parse_constant=no_constant)
    except RecursionError:
        raise HTTPError(400, f"the request nests deeper than {limits.max_depth} levels") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPError(400, f"the request body is not JSON: {e}"[:300], code="invalid_json") from None
    if not isinstance(body, dict):
        raise HTTPError(400, "the request body must be a JSON object", code="invalid_json")
    check_tree(body, limits.max_depth)
    return body


class Server:
    """The request logic, independent of the HTTP library (tested directly and over HTTP).

    Args:
        engine: `HFEngine` (continuous batching) or any `Engine` (lockstep rounds).
        protocol: For requests with tools (default: the one the model was trained on most).
        model_name: The name `/v1/models` reports; `aliases` are further names requests may use.
        max_active: Requests generating at once; max_queue: requests waiting beyond them.
        limits: Per-request bounds.
        api_keys: Bearer keys (empty: no authentication).
        max_per_client: Choices one client (its key; its address without keys) may have queued or
            running at once; beyond, 429 with `Retry-After` (None: no per-client limit).
    """

    def __init__(self, engine: Engine, *, protocol: str | None = None, model_name: str | None = None,
                 aliases: tuple[str, ...] = (), max_active: int = 16, max_queue: int = 64,
                 limits: Limits | None = None, api_keys: tuple[str, ...] = (),
                 max_per_client: int | None = None) -> None:
        if max_per_client is not None and max_per_client < 1:
            raise ConfigError(f"max_per_client must be at least 1, not {max_per_client}")
        self.engine = engine
        self.max_per_client = max_per_client
        self.in_flight: Counter[str] = Counter()
        """Choices queued or running per client (`--max-per-client`)."""
        self.refused: Counter[int] = Counter()
        """Requests refused for load, by status (429: a client over its limit; 503: the queue full)."""
        self.lock = threading.Lock()
        path = str(getattr(engine, "path", engine.name))
        self.model_name = model_name or path
        self.names = (self.model_name, *[a for a in aliases if a != self.model_name])
        self.limits = limits or Limits()
        info = getattr(engine, "info", None)
        candidates = [p for p in info.episode_protocols(None) if get_protocol(p).task is None] if info else []
        self.default_protocol = protocol or (candidates[0] if candidates else "native")
        self.template = getattr(engine, "template", None)
        resolved = get_protocol(self.default_protocol, self.template)  # fail at start on a bad name
        self.protocol_name = resolved.name
        """The protocol replies actually use (`native` becomes `react` for a template without tools)."""
        self.api_keys = tuple(k.encode() for k in api_keys if k)
        self.created = int(os.stat(path).st_mtime) if os.path.exists(path) else int(time.time())
        self.scheduler = Scheduler(engine, self.limits, max_active=max_active, max_queue=max_queue)

    def close(self) -> None:
        self.scheduler.stop()

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [
            {"id": name, "object": "model", "created": self.created, "owned_by": "agentflan",
             "protocol": self.protocol_name, "template": getattr(self.template, "name", None)}
            for name in self.names]}

    def health(self) -> dict[str, Any]:
        s = self.scheduler
        return {"status": "ok" if s.thread.is_alive() else "stopped", "model": self.model_name,
                "active": len(s.active), "waiting": s.waiting.qsize(), "max_active": s.max_active,
                "max_queue": s.queue_limit, "max_per_client": self.max_per_client,
                "refused": {str(k): v for k, v in sorted(self.refused.items())}, "faults": s.faults}

    # ---- validation ----

    @staticmethod
    def conversation(body: dict[str, Any]) -> Trajectory:
        """The request's `messages` and `tools` as a trajectory (read as the `openai` reader reads a
        dataset record), its `final_tool` tagged; 400 when malformed."""
        from agentflan.io.base import RecordContext
        from agentflan.io.files import RawRecord
        from agentflan.io.readers.openai import OpenAIReader
        from agentflan.schema import check, errors

        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise HTTPError(400, "`messages` must be a non-empty list", param="messages")
        if body.get("tools") is not None and not isinstance(body["tools"], list):
            raise HTTPError(400, "`tools` must be a list", param="tools")
        record = {"messages": body["messages"], "tools": body.get("tools") or []}
        try:
            traj = OpenAIReader(on_error="raise").parse(record, RecordContext(RawRecord("request", None, 0), "openai", None))
        except ParseError as e:
            raise HTTPError(400, e.message, param=e.field) from e
        except (ValueError, TypeError, AttributeError) as e:  # pydantic validation and shape errors
            raise HTTPError(400, f"malformed messages: {e}"[:500], param="messages") from e
        bad = [i for i in errors(check(traj)) if i.code not in ("unanswered_call",)]
        if bad:
            raise HTTPError(400, str(bad[0]), param="messages")
        names = [t.name for t in traj.tools]
        final = body.get("final_tool")
        if final is not None and not isinstance(final, str):
            raise HTTPError(400, "`final_tool` must be a tool name", param="final_tool")
        final = final or next((n for n in FINAL_TOOL_NAMES if n in names), None)
        tags = {"final_tool": final} if final else {}
        return traj.model_copy(update={"tags": tags})

    def protocol(self, body: dict[str, Any], traj: Trajectory) -> Protocol:
        name = body.get("protocol") or self.default_protocol
        if not isinstance(name, str):
            raise HTTPError(400, "`protocol` must be a protocol name", param="protocol")
        try:
            proto = get_protocol(name, self.template)
        except ConfigError as e:
            raise HTTPError(400, str(e), param="protocol") from e
        if not proto.episodic:
            raise HTTPError(400, f"protocol {proto.name!r} answers single steps only", param="protocol")
        if proto.task is not None:  # a dialect's conversation: its environment's prompt and parser
            traj.tags["task"] = proto.task
        return proto

    def prepare(self, body: dict[str, Any]) -> Job:
        """Check every parameter of a chat request; the `Job` to run, or an `HTTPError` (4xx)."""
        from agentflan.formats.templates import is_structured

        for key in body:
            if key in _KNOWN or key in _IGNORABLE:
                continue
            if key in _NEUTRAL:
                if body[key] is None or body[key] in _NEUTRAL[key]:
                    continue
                raise HTTPError(400, f"`{key}` is not supported by agentflan serve (value {body[key]!r})"[:300],
                                param=key, code="unsupported_parameter")
            raise HTTPError(400, f"Unrecognized request argument supplied: {key}"[:300], param=key,
                            code="unrecognized_argument")
        model = body.get("model")
        if model is not None and model not in self.names:
            shown = model if isinstance(model, str) else json.dumps(model)
            raise HTTPError(404, f"The model `{shown[:200]}` does not exist; this server serves "
                                 f"{', '.join(map(repr, self.names))}", param="model", code="model_not_found")
        n = _number(body, "n", 1, MAX_N, integer=True) or 1
        capacity = self.scheduler.max_active + self.scheduler.queue_limit
        if n > capacity or (self.max_per_client is not None and n > self.max_per_client):
            most = min(capacity, self.max_per_client or capacity)
            raise HTTPError(400, f"n={n} is more choices than this server runs for one request (at most {most}: "
                                 "--batch-size plus --max-queue, and --max-per-client)", param="n",
                            code="invalid_value")
        given = [k for k in ("max_completion_tokens", "max_tokens") if body.get(k) is not None]
        if len(given) == 2 and body["max_tokens"] != body["max_completion_tokens"]:
            raise HTTPError(400, "`max_tokens` and `max_completion_tokens` differ; give one", param="max_tokens")
        limit = self.limits.max_tokens_limit
        max_tokens = _number(body, given[0], 1, limit, integer=True) if given else None
        temperature = _number(body, "temperature", 0, 2)
        top_p = _number(body, "top_p", 0, 1, lo_open=True)
        seed = _number(body, "seed", -(2**63), 2**64 - 1, integer=True)
        stream = body.get("stream")
        if stream is not None and not isinstance(stream, bool):
            raise HTTPError(400, "`stream` must be true or false", param="stream", code="invalid_type")
        options = body.get("stream_options")
        include_usage = False
        if options is not None:
            if not stream:
                raise HTTPError(400, "`stream_options` needs `stream: true`", param="stream_options")
            if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"} or \
                    not isinstance(options.get("include_usage", False), bool):
                raise HTTPError(400, "`stream_options` may hold only `include_usage` (true or false)",
                                param="stream_options")
            include_usage = bool(options.get("include_usage"))
        stop = body.get("stop")
        stops: tuple[str, ...] = ()
        if stop is not None:
            items = [stop] if isinstance(stop, str) else stop
            if not isinstance(items, list) or not all(isinstance(s, str) and s for s in items) or \
                    len(items) > MAX_STOPS:
                raise HTTPError(400, f"`stop` must be a non-empty string or a list of at most {MAX_STOPS}",
                                param="stop", code="invalid_value")
            stops = tuple(items)
        parallel = body.get("parallel_tool_calls")
        if parallel is not None and not isinstance(parallel, bool):
            raise HTTPError(400, "`parallel_tool_calls` must be true or false", param="parallel_tool_calls")

        traj = self.conversation(body)
        choice = self._tool_choice(body.get("tool_choice"), [t.name for t in traj.tools])
        if choice == "none":
            traj = traj.model_copy(update={"tools": []})
        agentic = bool(traj.tools) or is_structured(traj.messages)
        proto = self.protocol(body, traj) if agentic else None
        return Job(traj=traj, proto=proto, max_tokens=max_tokens or min(self.limits.max_tokens, limit),
                   explicit_max_tokens=max_tokens is not None, temperature=float(temperature or 0.0),
                   top_p=float(1.0 if top_p is None else top_p), seed=seed, stop=stops, stream=bool(stream),
                   include_usage=include_usage, tool_choice=choice,
                   parallel_tool_calls=True if parallel is None else parallel, n=n)

    @staticmethod
    def _tool_choice(value: Any, names: list[str]) -> str:
        if value is None:
            return "auto"
        if value in ("auto", "none", "required"):
            if value == "required" and not names:
                raise HTTPError(400, "`tool_choice: required` needs `tools`", param="tool_choice")
            return str(value)
        if isinstance(value, dict) and value.get("type") == "function" and isinstance(value.get("function"), dict):
            name = value["function"].get("name")
            if name in names:
                return f"function:{name}"
            raise HTTPError(400, f"`tool_choice` names {name!r}, which is not among the request's tools"[:300],
                            param="tool_choice")
        raise HTTPError(400, "`tool_choice` must be `auto`, `none`, `required` or "
                             "{\"type\": \"function\", \"function\": {\"name\": ...}}", param="tool_choice")

    # ---- running ----

    def submit(self, job: Job, on_text: Callable[[int, str], None] | None = None,
               client: str | None = None) -> list[Session]:
        """Queue `job`'s `n` choices together; their sessions (each `future` resolves to its session).
        429 when `client` already has `--max-per-client` choices queued or running, 503 when the
        queue has no room for them all.

        Args:
            on_text: `(choice index, piece)` for each piece of streamed text.
            client: Who asks (a key, or an address when the server has no keys).
        """
        deadline = time.monotonic() + self.limits.request_timeout
        sessions = []
        for index in range(job.n):
            gen: Generator[Prompt, Completion, Any]
            gen = _chat(Prompt(job.traj.messages)) if job.proto is None else \
                job.proto.act(job.traj, conversation_key(job.traj))
            sessions.append(Session(job, gen, deadline, index=index, seed=choice_seed(job.seed, index),
                                    on_text=None if on_text is None else partial(on_text, index)))
        try:
            self._claim(client, len(sessions))
        except HTTPError:
            self.refused[429] += 1
            raise
        try:
            self.scheduler.submit(sessions)
        except HTTPError as e:
            self._release(client, len(sessions))
            self.refused[e.status] += 1
            raise
        for session in sessions:
            session.future.add_done_callback(lambda _: self._release(client, 1))
        return sessions

    def _claim(self, client: str | None, k: int) -> None:
        if client is None or self.max_per_client is None:
            return
        with self.lock:
            if self.in_flight[client] + k > self.max_per_client:
                raise HTTPError(429, f"Rate limit reached: this client has {self.in_flight[client]} requests queued "
                                     f"or running, at most {self.max_per_client} (--max-per-client); retry after "
                                     "one of them ends", "requests", code="rate_limit_exceeded",
                                headers={"Retry-After": "1"})
            self.in_flight[client] += k

    def _release(self, client: str | None, k: int) -> None:
        if client is None or self.max_per_client is None:
            return
        with self.lock:
            self.in_flight[client] -= k
            if self.in_flight[client] <= 0:
                del self.in_flight[client]

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion (blocking): the response body. Raises `HTTPError`."""
        job = self.prepare(body)
        return self.respond([s.future.result() for s in self.submit(job)])

    def choice(self, session: Session) -> tuple[dict[str, Any], dict[str, Any]]:
        """A finished session's choice (`index`, `message`, `finish_reason`, ...) and its `agentflan`
        extension. Raises `HTTPError` (422) when it breaks the request's `tool_choice`."""
        job, value = session.job, session.value
        if job.proto is None:
            assert isinstance(value, Completion)
            message: dict[str, Any] = {"role": "assistant", "content": value.text}
            finish = "length" if session.cut else "stop"
            ext: dict[str, Any] = {"protocol": None, "action": "answer", "texts": [value.text]}
            stop_reason = session.stop_reason
        else:
            assert isinstance(value, Action)
            try:
                message, dropped = self.message(value, job)
            except HTTPError as e:
                if job.n > 1:
                    e.message = f"choice {session.index}: {e.message}"
                raise
            calls = bool(message.get("tool_calls"))
            finish = "tool_calls" if calls else "length" if session.cut else "stop"
            ext = {"protocol": job.proto.name, "action": value.kind, "error": value.error, "flags": value.flags,
                   "texts": value.texts}
            if dropped:
                ext["dropped_calls"] = dropped
            stop_reason = None
        ext["generations"] = session.generations
        return ({"index": session.index, "message": message, "finish_reason": finish, "stop_reason": stop_reason,
                 "logprobs": None}, ext)

    @staticmethod
    def usage(sessions: list[Session]) -> dict[str, int]:
        """Token counts summed over the choices (the prompt counted once per generation, as each
        choice prefills it)."""
        prompt = sum(s.prompt_tokens for s in sessions)
        completion = sum(s.tokens for s in sessions)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def respond(self, sessions: list[Session]) -> dict[str, Any]:
        """The `chat.completion` of a request's finished sessions (its choices, in order)."""
        choices, exts = [], []
        for session in sessions:
            choice, ext = self.choice(session)
            if len(sessions) > 1:
                choice["agentflan"] = ext
            choices.append(choice)
            exts.append(ext)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model_name, "choices": choices, "usage": self.usage(sessions), "agentflan": exts[0]}

    @staticmethod
    def message(action: Action, job: Job) -> tuple[dict[str, Any], int]:
        """The assistant message of `action` under the request's `tool_choice` and
        `parallel_tool_calls` (and how many calls `parallel_tool_calls: false` dropped)."""
        calls = list(action.calls) if action.kind == "call" and job.tool_choice != "none" else []
        choice = job.tool_choice
        if choice == "required" and not calls:
            raise HTTPError(422, f"tool_choice is `required` but the model's reply calls no tool "
                                 f"({action.kind}: {(action.error or action.answer or '')[:200]!r})",
                            param="tool_choice", code="tool_choice_not_satisfied")
        if choice.startswith("function:"):
            name = choice.split(":", 1)[1]
            if not calls or any(c.name != name for c in calls):
                got = [c.name for c in calls] or action.kind
                raise HTTPError(422, f"tool_choice names {name!r} but the model's reply is {got!r}"[:400],
                                param="tool_choice", code="tool_choice_not_satisfied")
        dropped = 0
        if not job.parallel_tool_calls and len(calls) > 1:
            dropped, calls = len(calls) - 1, calls[:1]
        if calls:
            with_ids = [c.model_copy(update={"id": f"call_{uuid.uuid4().hex[:24]}"}) for c in calls]
            return {"role": "assistant", "content": action.thought or None,
                    "tool_calls": tool_call_dicts(with_ids)}, dropped
        if action.kind == "answer":
            return {"role": "assistant", "content": action.answer or ""}, dropped
        return {"role": "assistant", "content": "\n".join(action.texts)}, dropped


# ---- HTTP ----

def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def stream_events(server: Server, sessions: list[Session],
                        texts: "asyncio.Queue[tuple[int, str | None]]") -> AsyncIterator[str]:
    """Server-sent events of a request's running sessions: the role, every text piece as it is
    generated (chat), then the tool calls as deltas (name, then arguments), the finish reason, the
    usage when asked, `[DONE]`. With `n` > 1 every chunk names its choice's `index`, the choices'
    pieces interleave as they are generated and each choice ends with its own `finish_reason` (as
    OpenAI streams `n`). An error after the stream began is an `error` event (as OpenAI sends)."""
    cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    base = {"id": cid, "object": "chat.completion.chunk", "created": int(time.time()), "model": server.model_name}

    def chunk(index: int, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        return _sse({**base, "choices": [{"index": index, "delta": delta, "finish_reason": finish,
                                          "logprobs": None}], **extra})

    try:
        for session in sessions:
            yield chunk(session.index, {"role": "assistant", "content": ""})
        running = len(sessions)
        while running:
            index, piece = await texts.get()
            if piece is not None:
                yield chunk(index, {"content": piece})
                continue
            running -= 1
            if sessions[index].future.exception() is not None:  # one choice failed: the request fails
                break
        try:
            for session in sessions:
                await asyncio.wrap_future(session.future)
            choices = [server.choice(session) for session in sessions]
        except HTTPError as e:
            yield _sse(e.body())
            yield "data: [DONE]\n\n"
            return
        for session, (choice, ext) in zip(sessions, choices, strict=True):
            msg, k = choice["message"], session.index
            if session.job.proto is not None and msg.get("content"):
                yield chunk(k, {"content": msg["content"]})
            for j, call in enumerate(msg.get("tool_calls") or []):
                fn = call["function"]
                yield chunk(k, {"tool_calls": [{"index": j, "id": call["id"], "type": "function",
                                                "function": {"name": fn["name"], "arguments": ""}}]})
                yield chunk(k, {"tool_calls": [{"index": j, "function": {"arguments": fn["arguments"]}}]})
            yield chunk(k, {}, choice["finish_reason"], agentflan=ext)
        if sessions[0].job.include_usage:
            yield _sse({**base, "choices": [], "usage": server.usage(sessions)})
        yield "data: [DONE]\n\n"
    finally:  # the client went away, or the stream ended (or failed): nothing more is generated for it
        for session in sessions:
            if not session.future.done():
                session.cancel()


def _retrieve(future: "asyncio.Future[Any]") -> None:
    if not future.cancelled():
        future.exception()


def client_of(headers: Any, address: str | None, keyed: bool) -> str:
    """Who sends a request, for `--max-per-client`: its key (hashed: keys are not kept in the
    clear) when the server has keys, its address otherwise."""
    if keyed:
        token = str(headers.get("authorization", ""))[7:].strip()
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:16]
    return f"address:{address}"


class _Guard:
    """ASGI middleware: `Authorization: Bearer KEY` on every path but /health (401 in OpenAI's shape)."""

    def __init__(self, app: Any, keys: tuple[bytes, ...]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.keys and scope.get("path") != "/health":
            header = next((v for k, v in scope.get("headers", []) if k == b"authorization"), b"")
            token = header[7:].strip() if header[:7].lower() == b"bearer " else b""
            if not any(hmac.compare_digest(token, key) for key in self.keys):
                from fastapi.responses import JSONResponse

                error = HTTPError(401, "Incorrect API key provided" if token else
                                  "You didn't provide an API key (Authorization: Bearer KEY)",
                                  code="invalid_api_key")
                await JSONResponse(error.body(), status_code=401,
                                   headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(server: Server) -> Any:
    """The FastAPI application around `server`."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        server.close()

    app = FastAPI(title="agentflan serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    if server.api_keys:
        app.add_middleware(_Guard, keys=server.api_keys)

    def error_response(e: HTTPError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message, code = f"Invalid URL ({request.method} {request.url.path})", "not_found"
        elif exc.status_code == 405:
            message, code = f"Method {request.method} is not allowed on {request.url.path}", "method_not_allowed"
        else:
            message, code = str(exc.detail), None
        return error_response(HTTPError(exc.status_code, message, code=code, headers=dict(exc.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(HTTPError(400, str(exc)[:500]))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("request failed", exc_info=exc)
        return error_response(HTTPError(500, f"internal error: {type(exc).__name__}"[:300], "server_error"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return server.health()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return server.models()

    @app.get("/v1/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        for m in server.models()["data"]:
            if m["id"] == name:
                return m  # type: ignore[no-any-return]
        raise HTTPError(404, f"The model `{name[:200]}` does not exist", param="model", code="model_not_found")

    async def read_body(request: Request) -> bytes:
        limit = server.limits.max_body_bytes
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise HTTPError(400, "bad Content-Length header")
            if int(length) > limit:
                raise HTTPError(413, f"the request body has {int(length)} bytes; this server accepts at most "
                                     f"{limit} (--max-body-mb)", code="request_too_large")
        chunks, total = [], 0
        async for piece in request.stream():  # counted as it arrives: a chunked body cannot slip past
            total += len(piece)
            if total > limit:
                raise HTTPError(413, f"the request body exceeds {limit} bytes (--max-body-mb)",
                                code="request_too_large")
            chunks.append(piece)
        return b"".join(chunks)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = parse_body(await read_body(request), server.limits)
        job = await run_in_threadpool(server.prepare, body)
        client = client_of(request.headers, request.client.host if request.client else None, bool(server.api_keys))
        if job.stream:
            loop = asyncio.get_running_loop()
            texts: asyncio.Queue[tuple[int, str | None]] = asyncio.Queue()

            def on_text(index: int, piece: str) -> None:
                loop.call_soon_threadsafe(texts.put_nowait, (index, piece))

            def ended(index: int, _: Future[Any]) -> None:
                loop.call_soon_threadsafe(texts.put_nowait, (index, None))

            sessions = server.submit(job, on_text=on_text if job.proto is None else None, client=client)
            for session in sessions:
                session.future.add_done_callback(partial(ended, session.index))
            return StreamingResponse(stream_events(server, sessions, texts), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        sessions = server.submit(job, client=client)
        waiting = [asyncio.wrap_future(s.future) for s in sessions]
        for w in waiting:  # a choice cancelled after another failed: its error is expected, not news
            w.add_done_callback(_retrieve)
        try:
            while True:  # a client that hangs up stops its generation at the next decoding step
                done, pending = await asyncio.wait(waiting, timeout=0.25, return_when=asyncio.FIRST_EXCEPTION)
                if not pending or any(f.exception() is not None for f in done):
                    break
                if await request.is_disconnected():
                    return JSONResponse(HTTPError(499, "the client closed the request").body(), status_code=499)
        finally:  # gone, or one choice failed: the others stop too
            for s in sessions:
                if not s.future.done():
                    s.cancel()
        failed = next((f.exception() for f in waiting if f.done() and f.exception() is not None), None)
        if isinstance(failed, Cancelled):
            return JSONResponse(HTTPError(499, "the client closed the request").body(), status_code=499)
        if failed is not None:
            raise failed
        return server.respond([f.result() for f in waiting])

    return app
