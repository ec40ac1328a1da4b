"""A hash of agentflan's own source code, for caches and resumable stages that its code produces."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

_CODE_FP: list[str] = []


def code_fingerprint() -> str:
    """A hash of agentflan's own source: a changed step or template invalidates what it built."""
    if not _CODE_FP:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for p in sorted(root.rglob("*.py")):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
        _CODE_FP.append(h.hexdigest()[:16])
    return _CODE_FP[0]


def fingerprint(*parts: Any, length: int = 16) -> str:
    """A hash of `parts` and of agentflan's own source: the key of what the code made from `parts`.

    The build's stage markers and the training cache's keys are both this hash, so a change of
    either the inputs or the code invalidates what was made.

    Args:
        *parts: JSON-serializable inputs (others hash as their `str`); dict keys are sorted.
        length: How many hex digits to keep.

    Returns:
        The first `length` hex digits of the SHA-256 of `[*parts, code_fingerprint()]` as JSON.
    """
    blob = json.dumps([*parts, code_fingerprint()], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
