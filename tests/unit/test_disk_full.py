"""A full disk, simulated: the write that fills it raises ENOSPC as write(2) does (no file named)
after part of its data reached the file. The command ends in one line naming the file it was
writing, exit 1; nothing is left incomplete (no zero-byte or cut output, no temporary file); run
again once there is space, it gives the same bytes as a run that never failed."""

from __future__ import annotations

import errno
import json
import pathlib
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.errors import EXIT_RUNTIME


def _full_disk(monkeypatch, name: str, after: int = 0) -> None:
    """Every small-file write whose final name is `name` writes half its data, then fails, once
    `after` such writes have succeeded."""
    seen = {"n": 0}
    real_text, real_bytes = pathlib.Path.write_text, pathlib.Path.write_bytes

    def hit(path: Path) -> bool:
        if path.name.removeprefix(".partial-") != name:
            return False
        seen["n"] += 1
        return seen["n"] > after

    def write_text(self, data, encoding=None, errors=None, newline=None):
        if hit(self):
            real_text(self, data[: len(data) // 2], encoding=encoding)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_text(self, data, encoding=encoding, errors=errors, newline=newline)

    def write_bytes(self, data):
        if hit(self):
            real_bytes(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_bytes(self, data)

    monkeypatch.setattr(pathlib.Path, "write_text", write_text)
    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


def _leftovers(root: Path) -> list[str]:
    """Temporary files, and files at zero bytes (an output that looks written but is not)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and (
        p.name.startswith(".partial-") or p.name.endswith(".tmp") or ".tmp-" in p.name or p.stat().st_size == 0))


def _files(root: Path) -> dict[str, bytes]:
    skip = ("versions.json",)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    from agentflan.io.writers import WRITERS
    from agentflan.samples import episodes

    root = tmp_path_factory.mktemp("recipe")
    eps = episodes()
    WRITERS.get("openai")().write([eps[i % len(eps)].model_copy(update={"id": f"r{i}"}) for i in range(200)],
                                  root / "in.jsonl")
    (root / "r.yaml").write_text(json.dumps({
        "name": "t", "sources": {"big": {"reader": "openai", "paths": [str(root / "in.jsonl")]}},
        "outputs": {"all": {"from": ["big"], "steps": [{"type": "align"}]}}, "write": ["native", "sharegpt"]}))
    fresh = root / "fresh"
    res = CliRunner().invoke(cli, ["data", "build", str(root / "r.yaml"), "-o", str(fresh)])
    assert res.exit_code == 0, res.output
    return root / "r.yaml", _files(fresh)


@pytest.mark.parametrize("name", ["big.report.json", "all.steps.json", "stats.json", "report.md",
                                  "records_per_output.png", "all.json"])
def test_a_build_on_a_full_disk_names_the_file_leaves_nothing_and_resumes_to_the_same_bytes(
        tmp_path, monkeypatch, recipe, name):
    path, fresh = recipe
    out = tmp_path / "out"
    if name.endswith(".png"):  # matplotlib writes through its own file object
        import matplotlib.figure

        real = matplotlib.figure.Figure.savefig

        def savefig(self, fname, *a, **k):
            if Path(fname).name.removeprefix(".partial-") == name:
                Path(fname).write_bytes(b"\x89PNG")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, fname, *a, **k)

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    else:
        _full_disk(monkeypatch, name)
    res = CliRunner().invoke(cli, ["data", "build", str(path), "-o", str(out)])
    assert res.exit_code == EXIT_RUNTIME, res.output
    err = res.stderr.strip().splitlines()[-1]
    assert err.startswith("agentflan: error: ") and f"{name}: No space left on device while writing it" in err, err
    assert _leftovers(out) == []
    monkeypatch.undo()  # space freed
    res = CliRunner().invoke(cli, ["data", "build", str(path), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert _files(out) == fresh


def test_a_build_whose_disk_fills_mid_output_removes_its_temporaries(tmp_path, monkeypatch, recipe):
    from agentflan.pipeline.stages.files import Sink

    path, fresh = recipe
    out = tmp_path / "out"
    real = Sink.add
    count = {"n": 0}

    def add(self, traj):
        count["n"] += 1
        if count["n"] == 50:  # half way through the output
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, traj)

    monkeypatch.setattr(Sink, "add", add)
    res = CliRunner().invoke(cli, ["data", "build", str(path), "-o", str(out)])
    assert res.exit_code == EXIT_RUNTIME, res.output
    assert f"{out / 'native' / 'all.jsonl'}: No space left on device while writing it" in res.stderr, res.stderr
    assert _leftovers(out) == [] and not (out / "native" / "all.jsonl").exists()
    monkeypatch.undo()
    assert CliRunner().invoke(cli, ["data", "build", str(path), "-o", str(out)]).exit_code == 0
    assert _files(out) == fresh


def test_convert_report_and_eval_summary_on_a_full_disk(tmp_path, monkeypatch):
    from tests.helpers import write_jsonl

    src = write_jsonl(tmp_path / "in.jsonl", [{"messages": [{"role": "user", "content": "Q"},
                                                            {"role": "assistant", "content": "A"}]}])
    _full_disk(monkeypatch, "report.json")
    res = CliRunner().invoke(cli, ["data", "convert", str(src), "-o", str(tmp_path / "o.jsonl"), "--report",
                                   str(tmp_path / "report.json")])
    assert res.exit_code == EXIT_RUNTIME and f"{tmp_path / 'report.json'}: No space left" in res.stderr, res.output
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()

    ev = tmp_path / "ev"
    args = ["eval", "toolapi", "--policy", "expert", "-n", "3", "-o", str(ev)]
    assert CliRunner().invoke(cli, [*args[:-1], str(tmp_path / "ref")]).exit_code == 0
    _full_disk(monkeypatch, "summary.json", after=1)  # the run's summary is written, the folder's is not
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == EXIT_RUNTIME and f"{ev / 'summary.json'}: No space left" in res.stderr, res.output
    assert _leftovers(ev) == []
    monkeypatch.undo()
    assert CliRunner().invoke(cli, args).exit_code == 0
    ref = (tmp_path / "ref" / "toolapi-expert" / "episodes.jsonl").read_bytes()
    assert (ev / "toolapi-expert" / "episodes.jsonl").read_bytes() == ref
