"""The build report: `stats.json` (everything, machine-readable), `report.md` and PNG charts."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from agentflan.pipeline.recipe import DataRecipe
from agentflan.schema import AssistantMessage, Trajectory
from agentflan.stats import compute_stats
from agentflan.tokens import approx_tokens

log = logging.getLogger(__name__)


def _scan(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """compute_stats plus trained approx tokens per capability and negatives per kind/origin."""
    tokens: Counter[str] = Counter()
    negatives: Counter[str] = Counter()
    protocols: Counter[str] = Counter()
    turns: list[int] = []
    processed = 0

    def stream() -> Any:
        nonlocal processed
        with path.open(encoding="utf-8") as f:
            for line in f:
                t = Trajectory.model_validate_json(line)
                turns.append(len(t.messages))
                processed += sum(approx_tokens(m.content) for m in t.messages)
                protocols[t.tags.get("protocol", "structured" if t.tools else "chat")] += 1
                if "negative_kind" in t.tags:
                    negatives[f"{t.tags['negative_kind']} / {t.tags.get('response_origin', '?')}"] += 1
                for m in t.messages:
                    if isinstance(m, AssistantMessage) and m.loss:
                        tokens[m.capability or "unlabelled"] += approx_tokens(m.content)
                yield t

    stats = compute_stats(stream())
    extra = {"trained_approx_tokens": dict(sorted(tokens.items())), "negatives": dict(sorted(negatives.items())),
             "processed_approx_tokens": processed, "protocols": dict(sorted(protocols.items())), "turns": turns}
    return stats, extra


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
    total = 0
    for m in traj.messages:
        if isinstance(m, AssistantMessage) and m.loss:
            total += approx_tokens(m.content)
            total += sum(approx_tokens(f"{c.name} {json.dumps(c.arguments, ensure_ascii=False)}") for c in m.tool_calls)
    return total


def write_report(recipe: DataRecipe, out: Path, *, charts: bool = True) -> dict[str, Any]:
    used = recipe.used_sources()
    sources = {name: json.loads((out / "sources" / f"{name}.report.json").read_text()) for name in recipe.sources
               if name in used}
    outputs: dict[str, Any] = {}
    turns: dict[str, list[int]] = {}
    for name in recipe.outputs:
        info = json.loads((out / "native" / f"{name}.steps.json").read_text())
        stats, extra = _scan(out / "native" / f"{name}.jsonl")
        turns[name] = extra.pop("turns")
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
        stats, extra = _scan(out / "native" / f"{recipe.mix.name}.jsonl")
        turns[recipe.mix.name] = extra.pop("turns")
        mix.update(extra, stats=stats)
        mix["general_share"] = _general_share(recipe, out / "native" / f"{recipe.mix.name}.jsonl")
    result = {"recipe": recipe.name, "seed": recipe.seed, "sources": sources, "outputs": outputs, "mix": mix}
    (out / "stats.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    chart_files = _charts(result, turns, out / "charts") if charts else []
    (out / "report.md").write_text(_markdown(recipe, result, chart_files, out))
    return result


def _general_share(recipe: DataRecipe, path: Path) -> dict[str, Any]:
    """Share of the mix that is general chat: records, trained and processed approx tokens."""
    chat = recipe.chat_outputs()
    totals: Counter[str] = Counter()
    for t in _read(path):
        is_chat = t.metadata.get("output") in chat
        for key, value in (("records", 1), ("trained", trained_approx_tokens(t)),
                           ("processed", sum(approx_tokens(m.content) for m in t.messages))):
            totals[key] += value
            if is_chat:
                totals[f"chat_{key}"] += value
    return {k: round(totals[f"chat_{k}"] / totals[k], 4) if totals[k] else 0.0
            for k in ("records", "trained", "processed")}


def _read(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        for line in f:
            yield Trajectory.model_validate_json(line)


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


def _charts(r: dict[str, Any], turns: dict[str, list[int]], folder: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no charts (pip install 'agentflan[report]')")
        return []
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    names = list(r["outputs"])
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.barh(names, [r["outputs"][n]["records"] for n in names], color="#4c72b0")
    ax.set_xlabel("records")
    ax.set_title("Records per output")
    files.append(_save(plt, fig, folder / "records_per_output.png"))

    bal = [(n, cap, v) for n, o in r["outputs"].items() for cap, v in o["balance"].items()]
    if bal:
        fig, ax = plt.subplots(figsize=(9, 4))
        labels = [f"{n}\n{cap}" for n, cap, _ in bal]
        x = range(len(bal))
        ax.bar([i - 0.2 for i in x], [v["requested"] for *_, v in bal], 0.4, label="requested", color="#999999")
        ax.bar([i + 0.2 for i in x], [v["realized_turns"] for *_, v in bal], 0.4, label="realized", color="#dd8452")
        ax.set_xticks(list(x), labels, fontsize=7, rotation=20, ha="right")
        ax.set_ylabel("share of turns keeping loss")
        ax.set_title("Capability balance: requested vs realized")
        ax.legend()
        files.append(_save(plt, fig, folder / "capability_balance.png"))

    caps = ["reasoning", "retrieval", "understanding", "instruction_following", "unlabelled"]
    fig, ax = plt.subplots(figsize=(9, 4))
    left = [0] * len(names)
    for cap in caps:
        vals = [r["outputs"][n]["trained_approx_tokens"].get(cap, 0) for n in names]
        ax.barh(names, vals, left=left, label=cap)
        left = [a + b for a, b in zip(left, vals, strict=True)]
    ax.set_xlabel("trained tokens (approx)")
    ax.set_title("Trained tokens per capability")
    ax.legend(fontsize=7)
    files.append(_save(plt, fig, folder / "trained_tokens.png"))

    fig, ax = plt.subplots(figsize=(9, 4))
    for n, values in turns.items():
        if values:
            ax.hist(values, bins=30, histtype="step", label=n)
    ax.set_xlabel("messages per record")
    ax.set_ylabel("records")
    ax.set_title("Conversation length")
    ax.legend(fontsize=7)
    files.append(_save(plt, fig, folder / "turns.png"))
    return files


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no version stamp: same bytes every build
    plt.close(fig)
    return path
