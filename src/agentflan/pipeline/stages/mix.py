"""The mix stage: the outputs, re-weighted (chat balanced against agent data), shuffled by hash into
`native/<mix>.jsonl` with an external bucket shuffle (bounded memory).

Each copy of a record goes to the bucket of its shuffle key, a hash of (seed, id): scatter tasks
read shards of the outputs, gather tasks sort one bucket each into a shard of the mix's files.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from agentflan.fingerprint import fingerprint
from agentflan.io.files import write_atomic
from agentflan.io.writers.base import dumps_data
from agentflan.pipeline.executor import Executor
from agentflan.pipeline.recipe import DataRecipe, StepsOutput
from agentflan.pipeline.report import read_state, trained_approx_tokens
from agentflan.pipeline.stages import files as stage_files
from agentflan.pipeline.stages.base import BuildState, Stage, Started
from agentflan.pipeline.stages.files import (
    BUCKET_BYTES,
    MAX_BUCKETS,
    PARTS,
    SHARDS_PER_WORKER,
    Shard,
    Sink,
    amounts_path,
    concat_parts,
    part_dir,
    plan_shards,
    read_shards,
    save_scan,
    shard_lines,
    whole,
    write_file_formats,
)
from agentflan.schema import Trajectory
from agentflan.seeds import unit


class MixStage(Stage):
    """`mix`, when the recipe has one."""

    name: ClassVar[str] = "mix"
    reads: ClassVar[tuple[str, ...]] = ("sources", "outputs")
    writes: ClassVar[tuple[str, ...]] = ("mix",)

    def units(self, b: BuildState) -> list[str]:
        return ["mix"] if b.recipe.mix is not None else []

    def needs(self, b: BuildState, unit: str) -> list[str]:
        return [f"output.{o}" for o in b.recipe.outputs]

    def fingerprint(self, b: BuildState, unit: str) -> str:
        recipe = b.recipe
        return fingerprint(recipe.mix.model_dump() if recipe.mix else None, recipe.seed, recipe.write,
                           [b.fingerprints[f"output.{o}"] for o in recipe.outputs],
                           [b.fingerprints[f"source.{s}"] for s in sorted(recipe.used_sources())])

    def run(self, b: BuildState, todo: list[str], started: dict[str, Started]) -> Iterator[str]:
        mix = b.recipe.mix
        if todo and mix is not None:
            info = _mix(b.recipe, b.out, b.executor)
            write_atomic(b.out / "native" / f"{mix.name}.mix.json", json.dumps(info, indent=2) + "\n")
            b.say(f"mix {mix.name}: {info['records']} records, factors {info['factors']}")
            yield "mix"


def mix_plan(recipe: DataRecipe, amounts: dict[str, float], basis: float | None = None) -> dict[str, float]:
    """Repeat factor per output: its weight, times the chat factor for chat outputs.

    Args:
        amounts: Each output's amount in the mix's unit (`mix.by`: trained tokens or records).
        basis: The agent amount general chat is measured against when `mix.basis` is `sources`.
    """
    assert recipe.mix is not None
    mix = recipe.mix
    included = [o for o in recipe.outputs if o not in mix.exclude]
    chat = recipe.chat_outputs() & set(included)
    factors = {o: mix.weights.get(o, 1.0) for o in included}
    if mix.chat_ratio is not None and chat:
        agent_total = basis if mix.basis == "sources" and basis is not None else \
            sum(factors[o] * amounts[o] for o in included if o not in chat)
        chat_total = sum(factors[o] * amounts[o] for o in chat)
        if chat_total:
            scale = mix.chat_ratio * agent_total / chat_total
            for o in chat:
                factors[o] *= scale
    return factors


def _amount(task: tuple[Shard, str]) -> int:
    """Records, or trained approx tokens, of a shard of a native file (a task)."""
    shard, by = task
    return sum(1 if by == "records" else trained_approx_tokens(t) for t in read_shards([shard]))


def mix_amounts(recipe: DataRecipe, out_dir: Path, executor: Executor | None = None) -> tuple[dict[str, float], float]:
    """Each output's amount in the mix's unit, and the agent sources' (the `sources` basis).

    The amounts were counted where the records were written (`.state/amounts`); a file without
    them (a folder built by an older version) is read again, in shards on the executor.
    """
    assert recipe.mix is not None
    by = recipe.mix.by
    agent_sources = sorted({s for o in recipe.outputs.values() for s in (o.from_ if isinstance(o, StepsOutput) else [])
                            if recipe.sources[s].role == "agent"})
    names = [*recipe.outputs, *(f"source.{s}" for s in agent_sources)]
    files = [out_dir / "native" / f"{o}.jsonl" for o in recipe.outputs] + \
        [out_dir / "sources" / f"{s}.jsonl" for s in agent_sources]
    totals: list[float | None] = []
    for name in names:
        saved = amounts_path(out_dir, name)
        kept = read_state(saved)
        totals.append(float(kept[by]) if isinstance(kept, dict) and by in kept else None)
    missing = [i for i, t in enumerate(totals) if t is None]
    n = executor.workers * SHARDS_PER_WORKER if executor is not None and executor.workers > 1 else 1
    shards = [plan_shards([files[i]], n) for i in missing]
    flat = [(s, by) for ss in shards for s in ss]
    counts = iter(executor.map(_amount, flat) if executor is not None else [_amount(t) for t in flat])
    for i, ss in zip(missing, shards, strict=True):
        totals[i] = float(sum(next(counts) for _ in ss))  # sums of ints: exact in any grouping
    amounts = {o: t or 0.0 for o, t in zip(recipe.outputs, totals, strict=False)}
    return amounts, sum(t or 0.0 for t in totals[len(recipe.outputs):])


@dataclass(frozen=True)
class _ScatterTask:
    tmp: str
    task: int
    output: str
    factor: float
    seed: int
    shard: Shard
    buckets: int


def _mix_scatter(task: _ScatterTask) -> int:
    """Copies of an output's records, each into the bucket of its shuffle key (a task)."""
    files = [open(Path(task.tmp) / f"s{task.task:05d}.b{i:05d}", "w", encoding="utf-8")  # noqa: SIM115
             for i in range(task.buckets)]
    n = 0
    frac = task.factor - int(task.factor)
    try:
        for raw in shard_lines(task.shard):
            d = json.loads(raw)
            tid0 = d["id"]
            copies = int(task.factor) + (unit(task.seed, "mix", task.output, tid0) < frac)
            for k in range(copies):
                # the output in the id: one trajectory may be in two outputs (both formats at full size)
                tid = f"{task.output}/{tid0}" if k == 0 else f"{task.output}/{tid0}#{k}"
                d["id"] = tid
                d["metadata"] = {**d.get("metadata", {}), "output": task.output}  # which output, for the report
                rec = dumps_data(d) + "\n"
                key = unit(task.seed, "shuffle", tid)
                files[min(int(key * task.buckets), task.buckets - 1)].write(
                    f"{key!r}\t{json.dumps(tid, ensure_ascii=False)}\t{rec}")
                n += 1
    finally:
        for f in files:
            f.close()
    return n


