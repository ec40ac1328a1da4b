"""Shared fixtures: the real samples in ../shared/data, an offline guard, tmp outputs."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Offline and isolated: no hub access, no telemetry, caches in a temporary folder."""
    import tempfile

    for key in ("HF_HUB_OFFLINE", "HF_HUB_DISABLE_TELEMETRY", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="agentflan-hf-"))
    os.environ.setdefault("AGENTFLAN_CACHE", tempfile.mkdtemp(prefix="agentflan-cache-"))
SHARED_DATA = Path(os.environ.get("AGENTFLAN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public samples; skipped in a user's clone, a failure in CI (CI=true)."""
    if not SHARED_DATA.is_dir():
        msg = f"real sample data not found at {SHARED_DATA} (the ../shared folder beside the repository)"
        if _in_ci():
            pytest.fail(msg + "; CI must run with ../shared present")
        pytest.skip(msg)
    return SHARED_DATA


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


SAMPLE_LAYERS = ["fixtures", "shared"] if SHARED_DATA.is_dir() or _in_ci() else ["fixtures"]
"""The real-sample layer is collected where ../shared/data is (and under CI, where its absence is a
failure); in a user's clone it is left out, so nothing skips, and the summary says so."""


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if "shared" not in SAMPLE_LAYERS:
        terminalreporter.write_line(f"agentflan: tests read the fixtures only; the real-sample layer was not "
                                    f"collected ({SHARED_DATA} not found)")


@pytest.fixture(scope="session", params=SAMPLE_LAYERS)
def sample_data(request: pytest.FixtureRequest) -> Path:
    """The sample files a test reads, laid out as ../shared/data is: first the synthetic fixtures
    shipped in tests/fixtures/data (so a fresh clone runs every test), then, as an extra layer where
    ../shared/data is, the real samples (`shared_data`: a failure under CI=true if absent)."""
    from tests.helpers import FIXTURE_DATA

    if request.param == "fixtures":
        return FIXTURE_DATA
    path: Path = request.getfixturevalue("shared_data")
    return path


@pytest.fixture(scope="session")
def corpus(sample_data: Path) -> list[Any]:
    """A mixed corpus of trajectories from every sample source (`tests.helpers.sample_corpus`)."""
    from tests.helpers import sample_corpus

    return sample_corpus(sample_data)


@pytest.fixture(scope="session")
def tok(corpus: list[Any]) -> Any:
    """A tiny tokenizer trained on the corpus as training renders it."""
    pytest.importorskip("transformers", reason="training extras not installed (pip install 'agentflan[train]')")
    from agentflan.formats.protocols import training_texts
    from agentflan.training.models import tiny_tokenizer

    return tiny_tokenizer(training_texts(corpus, limit=len(corpus)))


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """Unit tests may only talk to loopback."""
    if request.node.get_closest_marker("network"):
        return
    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else str(address)
        if (isinstance(host, str) and (host.startswith("127.") or host in ("localhost", "::1"))) or self.family == socket.AF_UNIX:
            return real_connect(self, address)  # type: ignore[arg-type]
        raise RuntimeError(f"test tried to open a network connection to {address!r}")

    monkeypatch.setattr(socket.socket, "connect", guarded)
