"""Where the tasks of a build run: in this process, in local worker processes, or on Ray.

A task is a module-level function and one picklable argument (paths, byte ranges, step configs,
a plan), and returns something small (counters, summaries): workers read their shard of the
input and write their shard of the output themselves, so records never travel through the
driver. Every executor returns results in the order of the tasks, whatever order they finished
in, which keeps merges (counters, shard files) deterministic: a build writes the same bytes
with any executor and any number of workers.

* `LocalExecutor(1)` runs the tasks one after the other in this process (no pickling at all).
* `LocalExecutor(n)` runs them on a pool of `n` forked processes.
* `RayExecutor(n)` runs them as Ray tasks, on a local instance or the cluster in `RAY_ADDRESS`.
  Workers write their files themselves, so on a multi-node cluster the build folder must be on
  a filesystem every node sees (NFS, a mounted bucket).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from agentflan.errors import ConfigError, require
from agentflan.registry import Registry, subclass_of

T = TypeVar("T")
R = TypeVar("R")


class Executor(ABC):
    """Runs tasks, `workers` at a time; `map` returns the results in task order."""

    name: str = "executor"

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self.workers = workers

    @abstractmethod
    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """`[fn(x) for x in items]`, run in parallel where the executor can."""

    def submit(self, fn: Callable[[T], R], item: T) -> Callable[[], R]:
        """Start `fn(item)` beside the other tasks; the returned function waits for its result.

        In this process, the task runs when its result is asked for (nothing to overlap with).
        """
        done: list[R] = []

        def result() -> R:
            if not done:
                done.append(fn(item))
            return done[0]
        return result

    def close(self) -> None:  # noqa: B027 - most executors hold nothing to release
        """Release the workers (idempotent)."""

    def abort(self) -> None:
        """Stop the workers without waiting for their tasks (an error in the driver)."""
        self.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


class LocalExecutor(Executor):
    """This process when `workers == 1`; otherwise a pool of forked processes, started on first use."""

    name = "local"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self._pool: Any = None

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        if self.workers == 1 or len(items) <= 1:
            return [fn(x) for x in items]
        # chunksize 1: tasks are coarse (a shard each) and come longest first
        return list(self._started().imap(fn, items, chunksize=1))

    def submit(self, fn: Callable[[T], R], item: T) -> Callable[[], R]:
        if self.workers == 1:
            return super().submit(fn, item)
        return self._started().apply_async(fn, (item,)).get  # type: ignore[no-any-return]

    def _started(self) -> Any:
        if self._pool is None:
            from multiprocessing import get_context

            from agentflan.io.parallel import worker_init

            # fork: the workers inherit the imported modules (spawn would re-import them, ~0.5 s each)
            ctx = get_context("fork") if "fork" in _start_methods() else get_context()
            self._pool = ctx.Pool(self.workers, initializer=worker_init)
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None

    def abort(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def _start_methods() -> list[str]:
    from multiprocessing import get_all_start_methods

    return get_all_start_methods()


class RayExecutor(Executor):
    """Ray tasks; at most `workers` in flight (the CPUs the build asks of the cluster)."""

    name = "ray"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        require("ray", "ray")
        import ray

        if not ray.is_initialized():
            ray.init(num_cpus=None if "RAY_ADDRESS" in os.environ else workers,
                     include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        import ray

        remote = ray.remote(num_cpus=1)(fn)
        refs = [remote.remote(x) for x in items]
        return list(ray.get(refs))

    def submit(self, fn: Callable[[T], R], item: T) -> Callable[[], R]:
        import ray

        ref = ray.remote(num_cpus=1)(fn).remote(item)
        return lambda: ray.get(ref)


EXECUTORS: Registry[type[Executor]] = Registry("executor", check=subclass_of("agentflan.pipeline.executor:Executor"))
"""Executors by the name a recipe's `executor:` gives (plugins: the entry point group
`agentflan.executors`; an executor is constructed with the number of workers)."""
EXECUTORS.register("local", LocalExecutor, "this process, or a pool of forked processes")
EXECUTORS.register("ray", RayExecutor, "Ray tasks, local or on the cluster in RAY_ADDRESS")


def make_executor(kind: str, workers: int) -> Executor:
    """The executor a recipe's `executor:` names."""
    return EXECUTORS.get(kind)(workers)