@dataclass(frozen=True)
class _GatherTask:
    tmp: str
    bucket: int
    scatters: int
    out: str
    name: str
    formats: tuple[str, ...]


def _mix_gather(task: _GatherTask) -> dict[str, Any]:
    """One bucket, sorted by shuffle key, into a shard of the mix's files (a task; memory: one bucket)."""
    rows = []
    for s in range(task.scatters):
        with (Path(task.tmp) / f"s{s:05d}.b{task.bucket:05d}").open(encoding="utf-8") as f:
            for row in f:
                key, tid, line = row.split("\t", 2)
                rows.append((float(key), json.loads(tid), line))
    rows.sort(key=lambda r: (r[0], r[1]))
    with Sink(Path(task.out), task.name, task.formats, task.bucket) as sink:
        for _, _, line in rows:
            sink.add_line(line, Trajectory.model_validate_json(line))
        scan = sink.close()
    return {"scan": scan, "records": sink.n}


def _mix(recipe: DataRecipe, out_dir: Path, executor: Executor) -> dict[str, Any]:
    assert recipe.mix is not None
    name = recipe.mix.name
    formats = tuple(recipe.write)
    amounts, basis = mix_amounts(recipe, out_dir, executor)
    factors = mix_plan(recipe, amounts, basis)
    # buckets of about BUCKET_BYTES each: a task holds one bucket in memory at a time
    expected_bytes = sum(f * (out_dir / "native" / f"{o}.jsonl").stat().st_size for o, f in factors.items())
    n_buckets = min(MAX_BUCKETS, max(1, math.ceil(expected_bytes / BUCKET_BYTES)))
    if executor.workers > 1:  # and enough of them to keep every worker busy
        n_buckets = min(MAX_BUCKETS, max(n_buckets, min(executor.workers * SHARDS_PER_WORKER,
                                                        math.ceil(expected_bytes / stage_files.SHARD_BYTES))))
    n_shards = executor.workers * SHARDS_PER_WORKER if executor.workers > 1 else 1
    parts = part_dir(out_dir, name)
    if parts.exists():
        shutil.rmtree(parts)
    (out_dir / PARTS).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir / PARTS) as tmp:
        scatter = [(o, f, s) for o, f in factors.items()
                   for s in (plan_shards([out_dir / "native" / f"{o}.jsonl"], n_shards)
                             or [whole(out_dir / "native" / f"{o}.jsonl")])]
        tasks = [_ScatterTask(tmp, k, o, f, recipe.seed, s, n_buckets) for k, (o, f, s) in enumerate(scatter)]
        written: dict[str, int] = dict.fromkeys(factors, 0)
        for (o, _, _), n in zip(scatter, executor.map(_mix_scatter, tasks), strict=True):
            written[o] += n
        gathered = executor.map(_mix_gather, [_GatherTask(tmp, i, len(tasks), str(out_dir), name, formats)
                                              for i in range(n_buckets)])
    concat_parts(out_dir, name, formats, n_buckets)
    shutil.rmtree(parts)
    save_scan(out_dir, name, [g["scan"] for g in gathered])
    write_file_formats((str(out_dir), name, list(formats)))
    return {"factors": {k: round(v, 4) for k, v in factors.items()}, "records_per_output": written,
            "records": sum(written.values()), "chat_outputs": sorted(recipe.chat_outputs()),
            "by": recipe.mix.by, "basis": recipe.mix.basis, "chat_ratio": recipe.mix.chat_ratio,
            "amounts": {k: round(v, 1) for k, v in amounts.items()}, "agent_sources_amount": round(basis, 1)}

