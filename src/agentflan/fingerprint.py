"""A hash of agentflan's own source code, for caches and resumable stages that its code produces."""

from __future__ import annotations

import hashlib
from pathlib import Path

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
