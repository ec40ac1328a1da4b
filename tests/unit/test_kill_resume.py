"""An evaluation killed (SIGKILL) or interrupted (Ctrl-C, SIGTERM) in a real process resumes to the
log an uninterrupted run writes, byte for byte, and leaves no temporary file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

N = "250"


def _eval(out: Path) -> subprocess.Popen[str]:
    def default_sigint() -> None:  # a background job starts with SIGINT ignored: give the CLI the default
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    return subprocess.Popen([sys.executable, "-m", "agentflan.cli.main", "eval", "toolapi", "--policy", "expert",
                             "-n", N, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=default_sigint)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    out = tmp_path_factory.mktemp("fresh")
    proc = _eval(out)
    assert proc.wait(timeout=300) == 0, proc.communicate()
    return (out / "toolapi-expert" / "episodes.jsonl").read_bytes()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM])
def test_an_eval_stopped_mid_run_resumes_to_the_same_log(tmp_path, fresh, signum):
    out = tmp_path / "out"
    log = out / "toolapi-expert" / "episodes.jsonl"
    for _ in range(3):  # a busy machine may finish first: try again (a CLI ignoring signals fails every try)
        proc = _eval(out)
        deadline = time.monotonic() + 240
        while _lines(log) < 20 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signum)
        code = proc.wait(timeout=120)
        err = proc.stderr.read() if proc.stderr else ""
        if code != 0:
            break
    assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signum), err
    assert "Traceback" not in err
    assert 0 < _lines(log) < int(N)  # stopped part way
    assert [p.name for p in out.rglob("*") if p.name.startswith(".partial-")] == []
    proc = _eval(out)
    assert proc.wait(timeout=300) == 0, proc.communicate()
    assert log.read_bytes() == fresh
