"""agentflan's version, and the versions of what a run depends on (recorded with builds and evals)."""

from __future__ import annotations

import platform
from importlib import metadata

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """agentflan's, Python's and the installed dependencies' versions (a build's `versions.json`,
    an eval's config), so that a result says what produced it."""
    out = {"agentflan": __version__, "python": platform.python_version()}
    for pkg in ("pydantic", "pyyaml", "click", "fsspec", "transformers", "tokenizers", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out
