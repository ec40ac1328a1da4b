"""Run the per-trajectory steps of a build on Ray Data (a local instance or a cluster).

`executor: ray` in a recipe sends every output's parallel-safe step prefix (split, align, react,
instruct, capabilities: steps with no state across trajectories) through `ray.data`, in blocks,
with order preserved; the steps that need the whole stream (filter, balance, sample) and the
writing run on the driver. The steps are the same classes the local executor runs, and all
their randomness is a hash of (seed, id), so the output bytes are the same as a local build's.
Connect to a cluster by setting `RAY_ADDRESS`; otherwise a local instance is started.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from agentflan.errors import require
from agentflan.pipeline.base import StepContext
from agentflan.schema import Trajectory


def start_ray(workers: int) -> None:
    require("ray", "ray")
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=None if "RAY_ADDRESS" in __import__("os").environ else max(1, workers),
                 include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)


def ray_prefix(entries: list[dict[str, Any]], seed: int, paths: list[Path],
               contexts: list[StepContext]) -> Iterator[Trajectory]:
    """Apply the step prefix `entries` to the native files `paths` on Ray Data, in order."""
    import ray

    from agentflan.pipeline.build import apply_prefix

    entries_json = json.dumps(entries, sort_keys=True)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    lines = [line for p in paths for line in p.read_text(encoding="utf-8").splitlines() if line]
    if not lines:
        return

    def batch_fn(batch: dict[str, Any]) -> dict[str, Any]:
        out, counts = apply_prefix((entries_json, seed, list(batch["line"])))
        # one row per output line; the chunk's counters ride on its first row
        rows: list[str | None] = list(out) or [None]
        return {"line": rows, "counts": [json.dumps(counts)] + [""] * (len(rows) - 1)}

    ds = ray.data.from_items([{"line": line} for line in lines]).map_batches(batch_fn, batch_size=256,
                                                                             batch_format="numpy")
    for row in ds.iter_rows():
        if row["counts"]:
            for c, counts in zip(contexts, json.loads(row["counts"]), strict=True):
                c.stats.counts.update(counts)
        if row["line"] is not None:
            yield Trajectory.model_validate_json(row["line"])
