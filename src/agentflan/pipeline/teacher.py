"""A teacher model behind any OpenAI-compatible endpoint, for the responses of negative samples.

The teacher is a model user like the OpenAI engine (`models.engines.OpenAIEngine`), built from the
same pieces one layer lower (the pipeline sits below the models layer, so it cannot import an
engine): the one client (`agentflan.client.OpenAIClient`: concurrent, retried, cached, resumable),
the one OpenAI rendering of our messages (`formats.openai.openai_messages`) and the one reader of
a reply (`formats.openai.reply_message`). A conversation goes in as schema messages and text
comes back; a reply that cannot be read is a failed request, as it is for the engine.

The cache defaults to `<build output>/.cache/teacher.jsonl`, so a killed build resumes without
paying twice and a re-run with the same inputs makes no request at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import Field

from agentflan.client import ClientConfig, OpenAIClient, RequestError
from agentflan.errors import ParseError
from agentflan.formats.openai import openai_messages, reply_message
from agentflan.schema import Message


class TeacherConfig(ClientConfig):
    temperature: float = 0.7
    max_tokens: int = 512
    retries: int = Field(4, ge=0)


TeacherError = RequestError


class Teacher:
    """Completes conversations with the configured endpoint's model (see the module docstring).

    Args:
        config: The endpoint, model and sampling.
        cache_path: The request cache (a rerun asks nothing it asked before).
    """

    def __init__(self, config: TeacherConfig, cache_path: str | Path | None = None) -> None:
        self.config = config
        self.client = OpenAIClient(config, cache_path)

    @property
    def requests(self) -> int:
        return self.client.requests

    @property
    def cache_hits(self) -> int:
        return self.client.cache_hits

    def _body(self, messages: list[Message]) -> dict[str, Any]:
        return self.client.body(openai_messages(messages), temperature=self.config.temperature,
                                max_tokens=self.config.max_tokens)

    def _text(self, body: dict[str, Any]) -> str:
        response = self.client.chat(body)
        try:
            return reply_message(response).content
        except ParseError as e:  # the server's fault: a failed request, never an empty answer
            raise RequestError(f"{self.client.url}: unreadable message in the reply: {e}", url=self.client.url) from e

    def complete(self, messages: list[Message]) -> str:
        """One completion's text (from the cache when present).

        Raises:
            RequestError: The request failed after its retries, or its reply is unreadable.
        """
        return self._text(self._body(messages))

    def complete_many(self, batch: Sequence[list[Message]]) -> list[str | RequestError]:
        """Completions in input order; a request that fails after all retries yields its error."""
        return self.client.map(self._text, [self._body(m) for m in batch])
