"""`agentflan train` stopped part way, in a real process: killed (SIGKILL), Ctrl-C (SIGINT), SIGTERM,
or a full disk while saving (simulated: the write puts half its data and fails as torch's and
safetensors' writers do). Each exits as README's table says, leaves no temporary folder, no
incomplete checkpoint and no model folder that looks finished; run again with `resume=true`, it
continues from its last complete checkpoint and ends with the loss log (every step's loss) and the
final model's bytes of a run that was never stopped.

A tiny random model on the built-in episodes, one torch thread (the same arithmetic in every run),
8 steps, a checkpoint every 2.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("trl", reason="training extras not installed (pip install 'agentflan[train]')")

STEPS = 8


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    from agentflan.io.writers import WRITERS
    from agentflan.samples import episodes

    root = tmp_path_factory.mktemp("train-recipe")
    eps = episodes()
    WRITERS.get("native")().write([eps[i % len(eps)].model_copy(update={"id": f"r{i}"}) for i in range(64)],
                                  root / "train.jsonl")
    path = root / "r.yaml"
    path.write_text(json.dumps({
        "name": "interrupted", "model": {"name_or_path": "tiny"},
        "data": {"paths": [str(root / "train.jsonl")], "template": "agentflan", "max_length": 256},
        "output_dir": str(root / "unused"),
        "trl": {"max_steps": STEPS, "per_device_train_batch_size": 2, "learning_rate": 1e-3, "logging_steps": 1,
                "save_strategy": "steps", "save_steps": 2, "use_cpu": True}}))
    return path


def _train(recipe: Path, out: Path, *extra: str, prelude: str = "", env: dict[str, str] | None = None,
           ) -> subprocess.Popen[str]:
    def default_sigint() -> None:  # a background job starts with SIGINT ignored: give the CLI the default
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    code = f"{prelude}\nimport sys\nfrom agentflan.cli.main import main\nsys.argv[0] = 'agentflan'\nmain()\n"
    return subprocess.Popen([sys.executable, "-c", code, "train", str(recipe), f"output_dir={out}", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})})


def _finish(proc: subprocess.Popen[str], timeout: float = 600) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _result(out: Path) -> tuple[list[tuple[int, float]], float, bytes]:
    """(step, loss) of every logged step, the run's mean loss, the final model's bytes."""
    metrics = json.loads((out / "metrics.json").read_text())
    losses = [(h["step"], h["loss"]) for h in metrics["log_history"] if "loss" in h]
    return losses, metrics["train_loss"], (out / "final" / "model.safetensors").read_bytes()


def _unfinished(out: Path) -> list[str]:
    """What a stopped run must not leave: temporary folders and files, incomplete checkpoints, a
    final model or metrics that look like a finished run."""
    from agentflan.training.checkpoints import incomplete_checkpoints

    bad = [str(p.relative_to(out)) for p in out.rglob("*") if p.name.startswith((".partial-", ".old-"))
           or ".tmp" in p.name]
    bad += [str(p.relative_to(out)) for p in incomplete_checkpoints(out)]
    bad += [name for name in ("final", "merged", "metrics.json") if (out / name).exists()]
    return sorted(bad)


def _checkpoints(out: Path) -> list[int]:
    from agentflan.training.checkpoints import checkpoint_step

    return sorted(s for p in out.glob("checkpoint-*") if (s := checkpoint_step(p)) is not None)


@pytest.fixture(scope="module")
def fresh(recipe, tmp_path_factory):
    out = tmp_path_factory.mktemp("fresh") / "run"
    code, err = _finish(_train(recipe, out))
    assert code == 0, err
    losses, mean, model = _result(out)
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))
    return losses, mean, model


# each case trains twice in a new process (about 10 s of CPU): SIGTERM, which unwinds as SIGINT does, is `slow`
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGINT,
                                    pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=lambda s: s.name)
def test_a_stopped_run_resumes_from_its_last_checkpoint_to_the_same_losses_and_model(recipe, fresh, tmp_path,
                                                                                     signum):
    out = tmp_path / "run"
    for _ in range(3):  # a busy machine may finish first: try again (a CLI ignoring signals fails every try)
        shutil.rmtree(out, ignore_errors=True)
        proc = _train(recipe, out)
        deadline = time.monotonic() + 300
        while not _checkpoints(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signum)
        code, err = _finish(proc)
        if code != 0:
            break
    assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signum), err
    assert "Traceback" not in err
    last = max(_checkpoints(out))
    assert 2 <= last < STEPS  # stopped part way, after a checkpoint
    if signum != signal.SIGKILL:  # unwound: it says how to go on, and removed what it was writing
        errors = [line for line in err.splitlines() if line.startswith("agentflan: error: ")]
        assert len(errors) == 1 and errors[0].startswith(f"agentflan: error: interrupted ({signum.name})"), err
        assert f"run again with resume=true to continue from checkpoint-{last}" in err, err
        assert _unfinished(out) == []
    # what a kill while saving leaves: a checkpoint without its state, one whose state was cut
    shutil.copytree(out / f"checkpoint-{last}", out / f"checkpoint-{last + 1}")
    (out / f"checkpoint-{last + 1}" / "trainer_state.json").unlink()
    shutil.copytree(out / f"checkpoint-{last}", out / f"checkpoint-{last + 3}")  # odd steps: never a real save's
    state = out / f"checkpoint-{last + 3}" / "trainer_state.json"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])

    code, err = _finish(_train(recipe, out, "resume=true"))
    assert code == 0, err
    assert f"checkpoint-{last + 1} is an incomplete checkpoint" in err and f"checkpoint-{last + 3} is an" in err
    losses, mean, model = _result(out)
    assert json.loads((out / "metrics.json").read_text())["resumed_from"] == f"checkpoint-{last}"
    assert losses == fresh[0]  # steps 1..last restored from the checkpoint, the rest trained again: same numbers
    assert mean == pytest.approx(fresh[1], rel=1e-12)  # the whole run's mean, not only the resumed steps'
    assert model == fresh[2]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


# torch's zip writer raises this (no errno) when the disk fills; safetensors names the OS error
_FULL_DISK = textwrap.dedent("""
    import io, os
    import torch
    import transformers.modeling_utils as mu
    from safetensors import SafetensorError

    AT = os.environ["FULL_DISK_AT"]
    real_save, real_safe = torch.save, mu.safe_save_file

    def _hit(f):
        return isinstance(f, (str, os.PathLike)) and str(f).endswith(AT)

    def save(obj, f, *a, **k):
        if _hit(f):
            buf = io.BytesIO()
            real_save(obj, buf, *a, **k)
            with open(f, "wb") as out:
                out.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 595904 vs 595796")
        return real_save(obj, f, *a, **k)

    def safe_save_file(tensors, filename, *a, **k):
        if _hit(filename):
            with open(filename, "wb") as out:
                out.write(b"\\0" * 1000)
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_safe(tensors, filename, *a, **k)

    torch.save, mu.safe_save_file = save, safe_save_file
