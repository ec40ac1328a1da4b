"""The build report: `stats.json` (everything, machine-readable), `report.md` and PNG charts."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentflan.io.files import write_atomic, write_png
from agentflan.pipeline.recipe import DataRecipe
from agentflan.schema import AssistantMessage, Trajectory
from agentflan.stats import StatsAccumulator
from agentflan.tokens import approx_tokens

log = logging.getLogger(__name__)


class Scan:
    """What the report needs from one output file, counted record by record where the record is
    written (in the worker that writes it), so the report never reads the outputs again.
    Mergeable: shards are merged in stream order."""

    def __init__(self) -> None:
        self.stats = StatsAccumulator()
        self.tokens: Counter[str] = Counter()
        self.negatives: Counter[str] = Counter()
        self.protocols: Counter[str] = Counter()
        self.processed = 0
        self.trained = 0
        """Trained approx tokens of every record (`trained_approx_tokens`): the mix's amount."""
        self.by_output: Counter[str] = Counter()
        """Records, trained and processed approx tokens per `metadata.output` (the mix's records)."""

    def add(self, t: Trajectory) -> None:
        self.stats.add(t)
        processed = trained = 0  # each content counted once (a fifth of a build's time went to counting)
        trained_turns = []
        for m in t.messages:
            n = approx_tokens(m.content)
            processed += n
            if isinstance(m, AssistantMessage) and m.loss:
                self.tokens[m.capability or "unlabelled"] += n
                trained += n
                trained_turns.append(m)
        self.processed += processed
        trained += sum(_call_tokens(m) for m in trained_turns if m.tool_calls)  # = trained_approx_tokens(t)
        self.trained += trained
        output = t.metadata.get("output")
        if isinstance(output, str):
            self.by_output.update({f"records\x1f{output}": 1, f"trained\x1f{output}": trained,
                                   f"processed\x1f{output}": processed})
        self.protocols[t.tags.get("protocol", "structured" if t.tools else "chat")] += 1
        if "negative_kind" in t.tags:
            self.negatives[f"{t.tags['negative_kind']} / {t.tags.get('response_origin', '?')}"] += 1

    def merge(self, other: Scan) -> None:
        self.stats.merge(other.stats)
        self.tokens.update(other.tokens)
        self.negatives.update(other.negatives)
        self.protocols.update(other.protocols)
        self.processed += other.processed
        self.trained += other.trained
        self.by_output.update(other.by_output)

    def to_state(self) -> dict[str, Any]:
        return {"stats": self.stats.to_state(), "tokens": dict(self.tokens), "negatives": dict(self.negatives),
                "protocols": dict(self.protocols), "processed": self.processed, "trained": self.trained,
                "by_output": dict(self.by_output)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Scan:
        scan = cls()
        scan.stats = StatsAccumulator.from_state(state["stats"])
        scan.tokens.update(state["tokens"])
        scan.negatives.update(state["negatives"])
        scan.protocols.update(state["protocols"])
        scan.processed = state["processed"]
        scan.trained = state.get("trained", 0)
        scan.by_output.update(state["by_output"])
        return scan

    def result(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """compute_stats, plus trained approx tokens per capability, negatives per kind/origin and
        the number of records per conversation length (for the chart)."""
        extra = {"trained_approx_tokens": dict(sorted(self.tokens.items())),
                 "negatives": dict(sorted(self.negatives.items())), "processed_approx_tokens": self.processed,
                 "protocols": dict(sorted(self.protocols.items())), "turns": self.stats.turns,
                 "by_output": dict(self.by_output)}
        return self.stats.result(), extra


def read_state(path: Path) -> Any:
    """A build's saved state (JSON), or None when it is absent or unreadable: a file cut by a
    build killed before the state files were written atomically is computed again, with a warning."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: cut or damaged (an interrupted build); computed again", path)
        return None


def scan_path(out: Path, name: str) -> Path:
    """Where the build keeps an output's `Scan` (build state, beside the stage markers)."""
    return out / ".state" / "scan" / f"{name}.json"


def _scan(out: Path, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The output's scan saved by the build, or (a folder built otherwise) a scan of its file."""
    state = read_state(scan_path(out, name))
    if state is not None:
        return Scan.from_state(state).result()
    scan = Scan()
    with (out / "native" / f"{name}.jsonl").open(encoding="utf-8") as f:
        for line in f:
            scan.add(Trajectory.model_validate_json(line))
    return scan.result()


def _balance(steps: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for s in steps:
        if s["step"] != "balance":
            continue
        c = s["counts"]
        for key, value in c.items():
            if key.startswith("requested_permille:"):
                cap = key.split(":", 1)[1]
                before = c.get(f"turns_before:{cap}", 0)
                tb = c.get(f"approx_tokens_before:{cap}", 0)
                out[cap] = {
                    "requested": value / 1000,
                    "turns_before": before, "turns_after": c.get(f"turns_after:{cap}", 0),
                    "realized_turns": round(c.get(f"turns_after:{cap}", 0) / before, 4) if before else 0.0,
                    "approx_tokens_before": tb, "approx_tokens_after": c.get(f"approx_tokens_after:{cap}", 0),
                    "realized_tokens": round(c.get(f"approx_tokens_after:{cap}", 0) / tb, 4) if tb else 0.0,
                }
    return out


def trained_approx_tokens(traj: Trajectory) -> int:
    """Approximate trained tokens of a trajectory: its loss-bearing assistant turns, tool calls
    counted as the JSON of their arguments (as text protocols write them)."""
    return sum(approx_tokens(m.content) + _call_tokens(m) for m in traj.messages
               if isinstance(m, AssistantMessage) and m.loss)


def _call_tokens(m: AssistantMessage) -> int:
    return sum(approx_tokens(f"{c.name} {json.dumps(c.arguments, ensure_ascii=False)}") for c in m.tool_calls)


def write_report(recipe: DataRecipe, out: Path, *, charts: bool = True,
                 run: Callable[[Callable[[Any], Any], list[Any]], list[Any]] | None = None) -> dict[str, Any]:
    """`stats.json`, `report.md` and the charts of a build in `out` (`run`: how to map the chart tasks)."""
    used = recipe.used_sources()
    sources = {name: json.loads((out / "sources" / f"{name}.report.json").read_text()) for name in recipe.sources
               if name in used}
    outputs: dict[str, Any] = {}
    turns: dict[str, Counter[int]] = {}
    for name in recipe.outputs:
        info = json.loads((out / "native" / f"{name}.steps.json").read_text())
        stats, extra = _scan(out, name)
        turns[name] = extra.pop("turns")
        extra.pop("by_output")
        dropped: Counter[str] = Counter()
        for s in info["steps"]:
            for k, v in s["counts"].items():
                if k.startswith("dropped:"):
                    dropped[f"{s['step']}:{k.split(':', 1)[1]}"] += v
        outputs[name] = {"records": info["records"], "balance": _balance(info["steps"]), "dropped": dict(dropped),
                         "steps": info["steps"], **extra, "stats": stats}
    mix = None
    if recipe.mix is not None and (out / "native" / f"{recipe.mix.name}.mix.json").exists():
        mix = json.loads((out / "native" / f"{recipe.mix.name}.mix.json").read_text())
        stats, extra = _scan(out, recipe.mix.name)
        turns[recipe.mix.name] = extra.pop("turns")
        by_output = extra.pop("by_output")
        mix.update(extra, stats=stats)
        mix["general_share"] = _general_share(recipe, by_output)
    result = {"recipe": recipe.name, "seed": recipe.seed, "sources": sources, "outputs": outputs, "mix": mix}
    write_atomic(out / "stats.json", json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    chart_files = _charts(result, turns, out / "charts", run) if charts else []
    write_atomic(out / "report.md", _markdown(recipe, result, chart_files, out))
    return result


def _general_share(recipe: DataRecipe, by_output: dict[str, int]) -> dict[str, Any]:
    """Share of the mix that is general chat: records, trained and processed approx tokens
    (`by_output`: each of them per output, as `Scan` counts them)."""
    chat = recipe.chat_outputs()
    totals: Counter[str] = Counter()
    for key, value in by_output.items():
        what, output = key.split("\x1f", 1)
        totals[what] += value
        if output in chat:
            totals[f"chat_{what}"] += value
    return {k: round(totals[f"chat_{k}"] / totals[k], 4) if totals[k] else 0.0
            for k in ("records", "trained", "processed")}


def _markdown(recipe: DataRecipe, r: dict[str, Any], charts: list[Path], out: Path) -> str:
    lines = [f"# Build report: {recipe.name}", "", recipe.description.strip(), "",
             f"Seed {recipe.seed}. Resolved recipe: `resolved_recipe.yaml`; package versions: `versions.json`; "
             "all numbers: `stats.json`. Token counts are approximate (word pieces), marked *approx*.", "",
             "## Sources", "", "| source | records | converted | quarantined | skipped | dropped (reason) |",
             "|---|---|---|---|---|---|"]
    for name, s in r["sources"].items():
        dropped = ", ".join(f"{k} {v}" for k, v in s["dropped"].items()) or "-"
        rej = ", ".join(f"{k} {v}" for k, v in s["rejected_by_reason"].items())
        q = f"{s['quarantined']} ({rej})" if s["quarantined"] else "0"
        lines.append(f"| {name} | {s['records']} | {s['converted']} | {q} | {s['skipped']} | {dropped} |")
    lines += ["", "## Outputs", "", "| output | records | turns (median / max) | tool calls | trained turns "
              "| trained approx tokens | processed approx tokens | protocols | dropped (step:reason) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name, o in r["outputs"].items():
        st = o["stats"]
        d = ", ".join(f"{k} {v}" for k, v in o["dropped"].items()) or "-"
        protos = ", ".join(f"{k} {v}" for k, v in o["protocols"].items()) or "-"
        lines.append(f"| {name} | {o['records']} | {st['turns_per_record']['median']:g} / {st['turns_per_record']['max']} "
                     f"| {st['tool_calls']} | {st['loss_bearing_turns']} | {sum(o['trained_approx_tokens'].values())} "
                     f"| {o['processed_approx_tokens']} | {protos} | {d} |")
    bal = [(n, cap, v) for n, o in r["outputs"].items() for cap, v in o["balance"].items()]
    if bal:
        lines += ["", "## Capability balance: requested vs realized", "",
                  "| output | capability | requested | realized (turns) | turns kept / before "
                  "| realized (approx tokens) |", "|---|---|---|---|---|---|"]
        for n, cap, v in bal:
            lines.append(f"| {n} | {cap} | {v['requested']:.3f} | {v['realized_turns']:.3f} | "
                         f"{v['turns_after']} / {v['turns_before']} | {v['realized_tokens']:.3f} |")
        removed = [(n, st["counts"]) for n, o in r["outputs"].items() for st in o["steps"]
                   if st["step"] == "balance" and "approx_tokens_processed_before" in st["counts"]]
        if removed:
            lines += ["", "`mode: drop` removed data: processed approx tokens before -> after:", ""]
            for n, c in removed:
                lines.append(f"- {n}: {c['approx_tokens_processed_before']} -> {c.get('approx_tokens_processed_after', 0)}"
                             f" ({c.get('dropped:no_trained_turns', 0)} samples removed)")
    lines += ["", "## Trained approx tokens per capability", "", "| output | " + " | ".join(
        ["reasoning", "retrieval", "understanding", "instruction_following", "unlabelled"]) + " |",
        "|---|---|---|---|---|---|"]
    for n, o in r["outputs"].items():
        t = o["trained_approx_tokens"]
        lines.append(f"| {n} | " + " | ".join(str(t.get(c, 0)) for c in
                                             ["reasoning", "retrieval", "understanding", "instruction_following",
                                              "unlabelled"]) + " |")
    negs = {n: o["negatives"] for n, o in r["outputs"].items() if o["negatives"]}
    if negs:
        lines += ["", "## Negative samples (kind / response origin)", ""]
        for n, kinds in negs.items():
            lines += [f"- {n}: " + ", ".join(f"{k}: {v}" for k, v in kinds.items())]
    if r["mix"]:
        m = r["mix"]
        g = m.get("general_share", {})
        lines += ["", f"## Mix `{recipe.mix.name if recipe.mix else ''}`", "",
                  f"{m['records']} records; chat outputs {', '.join(m['chat_outputs']) or 'none'}; chat measured by "
                  f"{m.get('by', 'records')} against the agent {m.get('basis', 'outputs')} (chat ratio "
                  f"{m.get('chat_ratio')}).", "",
                  f"General chat share of the mix: {g.get('records', 0):.1%} of records, {g.get('trained', 0):.1%} of "
                  f"trained approx tokens, {g.get('processed', 0):.1%} of processed approx tokens.", "",
                  "| output | repeat factor | records in mix |", "|---|---|---|"]
        for o, f in m["factors"].items():
            lines.append(f"| {o} | {f:g} | {m['records_per_output'].get(o, 0)} |")
    if charts:
        lines += ["", "## Charts", ""] + [f"![{c.stem}]({c.relative_to(out)})" for c in charts]
    return "\n".join(lines) + "\n"


CHARTS = ("records_per_output", "capability_balance", "trained_tokens", "turns")


def _charts(r: dict[str, Any], turns: dict[str, Counter[int]], folder: Path,
            run: Callable[[Callable[[Any], Any], list[Any]], list[Any]] | None = None) -> list[Path]:
    """The report's PNG charts, each drawn by `run` (an executor's `map`: one chart per task)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        log.warning("matplotlib is not installed: no charts (pip install 'agentflan[report]')")
        return []
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [(kind, r, turns, folder / f"{kind}.png") for kind in CHARTS]
    drawn = run(_chart, jobs) if run is not None else [_chart(j) for j in jobs]
    return [p for p in drawn if p is not None]


def _chart(job: tuple[str, dict[str, Any], dict[str, Counter[int]], Path]) -> Path | None:
    """One chart (a task); None when it has nothing to show."""
    from agentflan.io.charts import pyplot

    plt = pyplot()
    kind, r, turns, path = job
    names = list(r["outputs"])
    bal = [(n, cap, v) for n, o in r["outputs"].items() for cap, v in o["balance"].items()]
    if kind == "capability_balance" and not bal:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    if kind == "records_per_output":
        ax.barh(names, [r["outputs"][n]["records"] for n in names], color="#4c72b0")
        ax.set_xlabel("records")
        ax.set_title("Records per output")
    elif kind == "capability_balance":
        labels = [f"{n}\n{cap}" for n, cap, _ in bal]
        x = range(len(bal))
        ax.bar([i - 0.2 for i in x], [v["requested"] for *_, v in bal], 0.4, label="requested", color="#999999")
        ax.bar([i + 0.2 for i in x], [v["realized_turns"] for *_, v in bal], 0.4, label="realized", color="#dd8452")
        ax.set_xticks(list(x), labels, fontsize=7, rotation=20, ha="right")
        ax.set_ylabel("share of turns keeping loss")
        ax.set_title("Capability balance: requested vs realized")
        ax.legend()
    elif kind == "trained_tokens":
        caps = ["reasoning", "retrieval", "understanding", "instruction_following", "unlabelled"]
        left = [0] * len(names)
        for cap in caps:
            vals = [r["outputs"][n]["trained_approx_tokens"].get(cap, 0) for n in names]
            ax.barh(names, vals, left=left, label=cap)
            left = [a + b for a, b in zip(left, vals, strict=True)]
        ax.set_xlabel("trained tokens (approx)")
        ax.set_title("Trained tokens per capability")
        ax.legend(fontsize=7)
    else:
        for n, counts in turns.items():
            if counts:
                values = sorted(counts)
                ax.hist(values, bins=30, weights=[counts[v] for v in values], histtype="step", label=n)
        ax.set_xlabel("messages per record")
        ax.set_ylabel("records")
        ax.set_title("Conversation length")
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    return write_png(fig, path, metadata={"Software": None})  # no version stamp: same bytes every build
