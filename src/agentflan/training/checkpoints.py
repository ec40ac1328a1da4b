"""Checkpoints and saved models that are complete or absent, whatever stops a run.

The trainer writes a checkpoint file by file into `checkpoint-N/` (model, optimizer, scheduler,
RNG state) and `trainer_state.json` last, in place: a run killed while saving (SIGKILL, a full
disk, Ctrl-C) leaves a folder with the highest step number that cannot be resumed from, and
`transformers`' own `get_last_checkpoint` would pick it. Here:

* a checkpoint is *complete* when its `trainer_state.json` reads as JSON and says the step the
  folder is named after (the file is written last, so everything before it is on disk);
* `resume: true` continues from the last complete checkpoint; incomplete folders are removed with
  a warning (they are this run's own unfinished output, and the trainer would write into them
  again when it reaches their step);
* a checkpoint whose save fails (a full disk) or is interrupted (Ctrl-C, SIGTERM) is removed at
  once, and a full disk becomes `WriteFailed` naming the file being written;
* `staged` writes a saved model into `.partial-NAME/` and renames it to `NAME/` only when
  everything in it is written (`final/`, `merged/`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentflan.errors import ConfigError, WriteFailed
from agentflan.io.files import write_failed

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
"""Written last into a checkpoint by `transformers.Trainer._save_checkpoint`."""
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# what torch's zip writer and safetensors raise when the disk refuses a write (neither is an OSError)
_WRITE_FAILURES = ("No space left on device", "os error 28", "file write failed", "inline_container",
                   "PytorchStreamWriter", "Disk quota exceeded", "Read-only file system")


def checkpoint_step(folder: Path) -> int | None:
    """The step `folder` holds when it is a complete checkpoint, else None."""
    m = _CHECKPOINT.match(folder.name)
    if not m or not folder.is_dir():
        return None
    try:
        state = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing (killed before it) or cut (killed while writing it)
        return None
    if not isinstance(state, dict) or state.get("global_step") != int(m.group(1)):
        return None
    return int(m.group(1))


def incomplete_checkpoints(out: Path) -> list[Path]:
    """The `checkpoint-N` folders of `out` that a run could not resume from."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.iterdir() if _CHECKPOINT.match(p.name) and p.is_dir() and checkpoint_step(p) is None)


def last_checkpoint(out: Path) -> Path | None:
    """The complete checkpoint of `out` with the highest step, or None."""
    if not out.is_dir():
        return None
    steps = [(s, p) for p in out.iterdir() if (s := checkpoint_step(p)) is not None]
    return max(steps)[1] if steps else None


def resolve_resume(out: Path, resume: bool | str, *, tidy: bool = True) -> Path | None:
    """The checkpoint a run starts from (None: from step 0), as the recipe's `resume` says.

    Args:
        out: The run's output folder.
        resume: False: from step 0; True: the last complete checkpoint in `out`, if any; a path:
            that checkpoint, which must be complete.
        tidy: Remove the incomplete checkpoints of `out` (only one process of a distributed run
            does it).

    Raises:
        ConfigError: `resume` names a folder that is not a complete checkpoint.
    """
    if tidy:
        for folder in incomplete_checkpoints(out):
            log.warning("%s is an incomplete checkpoint (a run stopped while saving it): removed", folder)
            shutil.rmtree(folder, ignore_errors=True)
    if resume is False:
        found = last_checkpoint(out)
        if found is not None:
            log.warning("resume is false: training from step 0 although %s exists (its checkpoints are "
                        "replaced as the run reaches them; resume=true continues from it)", found)
        return None
    if resume is True:
        found = last_checkpoint(out)
        if found is None:
            log.info("no complete checkpoint in %s: training from step 0", out)  # a first run: nothing to say
        return found
    path = Path(resume)
    if checkpoint_step(path) is None:
        why = "does not exist" if not path.exists() else f"has no {STATE_FILE} for its step (a save that did not finish)"
        raise ConfigError(f"resume: {path} is not a complete checkpoint: it {why}")
    return path


