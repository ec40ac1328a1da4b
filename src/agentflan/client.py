"""The one client for OpenAI-compatible chat endpoints (OpenAI, vLLM, SGLang, TGI, `transformers
serve`, `agentflan serve`): bounded concurrency, retries, a request cache, honest errors.

* Retries, with exponential backoff (and `Retry-After` when the server sends it), only where
  waiting can help: timeouts, HTTP 408/429 and 5xx. A refused connection, a 4xx or a reply that
  is not a chat completion fails at once.
* A request that fails after its retries raises `RequestError`: it is an *error*, counted and
  logged by the caller, never turned into an answer.
* `timeout_s` bounds each attempt as a whole (connecting, sending, the status line and headers,
  the body), not each socket operation: a server that trickles its reply, headers included, is
  cut off at the deadline (`_Deadline`).
* Every successful response is appended to a JSONL cache keyed by the hash of the full request
  (URL and body), so a killed run resumes without paying twice and a re-run makes no request.

Used by the negatives teacher (`pipeline.teacher`), by model policies and by `agentflan eval`.
Only the standard library: no `openai` package needed.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from agentflan.errors import AgentflanError
from agentflan.jsonlog import BadLine, read_records, repair_tail

log = logging.getLogger(__name__)
T = TypeVar("T")
RETRY_STATUS = frozenset({408, 429})


class ClientConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str
    """e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`."""
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the API key (none sent when unset or empty)."""
    concurrency: int = Field(4, ge=1, le=256)
    retries: int = Field(4, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    backoff_s: float = Field(1.0, ge=0)
    """First retry delay; doubles per retry, at most 30 s."""
    cache: str | None = None
    """Cache file (JSONL) of responses keyed by request; None: no cache."""


class RequestError(AgentflanError):
    """A request that failed for good. `retryable` says whether the failure was of a kind that
    retries were tried for (timeouts, 429, 5xx); `status` is the HTTP status when there was one."""

    def __init__(self, message: str, *, url: str, status: int | None = None, attempts: int = 1,
                 retryable: bool = False) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.attempts = attempts
        self.retryable = retryable


class ContextLimitError(RequestError):
    """The conversation no longer fits the model's context: the episode cannot go on."""


class EmptyReply(RequestError):
    """The endpoint answered with a completion that holds nothing: `content` null and no tool
    calls (a reasoning model that spent its tokens thinking, a filtered reply). It is not the
    model's answer to score: the caller counts it as a failed request."""


class _Retry(Exception):
    def __init__(self, reason: str, status: int | None = None, wait: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.wait = wait


class OpenAIClient:
    """`POST {base_url}/chat/completions`, cached and retried; see the module docstring."""

    def __init__(self, config: ClientConfig, cache_path: str | Path | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        where = config.cache or cache_path
        self.cache_path = Path(where) if where else None
        self._cache: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._sleep = sleep
        self.requests = 0
        """HTTP requests sent (retries included)."""
        self.cache_hits = 0
        self.failures = 0
        if self.cache_path and self.cache_path.exists():
            self._load_cache(self.cache_path)

    def _load_cache(self, path: Path) -> None:
        """The cached responses; a cut last line (a killed run) is dropped with a warning, so the
        next append starts on a line of its own; a damaged entry elsewhere is asked again."""
        repair_tail(path)
        try:
            for _, entry in read_records(path):
                try:
                    self._cache[entry["key"]] = entry["response"]
                except (KeyError, TypeError):
                    continue
        except BadLine as e:  # a cache, not a result: what cannot be read is asked again
            log.warning("%s; the entries from there on are asked again", e)

    def key(self, body: dict[str, Any]) -> str:
        """The cache key of a request: its URL and its whole body."""
        blob = json.dumps({"url": self.url, "body": body}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()

    def body(self, messages: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """A request body for this client's model (`None` parameters left out)."""
        return {"model": self.config.model, "messages": messages, **{k: v for k, v in params.items() if v is not None}}

    def chat(self, body: dict[str, Any]) -> dict[str, Any]:
        """One chat completion (from the cache when the same request was answered before).

        Raises:
            RequestError: The request failed after its retries, or the reply is not a completion.
        """
        key = self.key(body)
        with self._lock:
            if key in self._cache:
                self.cache_hits += 1
                return self._cache[key]
        response = self._send(body)
        with self._lock:
            self._cache[key] = response
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "response": response}, ensure_ascii=False) + "\n")
        return response

    def chat_many(self, bodies: Sequence[dict[str, Any]]) -> list[dict[str, Any] | RequestError]:
        """Completions in input order, `concurrency` at a time; a failed request yields its error."""
        return self.map(self.chat, bodies)

    def map(self, fn: Callable[[dict[str, Any]], T], bodies: Sequence[dict[str, Any]]) -> list[T | RequestError]:
        def one(body: dict[str, Any]) -> T | RequestError:
            try:
                return fn(body)
            except RequestError as e:
                return e
        if len(bodies) <= 1 or self.config.concurrency == 1:
            return [one(b) for b in bodies]
        with ThreadPoolExecutor(min(self.config.concurrency, len(bodies))) as pool:
            return list(pool.map(one, bodies))

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        name = self.config.api_key_env
        key = os.environ.get(name, "") if name else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _send(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body, ensure_ascii=False).encode()
        delay = self.config.backoff_s
        attempts = 0
        while True:
            attempts += 1
            with self._lock:
                self.requests += 1
            try:
                return self._once(data)
            except _Retry as e:
                if attempts > self.config.retries:
                    with self._lock:
                        self.failures += 1
                    raise RequestError(f"{self.url}: {e.reason} (after {attempts} attempt(s))", url=self.url,
                                       status=e.status, attempts=attempts, retryable=True) from None
                wait = e.wait if e.wait is not None else delay
                log.warning("request to %s failed (%s); retry %d in %.1fs", self.url, e.reason, attempts, wait)
                self._sleep(min(wait, 60.0))
                delay = min(delay * 2, 30.0)
            except RequestError as e:
                e.attempts = attempts
                with self._lock:
                    self.failures += 1
                raise

    def _once(self, data: bytes) -> dict[str, Any]:
        req = urllib.request.Request(self.url, data=data, headers=self._headers(), method="POST")
        timeout = self.config.timeout_s
        watchdog = _Deadline(time.monotonic() + timeout)  # the whole request, not each socket operation
        try:
            with watchdog.opener().open(req, timeout=timeout) as resp:
                raw = _read_by(resp, watchdog.at, timeout)
        except urllib.error.HTTPError as e:
            try:
                detail = e.read()[:300].decode("utf-8", "replace")
            except (OSError, http.client.HTTPException):  # the deadline cut the error's body
                detail = ""
            if e.code in RETRY_STATUS or e.code >= 500:
                raise _Retry(f"HTTP {e.code}: {detail}", e.code, _retry_after(e.headers.get("Retry-After"))) from None
            raise RequestError(f"{self.url}: HTTP {e.code}: {detail}", url=self.url, status=e.code) from None
        except (OSError, http.client.HTTPException) as e:
            if watchdog.expired or isinstance(e, TimeoutError) or (
                    isinstance(e, urllib.error.URLError) and isinstance(e.reason, TimeoutError)):
                # the watchdog shut the socket: whatever the read that was waiting raised, it is the deadline
                raise _Retry(f"timed out after {timeout:g} s (the whole request: connecting, sending, the "
                             "response headers and body)") from None
            if isinstance(e, urllib.error.URLError):
                raise RequestError(f"{self.url}: cannot connect ({e.reason}); is the server running?",
                                   url=self.url) from None
            if isinstance(e, (OSError, http.client.IncompleteRead)):  # reset or closed mid-response: a passing fault
                raise _Retry(f"connection failed: {type(e).__name__}: {e}") from None
            # a status line or headers that are not HTTP: another kind of server on that port
            raise RequestError(f"{self.url}: the reply is not HTTP ({type(e).__name__}: {str(e)[:100]}); is "
                               "base_url the endpoint's address?", url=self.url) from None
        finally:
            watchdog.cancel()
        try:
            response = json.loads(raw)
            message = response["choices"][0]["message"]
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, IndexError, TypeError):
            if watchdog.expired:  # the watchdog's shutdown ended the body early: a cut reply, not a bad one
                raise _Retry(f"timed out after {timeout:g} s (the whole request: connecting, sending, the "
                             "response headers and body)") from None
            raise RequestError(f"{self.url}: the reply is not a chat completion: {raw[:200]!r}",
                               url=self.url) from None
        if not isinstance(message, dict):
            raise RequestError(f"{self.url}: the reply's message is not an object: {raw[:200]!r}", url=self.url)
        if message.get("content") is None and not message.get("tool_calls") and not message.get("function_call"):
            reason = response["choices"][0].get("finish_reason") if isinstance(response["choices"][0], dict) else None
            refusal = f", refusal {str(message['refusal'])[:100]!r}" if message.get("refusal") else ""
            raise EmptyReply(f"{self.url}: empty reply (content null, no tool calls; finish_reason {reason}"
                             f"{refusal}): not an answer", url=self.url)
        return response  # type: ignore[no-any-return]


class _Deadline:
    """A whole-request deadline that no single socket operation can outlive.

    A socket timeout bounds each operation: a server that trickles its status line and headers a
    byte at a time (or a TLS peer that stalls between records) keeps every read inside it forever.
    So each connection made for the request arms a timer that shuts its socket down at the deadline,
    which wakes whatever read or write is waiting; `expired` then says the error was the deadline.
    Connecting waits at most for what is left (`socket.create_connection`'s timeout).
    """

    def __init__(self, at: float) -> None:
        self.at = at
        """`time.monotonic()` at which the request is cut off."""
        self.expired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        self._done = False

    def left(self) -> float:
        return max(0.001, self.at - time.monotonic())

    def watch(self, sock: socket.socket) -> None:
        """Shut `sock` down at the deadline (at once if it has passed)."""
        with self._lock:
            self._socks.append(sock)
            if self._timer is None and not self._done:
                self._timer = threading.Timer(self.at - time.monotonic(), self._expire)
                self._timer.daemon = True
                self._timer.start()

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for sock in self._socks:
                # shutdown, not close: the socket object stays valid for whoever still holds it
                with contextlib.suppress(OSError):  # already closed, or never connected
                    sock.shutdown(socket.SHUT_RDWR)

    def cancel(self) -> None:
        with self._lock:
            self._done = True
            self._socks.clear()
            if self._timer is not None:
                self._timer.cancel()

    def connect(self, address: tuple[str, int], timeout: Any = None, source_address: Any = None) -> socket.socket:
        """`socket.create_connection` that waits at most for what is left, and watches the socket."""
        sock = socket.create_connection(address, self.left(), source_address)
        self.watch(sock)
        return sock

    def opener(self) -> urllib.request.OpenerDirector:
        """urllib's opener (proxies, errors, as `urlopen`) whose connections keep this deadline."""
        return urllib.request.build_opener(_DeadlineHTTPHandler(self), _DeadlineHTTPSHandler(self))


class _DeadlineHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = deadline.connect


class _DeadlineHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, deadline: _Deadline, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = deadline.connect
        self._deadline = deadline

    def connect(self) -> None:
        super().connect()  # the TLS socket replaces (detaches) the plain one: watch it too
        self._deadline.watch(self.sock)


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        # the deadline reaches the connection through do_open's keyword arguments
        return self.do_open(_DeadlineHTTPConnection, req, deadline=self._deadline)  # type: ignore[arg-type]


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self._deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_DeadlineHTTPSConnection, req,  # type: ignore[arg-type]
                            context=self._context, deadline=self._deadline)  # type: ignore[attr-defined]


def _read_by(resp: Any, deadline: float, timeout_s: float) -> bytes:
    """The body of `resp`, read before `deadline` (`time.monotonic`): a server that trickles its
    reply gets no more than the request's time, however often it sends a byte."""
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    parts: list[bytes] = []
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the whole request took longer than {timeout_s:g} s")
        if sock is not None:  # each read waits at most for what is left of the request
            sock.settimeout(left)
        chunk = resp.read1(1 << 16)  # one read of the socket: read() would wait to fill its buffer
        if not chunk:
            return b"".join(parts)
        parts.append(chunk)


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
