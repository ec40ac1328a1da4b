"""Format auto-detection from the first record of the first file; ambiguity is an error."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from agentflan.errors import ConfigError
from agentflan.io.files import expand, iter_records

_BRACKET_ACTION = re.compile(r"^Action: ?[A-Za-z_]\w*\[", re.MULTILINE)
_HERMES_TAG = re.compile(r"<tool_call>|<tools>|<tool_response>")
_AI_TASK = re.compile(r"^(os|db|kg|webshop|alfworld|mind2web)_\w+$")


def detect_record(record: Any) -> str | None:
    """The reader name for one raw record, or None when it is not recognisable."""
    if not isinstance(record, dict):
        return None
    if "schema_version" in record and "messages" in record and "source" in record:
        return "native"
    if "answer_generation" in record:
        return "toolbench"
    if "conversation" in record:
        return "agentflan"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "query" in record and "api_list" in record:
        return "toolbench_query"
    if "description" in record and "table" in record and "label" in record:
        return "dbbench"
    if "query" in record and "answers" in record and "tools" in record:
        return "xlam"
    convs = record.get("conversations")
    if isinstance(convs, list) and convs and all(isinstance(c, dict) for c in convs):
        roles = {c.get("from") for c in convs}
        if ("tool" in roles and not roles & {"function_call", "observation"}) or any(
                isinstance(c.get("value"), str) and _HERMES_TAG.search(c["value"]) for c in convs):
            return "hermes"
        if "role" in convs[0] and "content" in convs[0]:
            return "agentflan"
        if "function" in roles and "assistant" in roles:
            return "toolbench"
        if "loss" in convs[0] and _AI_TASK.match(str(record.get("id", ""))):
            return "agentinstruct"
        return "sharegpt"
    msgs = record.get("messages")
    if isinstance(msgs, list) and msgs and all(isinstance(m, dict) for m in msgs):
        if "from" in msgs[0]:
            return "sharegpt"
        assistant_text = [m.get("content") for m in msgs if m.get("role") == "assistant"]
        if (not record.get("tools") and any(isinstance(t, str) and _BRACKET_ACTION.search(t) for t in assistant_text)
                and any(isinstance(m.get("content"), str) and m["content"].startswith("Observation:")
                        for m in msgs if m.get("role") == "user")):
            return "react"
        return "openai"
    return None


def detect(paths: str | Sequence[str]) -> str:
    """Detect the format of `paths` from the first decodable record; raise if unsure."""
    files = expand(paths)
    for raw in iter_records(files[0]):
        if raw.error is None:
            fmt = detect_record(raw.value)
            if fmt is None:
                keys = ", ".join(sorted(raw.value)) if isinstance(raw.value, dict) else type(raw.value).__name__
                raise ConfigError(f"cannot detect the format of {raw.origin} (keys: {keys}); pass --from")
            return fmt
    raise ConfigError(f"cannot detect the format of {files[0]}: no readable record; pass --from")
