"""`agentflan data build`: run a data recipe, resumably, on one or many processes.

Stages, each written atomically (temporary file, then rename) and marked done with a
fingerprint of everything it depends on, so that a killed build resumes where it stopped and
ends byte-identical to an uninterrupted one, and a changed recipe rebuilds only what changed:

1. **ingest**: each source is read once into `sources/<name>.jsonl` (native, ids prefixed with
   the source name so they are unique across sources), with its accounting report and quarantine.
2. **outputs**: each output streams its sources through its steps into `native/<output>.jsonl`
   (and the other `write:` formats). Outputs are independent and run in parallel processes.
3. **mix**: the outputs, re-weighted (chat balanced against agent data), shuffled by hash into
   `native/<mix>.jsonl` with an external bucket shuffle (bounded memory).
4. **report**: `stats.json`, `report.md` and charts.

Every random decision is a hash of (seed, step, id), never of the order or the process, so
`workers: 1` and `workers: 8` write the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import yaml

from agentflan import __version__
from agentflan.io import make_reader
from agentflan.io.base import ReadReport
from agentflan.io.files import atomic_output
from agentflan.io.writers import WRITERS
from agentflan.io.writers.base import dumps
from agentflan.pipeline.base import Step, StepContext, StepStats, make_steps, unit
from agentflan.pipeline.negatives import build_negatives
from agentflan.pipeline.recipe import DataRecipe, NegativesOutput, StepsOutput
from agentflan.schema import Trajectory

log = logging.getLogger(__name__)
Echo = Callable[[str], None]
STATE = ".state"


@dataclass
class BuildResult:
    out_dir: Path
    stages_run: list[str] = field(default_factory=list)
    stages_skipped: list[str] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)


def _fp(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([*parts, _code_fingerprint()], sort_keys=True, default=str).encode()).hexdigest()[:16]


_CODE_FP: list[str] = []


def _code_fingerprint() -> str:
    """A hash of agentflan's own source: a changed step invalidates the stages built with it."""
    if not _CODE_FP:
        root = Path(__file__).resolve().parents[1]
        h = hashlib.sha256()
        for p in sorted(root.rglob("*.py")):
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
        _CODE_FP.append(h.hexdigest()[:16])
    return _CODE_FP[0]


def _done(out: Path, stage: str, fingerprint: str) -> bool:
    marker = out / STATE / f"{stage}.done"
    return marker.exists() and marker.read_text().strip() == fingerprint


def _mark(out: Path, stage: str, fingerprint: str) -> None:
    (out / STATE).mkdir(parents=True, exist_ok=True)
    (out / STATE / f"{stage}.done").write_text(fingerprint + "\n")


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp")


def _read_native(path: Path) -> Iterator[Trajectory]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield Trajectory.model_validate_json(line)


def _write_native(trajs: Iterable[Trajectory], path: Path) -> int:
    n = 0
    with atomic_output(path, _atomic_target(path)) as tmp, tmp.open("w", encoding="utf-8") as f:  # even on Ctrl-C
        for t in trajs:
            f.write(dumps(t.to_json_dict()) + "\n")
            n += 1
    return n


def _input_signature(paths: list[str], optional: bool = False) -> list[tuple[str, int, int]]:
    from agentflan.errors import ConfigError
    from agentflan.io.files import expand, is_url

    try:
        files = expand(paths)
    except ConfigError:
        if optional:
            return []
        raise
    sig = []
    for p in files:
        if is_url(p):
            sig.append((p, 0, 0))
        else:
            st = os.stat(p)
            sig.append((os.path.abspath(p), st.st_size, int(st.st_mtime)))
    return sig


# ---- stage 1: ingest -----------------------------------------------------------------------------