def start_step(checkpoint: Path | None) -> int:
    """The step training starts from: the checkpoint's, or 0."""
    step = checkpoint_step(checkpoint) if checkpoint is not None else None
    return step or 0


def finished(checkpoint: Path, max_steps: int, num_train_epochs: float) -> bool:
    """Whether `checkpoint` already holds the end of the training the arguments ask for (a run
    that stopped while saving its final model). Resuming from it would train one step more
    (transformers 5 does), so the run loads it and saves instead."""
    try:
        state = json.loads((checkpoint / STATE_FILE).read_text(encoding="utf-8"))
        done = state["global_step"] >= state["max_steps"] > 0
        same = state["max_steps"] == max_steps if max_steps > 0 else state["num_train_epochs"] == num_train_epochs
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(done and same)


def _newest_file(folder: Path) -> Path:
    """The file of `folder` written last (the one a failed save was writing), or `folder`."""
    files = [p for p in folder.rglob("*") if p.is_file()] if folder.is_dir() else []
    return max(files, key=lambda p: p.stat().st_mtime_ns) if files else folder


def as_write_failure(e: BaseException, folder: Path) -> BaseException:
    """The error to raise for `e`, raised while saving into `folder`: a disk that refused the save
    becomes `WriteFailed` naming the file being written; anything else is `e` itself."""
    if isinstance(e, WriteFailed):
        return e
    # a staged folder is named as the user knows it: final/model.safetensors, not .partial-final/...
    shown = folder.with_name(folder.name.removeprefix(".partial-"))
    newest = _newest_file(folder)
    target = shown / newest.relative_to(folder) if newest != folder else shown
    if isinstance(e, OSError):
        failed = write_failed(target, e)
        return failed if isinstance(failed, WriteFailed) else e
    text = str(e)
    if not isinstance(e, RuntimeError) and type(e).__name__ != "SafetensorError":
        return e
    if "os error 28" in text or "No space left on device" in text:
        what = f"{os.strerror(errno.ENOSPC)} while writing it"
    elif any(s in text for s in _WRITE_FAILURES):  # torch's zip writer says no more than this
        what = f"could not be written (is the disk full? {type(e).__name__}: {text[:120].strip()})"
    else:
        return e
    return WriteFailed(f"{target}: {what}; the incomplete {shown.name} was removed (free space and run the "
                       "same command again with resume=true)")


@contextlib.contextmanager
def removed_on_failure(folder: Path, *, owner: bool = True) -> Iterator[None]:
    """Remove `folder` if the block fails or is interrupted, and raise a full disk as `WriteFailed`."""
    try:
        yield
    except BaseException as e:
        err = as_write_failure(e, folder) if isinstance(e, Exception) else e
        if owner:
            shutil.rmtree(folder, ignore_errors=True)
        if err is e:
            raise
        raise err from e


def staging(folder: Path) -> Path:
    """Where `folder` is written before `publish` renames it (emptied of a killed run's leftovers)."""
    tmp = folder.with_name(f".partial-{folder.name}")
    if tmp.exists():
        shutil.rmtree(tmp)
    return tmp


def publish(tmp: Path, folder: Path) -> None:
    """Replace `folder` by the complete `tmp` (an older `folder` is moved aside, then removed)."""
    old = folder.with_name(f".old-{folder.name}")
    if old.exists():
        shutil.rmtree(old)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def with_safe_checkpoints(trainer_cls: type[Any]) -> type[Any]:
    """A subclass of `trainer_cls` (a `transformers.Trainer`) whose checkpoint saves are complete or
    removed: a save that fails or is interrupted removes its folder; a full disk is `WriteFailed`."""

    class SafeCheckpointTrainer(trainer_cls):  # type: ignore[misc]
        def _save_checkpoint(self, model: Any, trial: Any) -> None:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            try:
                super()._save_checkpoint(model, trial)
            except BaseException:
                if checkpoint_step(folder) is not None:  # complete: what failed came after it (rotating old ones)
                    raise
                with removed_on_failure(folder, owner=self.args.should_save):
                    raise

    return SafeCheckpointTrainer
