"""Tokenized training data: encoded in parallel, cached by fingerprint, made once per run.

`encode_all` renders and tokenizes trajectories in batches (every segment of a batch of
trajectories in one call of the tokenizer's batch API, each distinct segment once) and, with
`data.num_proc`, in forked worker processes (rendering protocols and chat templates is Python).
`PreparedCache` keeps the packed rows of a run under a key made of everything they depend on: the
recipe's `data` section, the training batch size, the loss per capability (its column is part of
the rows), the input files (path, size, modification time), the
tokenizer (its full serialization and chat template) and agentflan's code. The first process to
need a key builds it while holding a lock on it; every other process (the other ranks of a
distributed run, a rerun) waits for the lock and loads the result.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentflan.formats.templates import ChatTemplate
from agentflan.schema import Trajectory
from agentflan.training.masking import Encoded, NoTrainableTokens, encode_segments_batch, render

log = logging.getLogger(__name__)

BATCH = 256
"""Trajectories per tokenizer call (and per task of a worker process)."""


# ---- encoding -----------------------------------------------------------------------------------

@dataclass
class Prepared:
    """One trajectory, encoded: the sample's columns and what `prepare` counts of it."""

    encoded: Encoded
    protocol: str
    capabilities: list[int] | None = None
    """The capability of every token (`capability_loss`), else None."""
    matched: bool = True
    """Whether the trained runs matched the trained turns (`token_capabilities`)."""


def encode_batch(trajs: Sequence[Trajectory], template: ChatTemplate, tokenizer: Any, max_length: int | None,
                 capabilities: bool = False) -> list[Prepared | None]:
    """`encode` of each trajectory (None: no trained token), all their segments tokenized in one
    batch call."""
    from agentflan.training.capability_loss import token_capabilities

    rendered = [render(t, template) for t in trajs]
    encoded = encode_segments_batch([r[0] for r in rendered], tokenizer, max_length=max_length,
                                    add_bos=template.add_bos)
    out: list[Prepared | None] = []
    for (_, messages, protocol), enc in zip(rendered, encoded, strict=True):
        if isinstance(enc, NoTrainableTokens):
            out.append(None)
            continue
        p = Prepared(enc, protocol)
        if capabilities:
            p.capabilities, p.matched = token_capabilities(enc.labels, messages)
        out.append(p)
    return out


_WORKER: dict[str, Any] = {}
"""What forked workers inherit: the trajectories, template, tokenizer and options (never pickled)."""


def _worker_init() -> None:
    from agentflan.io.parallel import worker_init

    worker_init()  # the parent receives Ctrl-C and stops the pool
    # each worker tokenizes on one thread: the processes are the parallelism
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _encode_task(span: tuple[int, int]) -> list[Prepared | None]:
    w = _WORKER
    return encode_batch(w["trajs"][span[0]:span[1]], w["template"], w["tokenizer"], w["max_length"],
                        w["capabilities"])


def encode_all(trajs: Sequence[Trajectory], template: ChatTemplate, tokenizer: Any, max_length: int | None,
               num_proc: int | None = None, capabilities: bool = False) -> Iterator[Prepared | None]:
    """Each trajectory encoded (None: no trained token), in order.

    Args:
        num_proc: Worker processes (forked: they inherit the trajectories and the tokenizer, and
            get spans of indexes); None or 1: this process only (the tokenizer's batch call is
            already parallel, and on the 2-core machine of docs/benchmarks.md workers were slower).
        capabilities: Also the capability of every token (`Prepared.capabilities`).
    """
    num_proc = num_proc or 1
    from multiprocessing import get_all_start_methods, get_context

    spans = [(i, min(i + BATCH, len(trajs))) for i in range(0, len(trajs), BATCH)]
    if num_proc <= 1 or len(spans) <= 1 or "fork" not in get_all_start_methods():
        for a, b in spans:
            yield from encode_batch(trajs[a:b], template, tokenizer, max_length, capabilities)
        return
    _WORKER.update(trajs=trajs, template=template, tokenizer=tokenizer, max_length=max_length,
                   capabilities=capabilities)
    try:
        with get_context("fork").Pool(min(num_proc, len(spans)), initializer=_worker_init) as pool:
            for result in pool.imap(_encode_task, spans):
                yield from result
    finally:
        _WORKER.clear()