""")


@pytest.mark.parametrize(("at", "named"), [
    ("checkpoint-4/optimizer.pt", "checkpoint-4/optimizer.pt: could not be written (is the disk full?"),
    pytest.param(".partial-final/model.safetensors", "final/model.safetensors: No space left on device while "
                 "writing it", marks=pytest.mark.slow),
], ids=["checkpoint", "final"])
def test_a_full_disk_while_saving_names_the_file_and_resumes_to_the_same_model(recipe, fresh, tmp_path, at, named):
    out = tmp_path / "run"
    code, err = _finish(_train(recipe, out, prelude=_FULL_DISK, env={"FULL_DISK_AT": at}))
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("agentflan: error: ")]  # tqdm may print after it
    assert len(errors) == 1 and f"{out}/{named}" in errors[0], err
    assert "Traceback" not in err
    assert _unfinished(out) == []  # the checkpoint or model being written is gone, nothing else claims to be done
    code, err = _finish(_train(recipe, out, "resume=true"))  # space freed
    assert code == 0, err
    losses, mean, model = _result(out)
    assert losses == fresh[0] and model == fresh[2] and mean == pytest.approx(fresh[1], rel=1e-12)


def test_resume_names_a_checkpoint_that_is_not_complete(recipe, tmp_path):
    from agentflan.errors import ConfigError
    from agentflan.training.checkpoints import resolve_resume

    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "model.safetensors").write_bytes(b"\0")
    with pytest.raises(ConfigError, match="checkpoint-4 is not a complete checkpoint: it has no trainer_state"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-4"), tidy=False)
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    assert resolve_resume(tmp_path, True, tidy=False) == tmp_path / "checkpoint-2"
    shutil.copytree(tmp_path / "checkpoint-2", tmp_path / "checkpoint-6")  # a state of another step
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text("[]")  # JSON, not a state
    assert resolve_resume(tmp_path, True, tidy=False) == tmp_path / "checkpoint-2"
    assert (tmp_path / "checkpoint-4").exists()  # tidy=False: another process's to remove
    assert resolve_resume(tmp_path, False) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]  # the incomplete ones removed
    with pytest.raises(ConfigError, match="checkpoint-9 is not a complete checkpoint: it does not exist"):
        resolve_resume(tmp_path, str(tmp_path / "checkpoint-9"))


def test_the_tokenized_data_cache_after_a_full_disk_a_kill_and_damage(tmp_path, monkeypatch, caplog):
    """The cache of tokenized rows is complete or absent: a full disk names the file and leaves no
    temporary folder, a killed build's temporary folder is never loaded (and removed by the next
    build), an entry damaged afterwards is built again with a warning, never trusted."""
    import errno

    import numpy as np

    from agentflan.errors import WriteFailed
    from agentflan.training.prepared import PreparedCache

    rows = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}]
    stats = {"rows": 2}
    cache = PreparedCache(tmp_path / "prepared", "k")
    real = np.save

    def full_disk(file, arr, *a, **k):
        if str(file).endswith("/labels.npy"):
            with open(file, "wb") as f:
                f.write(b"\x93NUMPY")  # what reached the disk before it filled
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(file, arr, *a, **k)

    monkeypatch.setattr(np, "save", full_disk)
    with cache.locked(), pytest.raises(WriteFailed, match=r"prepared/k/labels\.npy: No space left on device while"):
        cache.save(rows, stats)
    assert sorted(p.name for p in (tmp_path / "prepared").iterdir()) == ["k.lock"] and cache.load() is None
    monkeypatch.undo()

    stale = tmp_path / "prepared" / "k.tmp-99999"  # a build killed before its rename
    stale.mkdir()
    (stale / "stats.json").write_text("{}")
    assert cache.load() is None
    with cache.locked():
        cache.save(rows, stats)
    assert not stale.exists() and cache.load() == (rows, stats)

    (cache.path / "input_ids.npy").write_bytes(b"\x93NUMPY\x01\x00")
    with caplog.at_level("WARNING", logger="agentflan.training.prepared"):
        assert cache.load() is None
    assert "cannot be read" in caplog.text and "tokenizing again" in caplog.text


SAVE_FAILURES = [
    ("full-disk-torch", "checkpoint-4/optimizer.pt: could not be written (is the disk full?", False),
    ("full-disk-safetensors", "checkpoint-4/optimizer.pt: No space left on device while writing it", False),
    ("full-disk-oserror", "checkpoint-4/optimizer.pt: No space left on device while writing it", False),
    ("ctrl-c-while-saving", "KeyboardInterrupt", False),
    ("a-bug-while-saving", "ValueError: not a disk problem", False),
    ("ctrl-c-after-the-state", "KeyboardInterrupt", True),  # e.g. while rotating old checkpoints: this one is whole
]


@pytest.mark.parametrize(("fails", "raised", "kept"), SAVE_FAILURES, ids=[c[0] for c in SAVE_FAILURES])
def test_a_checkpoint_save_that_fails_is_removed_and_a_full_disk_named(tmp_path, fails, raised, kept):
    """The trainer's save, stopped at each point: the checkpoint being written is removed unless
    it was already complete; what the disk refused is `WriteFailed` naming the file, anything else
    goes through unchanged."""
    import errno
    from types import SimpleNamespace

    from safetensors import SafetensorError

    from agentflan.errors import WriteFailed
    from agentflan.training.checkpoints import checkpoint_step, with_safe_checkpoints

    class Trainer:  # the part of transformers.Trainer that the subclass relies on
        state = SimpleNamespace(global_step=4)
        args = SimpleNamespace(should_save=True)

        def _get_output_dir(self, trial):
            return str(tmp_path)

        def _save_checkpoint(self, model, trial):
            folder = tmp_path / "checkpoint-4"
            folder.mkdir()
            (folder / "model.safetensors").write_bytes(b"\0" * 100)
            (folder / "optimizer.pt").write_bytes(b"\0" * 50)  # half of it: then the disk fills
            if fails == "full-disk-torch":
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
            if fails == "full-disk-safetensors":
                raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
            if fails == "full-disk-oserror":
                raise OSError(errno.ENOSPC, "No space left on device")
            if fails == "ctrl-c-while-saving":
                raise KeyboardInterrupt
            if fails == "a-bug-while-saving":
                raise ValueError("not a disk problem")
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
            raise KeyboardInterrupt

    trainer = with_safe_checkpoints(Trainer)()
    with pytest.raises((WriteFailed, KeyboardInterrupt, ValueError)) as err:
        trainer._save_checkpoint(None, None)
    shown = f"{type(err.value).__name__}: {err.value}" if not isinstance(err.value, WriteFailed) else str(err.value)
    assert shown.startswith(f"{tmp_path}/{raised}" if raised.startswith("checkpoint") else raised), shown
    assert (tmp_path / "checkpoint-4").exists() == kept
    assert kept == (checkpoint_step(tmp_path / "checkpoint-4") == 4)


def test_a_resumed_run_reports_the_mean_loss_of_every_step():
    """The trainer's `training_loss` after a resume from step k averages steps k+1.. only; the
    run's figure weighs each logged loss by the steps it covers."""
    from agentflan.training.sft import _run_loss

    per_step = [6.5, 6.25, 6.0, 5.75, 5.5, 5.25]
    every = [{"loss": v, "step": i + 1} for i, v in enumerate(per_step)]
    assert _run_loss(every, 5.375, first_step=4) == pytest.approx(sum(per_step) / 6)
    assert _run_loss(every, 1.0, first_step=0) == 1.0  # not resumed: the trainer's own figure
    # logged every 3 steps, resumed from step 4: the step-6 log covers steps 5-6 only (5 and 6 here)
    logged = [{"loss": sum(per_step[:3]) / 3, "step": 3}, {"learning_rate": 1e-3, "step": 3},
              {"loss": sum(per_step[4:6]) / 2, "step": 6}]
    assert _run_loss(logged, 0.0, first_step=4) == pytest.approx((sum(per_step[:3]) + sum(per_step[4:6])) / 5)


def test_a_checkpoint_that_ends_the_training_is_recognised(tmp_path):
    """Resuming from the last step's checkpoint would train a step more (transformers 5): `run`
    loads it instead, when it ends the training the arguments ask for, and only then."""
    from agentflan.training.checkpoints import finished

    ckpt = tmp_path / "checkpoint-8"
    ckpt.mkdir()
    assert not finished(ckpt, 8, 1.0)  # no state: not a checkpoint to finish from
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 8, "max_steps": 8, "num_train_epochs": 1}))
    assert finished(ckpt, 8, 1.0)
    assert not finished(ckpt, 12, 1.0)  # more steps asked for: train on
    assert finished(ckpt, -1, 1)  # epochs decide: the same epochs
    assert not finished(ckpt, -1, 2)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 6, "max_steps": 8, "num_train_epochs": 1}))
    assert not finished(ckpt, 8, 1.0)
