"""`agentflan serve MODEL`: an OpenAI-compatible chat server for a model saved by `agentflan train`,
prompting it exactly as it was trained.

A request with `tools` (or with tool calls and results in its history) is rendered by the
model's trained protocol (`agentflan.json`, or `--protocol`, or the request's `protocol` field)
and its trained chat template; the reply is parsed by the same protocol and returned as OpenAI
`tool_calls` (T-FLAN's elicit turns are played inside the server: one request, one action). A
request without tools is plain chat through the template. Generation is greedy.

Requests are batched: a scheduler thread advances every active request in lockstep (one batched
`generate` per round, as `agentflan eval` does), at most `max_active` at once; up to
`max_queue` more wait, and beyond that the server answers 503 with `Retry-After`. Malformed
requests get a 400 with an OpenAI-style JSON error naming the field; nothing hangs.

Extensions (ignored by other servers): request fields `protocol` and `final_tool` (the tool whose
call is the final answer; default: a tool named Finish, finish, final_answer or answer); response
field `agentflan` with the protocol, the action kind (`call`, `answer`, `unparseable`), its error,
and every generated text. A `stop_reason` names the stop string that ended a reply, as vLLM does.
Streaming (`stream: true`) sends the finished reply as server-sent events (the reply must be whole
to be parsed, so it is not streamed token by token).
"""

# no `from __future__ import annotations`: FastAPI resolves the endpoints' annotations at runtime
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from agentflan.client import ContextLimitError
from agentflan.errors import ConfigError, ParseError
from agentflan.eval.engines import HFEngine
from agentflan.formats.openai import tool_call_dicts
from agentflan.formats.protocols import Action, Completion, Prompt, Protocol, conversation_key, get_protocol
from agentflan.schema import Trajectory

log = logging.getLogger(__name__)
FINAL_TOOL_NAMES = ("Finish", "finish", "final_answer", "answer")


class HTTPError(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.status}}


@dataclass
class Session:
    gen: Generator[Prompt, Completion, Any]
    future: Future[Any] = field(default_factory=Future)
    prompt: Prompt | None = None
    tokens: int = 0
    prompt_tokens: int = 0


class Scheduler:
    """Advances sessions in lockstep on one engine, from a worker thread (bounded)."""

    def __init__(self, engine: HFEngine, max_active: int = 16, max_queue: int = 64) -> None:
        self.engine = engine
        self.max_active = max_active
        self.waiting: queue.Queue[Session] = queue.Queue(maxsize=max_queue)
        self.active: list[Session] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="agentflan-scheduler", daemon=True)
        self.thread.start()

    def submit(self, gen: Generator[Prompt, Completion, Any]) -> Future[Any]:
        session = Session(gen)
        try:
            self.waiting.put_nowait(session)
        except queue.Full:
            raise HTTPError(503, "the server is busy (request queue full); retry later", "server_busy",
                            headers={"Retry-After": "1"}) from None
        return session.future

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)

    def _admit(self) -> None:
        while len(self.active) < self.max_active:
            try:  # idle: wait a little for work; busy: take only what is already there
                session = self.waiting.get(timeout=0.05) if not self.active else self.waiting.get_nowait()
            except queue.Empty:
                return
            self._advance(session, None, start=True)
            if not session.future.done():
                self.active.append(session)

    def _advance(self, session: Session, result: Completion | None, start: bool = False) -> None:
        if result is not None:
            session.tokens += result.tokens
            session.prompt_tokens = max(session.prompt_tokens, result.prompt_tokens)
        try:
            session.prompt = next(session.gen) if start else session.gen.send(result)  # type: ignore[arg-type]
        except StopIteration as stop:
            session.future.set_result((stop.value, session.tokens, session.prompt_tokens))
        except Exception as e:  # a bug in one request must not stop the others
            log.exception("request failed")
            session.future.set_exception(e)

    def _loop(self) -> None:
        while not self.stopped.is_set():
            self._admit()
            if not self.active:
                continue
            batch = list(self.active)
            try:
                outs = self.engine.generate([s.prompt for s in batch if s.prompt is not None])
            except Exception as e:
                log.exception("generation failed")
                for s in batch:
                    s.future.set_exception(e)
                self.active = []
                continue
            for s, out in zip(batch, outs, strict=True):
                if isinstance(out, Completion):
                    self._advance(s, out)
                else:
                    s.future.set_exception(out)
            self.active = [s for s in self.active if not s.future.done()]


def _chat(prompt: Prompt) -> Generator[Prompt, Completion, Completion]:
    completion = yield prompt
    return completion


