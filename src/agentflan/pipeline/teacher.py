"""A teacher model behind any OpenAI-compatible endpoint, for the responses of negative samples.

A thin layer over `agentflan.client.OpenAIClient` (concurrent, retried, cached, resumable): the
cache defaults to `<build output>/.cache/teacher.jsonl`, so a killed build resumes without paying
twice and a re-run with the same inputs makes no request at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import Field

from agentflan.client import ClientConfig, OpenAIClient, RequestError


class TeacherConfig(ClientConfig):
    temperature: float = 0.7
    max_tokens: int = 512
    retries: int = Field(4, ge=0)


TeacherError = RequestError


class Teacher:
    def __init__(self, config: TeacherConfig, cache_path: str | Path | None = None) -> None:
        self.config = config
        self.client = OpenAIClient(config, cache_path)

    @property
    def requests(self) -> int:
        return self.client.requests

    @property
    def cache_hits(self) -> int:
        return self.client.cache_hits

    def _body(self, messages: list[dict[str, str]]) -> dict[str, object]:
        return self.client.body(messages, temperature=self.config.temperature, max_tokens=self.config.max_tokens)

    def complete(self, messages: list[dict[str, str]]) -> str:
        """One completion's text (from the cache when present). Raises `RequestError`."""
        return _content(self.client.chat(self._body(messages)))

    def complete_many(self, batch: Sequence[list[dict[str, str]]]) -> list[str | RequestError]:
        """Completions in input order; a request that fails after all retries yields its error."""
        return self.client.map(lambda body: _content(self.client.chat(body)), [self._body(m) for m in batch])


def _content(response: dict[str, object]) -> str:
    message = response["choices"][0]["message"]  # type: ignore[index]
    return str(message.get("content") or "")
