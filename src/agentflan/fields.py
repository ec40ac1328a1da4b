"""Checked access to a raw record's fields: a wrong or missing field becomes a `ParseError` naming it.

The readers (`io`) and the formats' own parsers of model replies (`formats.openai.assistant_message`)
read raw JSON with these; `io.base` re-exports them, where readers have always imported them.
"""

from __future__ import annotations

from typing import Any

from agentflan.errors import ParseError


def require_key(record: Any, key: str, kind: type | tuple[type, ...], where: str = "") -> Any:
    """`record[key]`, checked for presence and type, with an error naming the field."""
    path = f"{where}.{key}" if where else key
    if not isinstance(record, dict):
        raise ParseError(f"expected an object, found {type(record).__name__}", reason="wrong_type",
                         field=where or None)
    if key not in record:
        keys = ", ".join(sorted(map(str, record))) or "none"
        raise ParseError(f"missing key {key!r} (available keys: {keys})", reason="missing_key", field=path)
    value = record[key]
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ParseError(f"expected {want}, found {type(value).__name__}", reason="wrong_type", field=path)
    return value


def optional_key(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str = "",
                 default: Any = None) -> Any:
    """`record[key]` checked for type when present and not null, else `default`."""
    value = record.get(key)
    if value is None:
        return default
    if not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ParseError(f"expected {want}, found {type(value).__name__}", reason="wrong_type",
                         field=f"{where}.{key}" if where else key)
    return value


def as_text(value: Any, where: str) -> str:
    """A message content that must be a string (None becomes "")."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ParseError(f"expected a string, found {type(value).__name__}", reason="wrong_type", field=where)
    return value
