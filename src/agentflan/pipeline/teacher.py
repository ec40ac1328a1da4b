"""A teacher model behind any OpenAI-compatible endpoint: concurrent, retried, cached, resumable.

Used by `negatives` to write responses. Requests are plain `POST {base_url}/chat/completions`
(OpenAI, vLLM, SGLang, TGI, `transformers serve`, ...). Every answer is appended to a JSONL cache
keyed by the hash of the request, so a killed run resumes without paying twice and a re-run with
the same inputs makes no request at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class TeacherConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_url: str
    """e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`."""
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    """Environment variable holding the API key (none sent when unset or empty)."""
    temperature: float = 0.7
    max_tokens: int = 512
    concurrency: int = Field(4, ge=1, le=256)
    retries: int = Field(4, ge=0)
    timeout_s: float = 60.0
    backoff_s: float = 1.0
    """First retry delay; doubles per retry, at most 30 s."""
    cache: str | None = None
    """Cache file (JSONL); default `<build output>/.cache/teacher.jsonl`."""


class TeacherError(RuntimeError):
    pass


class Teacher:
    def __init__(self, config: TeacherConfig, cache_path: str | Path | None = None) -> None:
        self.config = config
        where = config.cache or cache_path
        self.cache_path = Path(where) if where else None
        self._cache: dict[str, str] = {}
        self._lock = threading.Lock()
        self.requests = 0
        self.cache_hits = 0
        if self.cache_path and self.cache_path.exists():
            for line in self.cache_path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: ignore, it is re-requested
                    continue
                self._cache[entry["key"]] = entry["content"]

    def _payload(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        return {"model": self.config.model, "messages": messages, "temperature": self.config.temperature,
                "max_tokens": self.config.max_tokens}

    @staticmethod
    def key(payload: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def complete(self, messages: list[dict[str, str]]) -> str:
        """One completion (from the cache when present)."""
        payload = self._payload(messages)
        key = self.key(payload)
        with self._lock:
            if key in self._cache:
                self.cache_hits += 1
                return self._cache[key]
        content = self._request(payload)
        with self._lock:
            self._cache[key] = content
            if self.cache_path:
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with self.cache_path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"key": key, "content": content}, ensure_ascii=False) + "\n")
        return content

    def complete_many(self, batch: Sequence[list[dict[str, str]]]) -> list[str | TeacherError]:
        """Completions in input order; a request that fails after all retries yields its error."""
        def one(messages: list[dict[str, str]]) -> str | TeacherError:
            try:
                return self.complete(messages)
            except TeacherError as e:
                return e
        with ThreadPoolExecutor(self.config.concurrency) as pool:
            return list(pool.map(one, batch))

    def _request(self, payload: dict[str, Any]) -> str:
        url = self.config.base_url.rstrip("/") + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.config.api_key_env or "", "") if self.config.api_key_env else ""
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = json.dumps(payload).encode()
        delay = self.config.backoff_s
        last = ""
        for attempt in range(self.config.retries + 1):
            with self._lock:
                self.requests += 1
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.config.timeout_s) as resp:
                    data = json.loads(resp.read())
                return str(data["choices"][0]["message"]["content"] or "")
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:200]!r}"
                if e.code not in (408, 409, 429) and e.code < 500:
                    break  # a client error will not fix itself
            except (urllib.error.URLError, TimeoutError, ConnectionError, KeyError, IndexError,
                    json.JSONDecodeError) as e:
                last = f"{type(e).__name__}: {e}"
            if attempt < self.config.retries:
                log.warning("teacher request failed (%s), retry %d in %.1fs", last, attempt + 1, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise TeacherError(f"teacher {self.config.model} at {url} failed: {last}")