def _ingest(args: tuple[str, dict[str, Any], str]) -> dict[str, Any]:
    name, cfg, out = args
    out_dir = Path(out)
    target = out_dir / "sources" / f"{name}.jsonl"
    qpath = out_dir / "quarantine" / f"{name}.jsonl"
    if qpath.exists():
        qpath.unlink()
    if cfg["optional"] and not _input_signature(cfg["paths"], optional=True):
        _write_native([], target)
        report = ReadReport().to_dict() | {"quarantine": None, "missing": True}
        (out_dir / "sources" / f"{name}.report.json").write_text(json.dumps(report, indent=2) + "\n")
        return report
    reader = make_reader(cfg["paths"], cfg["reader"], on_error=cfg["on_error"],
                         quarantine=qpath if cfg["on_error"] == "quarantine" else None,
                         dataset=name, **cfg["options"])

    def renamed() -> Iterator[Trajectory]:
        for t in reader.read(cfg["paths"]):
            t.id = f"{name}:{t.id}"
            yield t

    try:
        _write_native(renamed(), target)
    finally:
        if reader.quarantine is not None:
            reader.quarantine.close()
    report = reader.report.to_dict()
    report["quarantine"] = str(qpath.relative_to(out_dir)) if reader.report.quarantined else None
    (out_dir / "sources" / f"{name}.report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# ---- stage 2: outputs ----------------------------------------------------------------------------

def _concat(paths: list[Path]) -> Iterator[Trajectory]:
    for p in paths:
        yield from _read_native(p)


def _lines(paths: list[Path]) -> Iterator[str]:
    for p in paths:
        with p.open(encoding="utf-8") as f:
            yield from f


CHUNK = 256
BUCKET_BYTES = 16 * 2**20
MAX_BUCKETS = 1024
_PREFIX_CACHE: dict[str, list[Step]] = {}


def apply_prefix(args: tuple[str, int, list[str]]) -> tuple[list[str], list[dict[str, int]]]:
    """Run parallel-safe steps on a chunk of native JSON lines (in a worker process).

    Returns the output lines and each step's counters for this chunk.
    """
    entries_json, seed, lines = args
    steps = _PREFIX_CACHE.get(entries_json)
    if steps is None:
        steps = _PREFIX_CACHE[entries_json] = make_steps(json.loads(entries_json))
    stream: Iterable[Trajectory] = (Trajectory.model_validate_json(line) for line in lines)
    contexts = []
    for step in steps:
        ctx = StepContext(seed=seed)
        contexts.append(ctx)
        stream = step.run(stream, ctx)
    out = [dumps(t.to_json_dict()) for t in stream]
    return out, [dict(c.stats.counts) for c in contexts]


def _chunks(lines: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _parallel_prefix(entries: list[dict[str, Any]], seed: int, lines: Iterator[str], pool: Any,
                     contexts: list[StepContext]) -> Iterator[Trajectory]:
    """The parallel-safe step prefix over `lines`, chunked over `pool` (ordered: deterministic)."""
    entries_json = json.dumps(entries, sort_keys=True)
    jobs = ((entries_json, seed, chunk) for chunk in _chunks(lines, CHUNK))
    results = pool.imap(apply_prefix, jobs) if pool is not None else map(apply_prefix, jobs)
    for out_lines, counts in results:
        for ctx, c in zip(contexts, counts, strict=True):
            ctx.stats.counts.update(c)
        for line in out_lines:
            yield Trajectory.model_validate_json(line)


def _run_output(recipe: DataRecipe, name: str, out_dir: Path, pool: Any, executor: str,
                agent_records: int = 0) -> dict[str, Any]:
    spec = recipe.outputs[name]
    step_stats: list[dict[str, Any]] = []
    if isinstance(spec, NegativesOutput):
        stats = StepStats()
        clean: list[StepContext] = []

        def inputs(names: list[str]) -> Iterable[Trajectory]:
            stream: Iterable[Trajectory] = _concat([out_dir / "sources" / f"{s}.jsonl" for s in names])
            if recipe.decontaminate is not None:
                clean.append(StepContext(seed=recipe.seed))
                stream = make_steps([{"type": "decontaminate", **recipe.decontaminate.model_dump(mode="json")}])[0].run(
                    stream, clean[-1])
            return stream

        stream: Iterable[Trajectory] = build_negatives(
            inputs(spec.chat_from), inputs(spec.tools_from), inputs(spec.queries_from),
            spec.config, recipe.seed, stats, cache_dir=out_dir / ".cache", agent_records=agent_records)
        n = _write_native(stream, out_dir / "native" / f"{name}.jsonl")
        for role, ctx in zip(("chat", "tools", "queries"), clean, strict=False):
            step_stats.append({"step": f"decontaminate:{role}", "counts": ctx.stats.to_dict()})
        step_stats.append({"step": "negatives", "config": {"agent_records": agent_records},
                           "counts": stats.to_dict()})
    else:
        assert isinstance(spec, StepsOutput)
        entries = recipe.step_entries(name)
        steps = make_steps(entries)
        k = 0
        while k < len(steps) and steps[k].parallel_safe:
            k += 1
        contexts = [StepContext(seed=recipe.seed) for _ in steps]
        lines = _lines([out_dir / "sources" / f"{s}.jsonl" for s in spec.from_])
        if executor == "ray":
            from agentflan.pipeline.ray_executor import ray_prefix

            stream = ray_prefix(entries[:k], recipe.seed, [out_dir / "sources" / f"{s}.jsonl" for s in spec.from_],
                                contexts[:k])
        else:
            stream = _parallel_prefix(entries[:k], recipe.seed, lines, pool, contexts[:k])
        for step, ctx in zip(steps[k:], contexts[k:], strict=True):
            stream = step.run(stream, ctx)
        n = _write_native(stream, out_dir / "native" / f"{name}.jsonl")
        step_stats = [{"step": step.name, "config": step.config.model_dump(mode="json"),
                       "counts": ctx.stats.to_dict()} for step, ctx in zip(steps, contexts, strict=True)]
    _write_formats(recipe, out_dir, name)
    return {"records": n, "steps": step_stats}


def _write_formats(recipe: DataRecipe, out_dir: Path, name: str) -> dict[str, Any]:
    reports = {}
    for fmt in recipe.write:
        if fmt == "native":
            continue
        writer = WRITERS.get(fmt)()
        suffix = ".parquet" if fmt == "parquet" else ".jsonl"
        target = out_dir / fmt / f"{name}{suffix}"
        tmp = _atomic_target(target).with_suffix(suffix)
        writer.write(_read_native(out_dir / "native" / f"{name}.jsonl"), tmp)
        os.replace(tmp, target)
        reports[fmt] = writer.report.to_dict()
    return reports


# ---- stage 3: mix --------------------------------------------------------------------------------

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


def _amount(path: Path, by: str) -> float:
    """Records, or trained approx tokens, of a native file."""
    from agentflan.pipeline.report import trained_approx_tokens

    return float(sum(1 if by == "records" else trained_approx_tokens(t) for t in _read_native(path)))


def mix_amounts(recipe: DataRecipe, out_dir: Path) -> tuple[dict[str, float], float]:
    """Each output's amount in the mix's unit, and the agent sources' (the `sources` basis)."""
    assert recipe.mix is not None
    by = recipe.mix.by
    amounts = {o: _amount(out_dir / "native" / f"{o}.jsonl", by) for o in recipe.outputs}
    agent_sources = sorted({s for o in recipe.outputs.values() for s in (o.from_ if isinstance(o, StepsOutput) else [])
                            if recipe.sources[s].role == "agent"})
    basis = sum(_amount(out_dir / "sources" / f"{s}.jsonl", by) for s in agent_sources)
    return amounts, basis


def _mix(recipe: DataRecipe, out_dir: Path) -> dict[str, Any]:
    assert recipe.mix is not None
    amounts, basis = mix_amounts(recipe, out_dir)
    factors = mix_plan(recipe, amounts, basis)
    # buckets of about BUCKET_BYTES each: the shuffle holds one bucket in memory at a time
    expected_bytes = sum(f * (out_dir / "native" / f"{o}.jsonl").stat().st_size for o, f in factors.items())
    n_buckets = min(MAX_BUCKETS, max(1, math.ceil(expected_bytes / BUCKET_BYTES)))
    written: dict[str, int] = {}
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        buckets = [open(Path(tmp) / f"b{i}.jsonl", "w", encoding="utf-8") for i in range(n_buckets)]  # noqa: SIM115
        try:
            for o, factor in factors.items():
                written[o] = 0
                for t in _read_native(out_dir / "native" / f"{o}.jsonl"):
                    copies = int(factor) + (unit(recipe.seed, "mix", o, t.id) < factor - int(factor))
                    for k in range(copies):
                        # the output in the id: one trajectory may be in two outputs (both formats at full size)
                        tid = f"{o}/{t.id}" if k == 0 else f"{o}/{t.id}#{k}"
                        key = unit(recipe.seed, "shuffle", tid)
                        d = t.to_json_dict()
                        d["id"] = tid
                        d["metadata"] = {**d.get("metadata", {}), "output": o}  # which output, for the report
                        buckets[min(int(key * n_buckets), n_buckets - 1)].write(
                            json.dumps([key, tid, d], ensure_ascii=False) + "\n")
                        written[o] += 1
        finally:
            for b in buckets:
                b.close()
        target = out_dir / "native" / f"{recipe.mix.name}.jsonl"
        with atomic_output(target, _atomic_target(target)) as tmp_target, tmp_target.open("w", encoding="utf-8") as f:
            for i in range(n_buckets):
                rows = [json.loads(line) for line in (Path(tmp) / f"b{i}.jsonl").open(encoding="utf-8")]
                rows.sort(key=lambda r: (r[0], r[1]))
                for _, _, rec in rows:
                    f.write(dumps(rec) + "\n")
    _write_formats(recipe, out_dir, recipe.mix.name)
    return {"factors": {k: round(v, 4) for k, v in factors.items()}, "records_per_output": written,
            "records": sum(written.values()), "chat_outputs": sorted(recipe.chat_outputs()),
            "by": recipe.mix.by, "basis": recipe.mix.basis, "chat_ratio": recipe.mix.chat_ratio,
            "amounts": {k: round(v, 1) for k, v in amounts.items()}, "agent_sources_amount": round(basis, 1)}


# ---- driver --------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    out = {"agentflan": __version__, "python": platform.python_version()}
    for pkg in ("pydantic", "pyyaml", "click", "fsspec", "transformers", "tokenizers", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def build(recipe: DataRecipe, resolved: dict[str, Any], out_dir: str | Path, *, workers: int | None = None,
          resume: bool = True, echo: Echo | None = None) -> BuildResult:
    """Run `recipe` into `out_dir` (see the module doc for the stages and the layout)."""
    say = echo or (lambda s: log.info(s))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_workers = workers or recipe.workers
    result = BuildResult(out)
    (out / "resolved_recipe.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    (out / "versions.json").write_text(json.dumps(versions(), indent=2) + "\n")
    if recipe.executor == "ray":
        from agentflan.pipeline.ray_executor import start_ray

        start_ray(n_workers)

    def stage(name: str, fingerprint: str) -> bool:
        if resume and _done(out, name, fingerprint):
            result.stages_skipped.append(name)
            return False
        result.stages_run.append(name)
        return True

    # 1. ingest (a source no output reads is not read)
    src_fp = {}
    todo = []
    used = recipe.used_sources()
    for name in recipe.sources:
        if name not in used:
            say(f"source {name}: no output reads it; not read")
    for name, src in recipe.sources.items():
        if name not in used:
            continue
        cfg = src.model_dump()
        src_fp[name] = _fp(cfg, _input_signature(src.paths, src.optional), __version__)
        if stage(f"source.{name}", src_fp[name]):
            todo.append((name, cfg, str(out)))
    for (name, _, _), report in zip(todo, _map(_ingest, todo, n_workers), strict=True):
        if report.get("missing"):
            say(f"ingest {name}: no input file matches {recipe.sources[name].paths}; optional, so empty")
        say(f"ingest {name}: {report['records']} records, {report['converted']} converted, "
            f"{report['quarantined']} quarantined, {sum(report['dropped'].values())} dropped")
        _mark(out, f"source.{name}", src_fp[name])

    # 2. outputs: one after the other, each one's parallel-safe steps spread over the workers
    out_fp = {}
    pool = Pool(n_workers, initializer=_worker_init) if n_workers > 1 and recipe.executor == "local" else None
    decon = recipe.decontaminate.model_dump(mode="json") if recipe.decontaminate else None
    if decon and decon["against"]:
        decon["against_files"] = _input_signature(decon["against"])
    # negatives come after the other outputs: their counts are a share of the agent records
    order = [n for n, o in recipe.outputs.items() if isinstance(o, StepsOutput)] + \
        [n for n, o in recipe.outputs.items() if isinstance(o, NegativesOutput)]
    try:
        for name in order:
            spec = recipe.outputs[name]
            deps = spec.from_ if isinstance(spec, StepsOutput) else spec.sources()
            agent_records = 0
            if isinstance(spec, NegativesOutput):
                agent_records = sum(_records(out, o) for o in recipe.agent_outputs())
            out_fp[name] = _fp(spec.model_dump(mode="json", by_alias=True), recipe.seed, recipe.write,
                               [src_fp[d] for d in deps], __version__, decon, agent_records)
            if not stage(f"output.{name}", out_fp[name]):
                continue
            info = _run_output(recipe, name, out, pool, recipe.executor, agent_records)
            (out / "native" / f"{name}.steps.json").write_text(json.dumps(info, indent=2) + "\n")
            say(f"output {name}: {info['records']} records")
            _mark(out, f"output.{name}", out_fp[name])
    except BaseException:  # Ctrl-C or an error: stop the workers now rather than after their queued chunks
        if pool is not None:
            pool.terminate()
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()

    # 3. mix
    if recipe.mix is not None:
        mix_fp = _fp(recipe.mix.model_dump(), recipe.seed, recipe.write, [out_fp[o] for o in recipe.outputs],
                     [src_fp[s] for s in sorted(used)])
        if stage("mix", mix_fp):
            info = _mix(recipe, out)
            (out / "native" / f"{recipe.mix.name}.mix.json").write_text(json.dumps(info, indent=2) + "\n")
            say(f"mix {recipe.mix.name}: {info['records']} records, factors {info['factors']}")
            _mark(out, "mix", mix_fp)

    # 4. report
    from agentflan.pipeline.report import write_report

    result.stats = write_report(recipe, out, charts=recipe.report)
    say(f"report: {out / 'report.md'}")
    return result


def _records(out: Path, output: str) -> int:
    return int(json.loads((out / "native" / f"{output}.steps.json").read_text())["records"])


def _map(fn: Callable[[Any], Any], items: list[Any], workers: int) -> list[Any]:
    if workers <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with Pool(min(workers, len(items)), initializer=_worker_init) as pool:
        return pool.map(fn, items)


def _worker_init() -> None:
    """Workers ignore Ctrl-C: the main process receives it, stops them and cleans up (one message)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