# ---- the cache ----------------------------------------------------------------------------------

def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of everything about `tokenizer` that changes ids: its serialization and template."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # a slow tokenizer: its vocabulary
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    for attr in ("chat_template", "bos_token", "eos_token", "pad_token", "split_special_tokens"):
        h.update(repr(getattr(tokenizer, attr, None)).encode())
    return h.hexdigest()[:16]


def files_signature(paths: list[str]) -> list[tuple[str, int, int]]:
    """The input files as (path, size, mtime): what the cache key knows of the data."""
    from agentflan.io.files import expand, is_url

    sig = []
    for p in expand(paths):
        if is_url(p):
            sig.append((p, 0, 0))
        else:
            st = os.stat(p)
            sig.append((os.path.abspath(p), st.st_size, st.st_mtime_ns))
    return sig


def cache_key(*parts: Any) -> str:
    from agentflan.fingerprint import fingerprint

    return fingerprint(*parts, length=20)


_ROW_KEYS = ("input_ids", "labels", "position_ids", "seq_lengths", "capabilities")


class PreparedCache:
    """Rows and statistics saved under `root/<key>/` as flat integer arrays (no pickle)."""

    def __init__(self, root: Path, key: str) -> None:
        self.root = root
        self.key = key
        self.path = root / key

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the key's lock: the first process builds, the others wait and then load."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{self.key}.lock", "w") as f:
            try:
                import fcntl
            except ImportError:  # pragma: no cover - Windows: no lock, each process builds
                yield
                return
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def load(self) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
        """The cached rows and statistics, or None: not built yet, or unreadable (built again)."""
        if not (self.path / "stats.json").exists():
            return None
        import numpy as np

        try:
            meta = json.loads((self.path / "meta.json").read_text())
            arrays = {k: np.load(self.path / f"{k}.npy", allow_pickle=False) for k in meta["keys"]}
            offsets = {k: np.load(self.path / f"{k}.offsets.npy", allow_pickle=False) for k in meta["keys"]}
            rows = []
            for i in range(meta["rows"]):
                rows.append({k: arrays[k][offsets[k][i]:offsets[k][i + 1]].tolist() for k in meta["keys"]})
            stats = json.loads((self.path / "stats.json").read_text())
        except (OSError, ValueError, EOFError, KeyError, TypeError, IndexError) as e:
            # a cache is only a shortcut: damaged by hand or by the disk, it is built again, never trusted
            log.warning("the tokenized data in %s cannot be read (%s: %s): tokenizing again", self.path,
                        type(e).__name__, e)
            return None
        return rows, stats

    def save(self, rows: list[dict[str, Any]], stats: dict[str, Any]) -> None:
        """Write the rows into a temporary folder, renamed to the key's folder when complete (its
        `stats.json` last). Called with the key's lock held, so any other temporary folder of the
        key is a killed run's leftover: removed. A full disk is `WriteFailed` naming the file."""
        import numpy as np

        from agentflan.io.files import write_failed

        keys = [k for k in _ROW_KEYS if rows and k in rows[0]]
        for stale in self.root.glob(f"{self.key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / f"{self.key}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        target = tmp
        try:
            for k in keys:
                lengths = np.fromiter((len(r[k]) for r in rows), dtype=np.int64, count=len(rows))
                target = tmp / f"{k}.offsets.npy"
                np.save(target, np.concatenate(([0], np.cumsum(lengths))))
                flat = np.concatenate([np.asarray(r[k], dtype=np.int32) for r in rows])
                target = tmp / f"{k}.npy"
                np.save(target, flat)
            target = tmp / "meta.json"
            target.write_text(json.dumps({"keys": keys, "rows": len(rows)}) + "\n")
            target = tmp / "stats.json"
            target.write_text(json.dumps(stats, indent=2) + "\n")  # written last: marks it complete
            if self.path.exists():  # a folder without stats.json (load found none): set aside, then removed
                old = self.root / f"{self.key}.tmp-old-{os.getpid()}"
                os.replace(self.path, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, self.path)
        except OSError as e:
            shutil.rmtree(tmp, ignore_errors=True)
            err = write_failed(self.path / target.relative_to(tmp) if target != tmp else self.path, e)
            if err is e:
                raise
            raise err from e
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