class Server:
    """The request logic, independent of the HTTP library (tested directly and over HTTP)."""

    def __init__(self, engine: HFEngine, *, protocol: str | None = None, model_name: str | None = None,
                 max_active: int = 16, max_queue: int = 64) -> None:
        self.engine = engine
        self.model_name = model_name or engine.path
        candidates = [p for p in engine.info.episode_protocols(None) if not p.startswith("agentinstruct:")]
        self.default_protocol = protocol or (candidates[0] if candidates else "native")
        get_protocol(self.default_protocol, engine.template)  # fail at start on a bad name
        self.scheduler = Scheduler(engine, max_active=max_active, max_queue=max_queue)
        self.context = getattr(getattr(engine.model, "config", None), "max_position_embeddings", None)

    def close(self) -> None:
        self.scheduler.stop()

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "owned_by": "agentflan",
                                            "protocol": self.default_protocol, "template": self.engine.template.name}]}

    def conversation(self, body: dict[str, Any]) -> Trajectory:
        from agentflan.io.base import RecordContext
        from agentflan.io.files import RawRecord
        from agentflan.io.readers.openai import OpenAIReader
        from agentflan.schema import check, errors

        if not isinstance(body.get("messages"), list) or not body["messages"]:
            raise HTTPError(400, "`messages` must be a non-empty list", param="messages")
        if body.get("tools") is not None and not isinstance(body["tools"], list):
            raise HTTPError(400, "`tools` must be a list", param="tools")
        if int(body.get("n") or 1) != 1:
            raise HTTPError(400, "only n=1 is supported", param="n")
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
        final = body.get("final_tool") or next((n for n in FINAL_TOOL_NAMES if n in names), None)
        tags = {"final_tool": final} if final else {}
        return traj.model_copy(update={"tags": tags})

    def protocol(self, body: dict[str, Any], traj: Trajectory) -> Protocol:
        name = body.get("protocol") or self.default_protocol
        try:
            proto = get_protocol(str(name), self.engine.template)
        except ConfigError as e:
            raise HTTPError(400, str(e), param="protocol") from e
        if name.startswith("agentinstruct:"):
            traj.tags["task"] = name.split(":", 1)[1]
        return proto

    def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion (blocking): the response body. Raises `HTTPError`."""
        from agentflan.formats.templates import is_structured

        traj = self.conversation(body)
        agentic = bool(traj.tools) or is_structured(traj.messages)
        proto = self.protocol(body, traj) if agentic else None
        if proto is not None:
            if not proto.episodic:
                raise HTTPError(400, f"protocol {proto.name!r} answers single steps only", param="protocol")
            gen: Generator[Prompt, Completion, Any] = proto.act(traj, conversation_key(traj))
        else:
            gen = _chat(Prompt(traj.messages))
        try:
            value, tokens, prompt_tokens = self.scheduler.submit(gen).result()
        except ContextLimitError as e:
            raise HTTPError(400, str(e), param="messages", kind="context_length_exceeded") from e
        created = int(time.time())
        if proto is None:
            assert isinstance(value, Completion)
            message: dict[str, Any] = {"role": "assistant", "content": value.text}
            finish, ext = "stop", {"protocol": None, "action": "answer", "texts": [value.text]}
            stop_reason = value.stop
        else:
            assert isinstance(value, Action)
            message, finish = self.message(value, traj)
            ext = {"protocol": proto.name, "action": value.kind, "error": value.error, "flags": value.flags,
                   "texts": value.texts}
            stop_reason = None
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": created,
                "model": self.model_name,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "stop_reason": stop_reason}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": tokens,
                          "total_tokens": prompt_tokens + tokens},
                "agentflan": ext}

    @staticmethod
    def message(action: Action, traj: Trajectory) -> tuple[dict[str, Any], str]:
        if action.kind == "call":
            calls = [c.model_copy(update={"id": f"call_{uuid.uuid4().hex[:12]}"}) for c in action.calls]
            return {"role": "assistant", "content": action.thought or None,
                    "tool_calls": tool_call_dicts(calls)}, "tool_calls"
        if action.kind == "answer":
            return {"role": "assistant", "content": action.answer or ""}, "stop"
        return {"role": "assistant", "content": "\n".join(action.texts)}, "stop"


def stream_chunks(response: dict[str, Any]) -> Iterator[str]:
    """A finished completion as server-sent events (`chat.completion.chunk`s, then `[DONE]`)."""
    base = {"id": response["id"], "object": "chat.completion.chunk", "created": response["created"],
            "model": response["model"]}
    choice = response["choices"][0]
    msg = choice["message"]

    def event(delta: dict[str, Any], finish: str | None = None) -> str:
        chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    yield event({"role": "assistant", "content": ""})
    if msg.get("content"):
        yield event({"content": msg["content"]})
    for k, call in enumerate(msg.get("tool_calls") or []):
        yield event({"tool_calls": [{"index": k, **call}]})
    final = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}],
             "usage": response["usage"], "agentflan": response["agentflan"]}
    yield f"data: {json.dumps(final, ensure_ascii=False)}\n\n"
    yield "data: [DONE]\n\n"


def create_app(server: Server) -> Any:
    """The FastAPI application around `server`."""
    from contextlib import asynccontextmanager

    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse, StreamingResponse

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        yield
        server.close()

    app = FastAPI(title="agentflan serve", version="1", lifespan=lifespan)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return server.models()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"the request body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        try:
            response = await run_in_threadpool(server.complete, body)
        except HTTPError:
            raise
        except Exception as e:  # never a hang, never an HTML error page
            log.exception("request failed")
            raise HTTPError(500, f"internal error: {type(e).__name__}: {e}"[:500], "server_error") from e
        if body.get("stream"):
            return StreamingResponse(stream_chunks(response), media_type="text/event-stream")
        return response

    return app
