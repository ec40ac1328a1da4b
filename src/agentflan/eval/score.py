"""Summaries of evaluation logs, and comparisons across runs (Markdown and PNG).

An environment run's summary: success rate with its standard error over the episodes that got a
verdict, success by task kind, the parse-failure rate (episodes in which a reply could not be
read), the invalid-action rate (calls that came back as errors: unknown tools, bad arguments,
failing SQL), flags (replies that wrote a tool result themselves, ...), and errors (failed
requests) counted apart: an error is never a wrong answer and never enters the rates.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from agentflan.io.files import write_png


def rate(k: int, n: int) -> dict[str, float | int]:
    """A proportion with its standard error (binomial, sqrt(p(1-p)/n))."""
    p = k / n if n else 0.0
    return {"n": n, "k": k, "rate": round(p, 4), "se": round(math.sqrt(p * (1 - p) / n), 4) if n else 0.0}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The summary of an environment run's records (see the module docstring)."""
    scored = [r for r in records if r.get("error") is None and r.get("verdict") is not None]
    errors = [r for r in records if r.get("error") is not None]
    by_kind: dict[str, list[bool]] = defaultdict(list)
    calls = invalid = unknown = unparseable = context_limit = 0
    flags: Counter[str] = Counter()
    steps = 0
    for r in scored:
        ok = bool(r["verdict"]["success"])
        by_kind[r.get("kind", "?")].append(ok)
        steps += int(r.get("steps", 0))
        unparseable += any(a.get("kind") == "unparseable" for a in r.get("actions", []))
        context_limit += any(a.get("kind") == "context_limit" for a in r.get("actions", []))
        for a in r.get("actions", []):
            flags.update(a.get("flags", []))
        traj = r["transcript"]
        final = (traj.get("tags") or {}).get("final_tool")
        offered = {t["name"] for t in traj.get("tools", [])}
        for m in traj["messages"]:
            if m["role"] == "assistant":
                for c in m.get("tool_calls", []):
                    if c["name"] == final:
                        continue
                    calls += 1
                    unknown += c["name"] not in offered
            elif m["role"] == "tool" and (m.get("metadata") or {}).get("error"):
                invalid += 1
    success = sum(ok for oks in by_kind.values() for ok in oks)
    first = records[0] if records else {}
    return {
        "env": first.get("env"), "protocol": first.get("protocol"), "agent": first.get("agent"),
        "episodes": len(records), "scored": len(scored), "errors": len(errors),
        "success": rate(success, len(scored)),
        "by_kind": {k: rate(sum(v), len(v)) for k, v in sorted(by_kind.items())},
        "parse_failure": rate(unparseable, len(scored)),
        "invalid_action": rate(invalid, calls), "unknown_tool_calls": unknown, "calls": calls,
        "context_limit": context_limit, "flags": dict(sorted(flags.items())), "mean_steps": round(steps / len(scored), 2) if scored else 0.0,
        "error_examples": sorted({str(r["error"])[:200] for r in errors})[:3],
    }


def pct(x: dict[str, Any]) -> str:
    return f"{100 * x['rate']:.1f} ± {100 * x['se']:.1f}" if x["n"] else "-"


def table(summaries: list[dict[str, Any]]) -> str:
    """A Markdown comparison of run summaries (one row per run)."""
    kinds = sorted({k for s in summaries for k in s.get("by_kind", {})})
    head = ["run", "env", "protocol", "episodes", "success %", *[f"{k} %" for k in kinds], "parse fail %",
            "invalid action %", "errors"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        cells = [str(s.get("run", "")), str(s.get("env")), f"`{s.get('protocol')}`", str(s["scored"]), pct(s["success"]),
                 *[pct(s["by_kind"][k]) if k in s["by_kind"] else "" for k in kinds],
                 pct(s["parse_failure"]), pct(s["invalid_action"]), str(s["errors"])]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def chart(summaries: list[dict[str, Any]], path: Path) -> Path | None:
    """Success (with standard errors) per run, grouped by environment, as a PNG."""
    from agentflan.io.charts import pyplot

    plt = pyplot()
    if plt is None:
        return None
    if not summaries:
        return None
    labels = [f"{s.get('run', '')}\n{s.get('env')} / {s.get('protocol')}" for s in summaries]
    values = [100 * s["success"]["rate"] for s in summaries]
    errs = [100 * s["success"]["se"] for s in summaries]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(summaries) + 2), 4.2))
    bars = ax.bar(range(len(values)), values, yerr=errs, capsize=3, color="#4C72B0")
    for b, v in zip(bars, values, strict=True):
        ax.annotate(f"{v:.0f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    ax.set_xticks(range(len(values)), labels, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("success % (± s.e.)")
    ax.set_ylim(0, 105)
    ax.set_title("Held-out success per run")
    fig.tight_layout()
    return write_png(fig, path)


def env_table(summaries: list[dict[str, Any]]) -> str:
    """Markdown: one row per model, environment and protocol; success overall and per task kind."""
    runs = list(summaries)
    kinds = sorted({k for s in runs for k in s["by_kind"]})
    head = ["model", "env", "protocol", "episodes", "success %", *[f"{k} %" for k in kinds], "parse fail %",
            "invalid action %", "mean steps", "errors"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in sorted(runs, key=lambda s: str(s.get("env"))):  # stable: the models stay in the order given
        rows.append("| " + " | ".join([
            str(s.get("run")), str(s.get("env")), f"`{s.get('protocol')}`", str(s["scored"]), pct(s["success"]),
            *[pct(s["by_kind"][k]) if k in s["by_kind"] else "" for k in kinds], pct(s["parse_failure"]),
            pct(s["invalid_action"]), str(s["mean_steps"]), str(s["errors"])]) + " |")
    return "\n".join(rows) + "\n"


def env_kinds_chart(summaries: list[dict[str, Any]], path: Path) -> Path | None:
    """Success per environment and task kind (± s.e.), one bar per run and protocol."""
    from agentflan.io.charts import pyplot

    plt = pyplot()
    envs = sorted({str(s.get("env")) for s in summaries})
    if plt is None or not envs:
        return None
    fig, axes = plt.subplots(len(envs), 1, figsize=(10, 3.8 * len(envs)), squeeze=False)
    for ax, env in zip(axes[:, 0], envs, strict=True):
        runs = [s for s in summaries if s.get("env") == env]
        kinds = ["all", *sorted({k for s in runs for k in s["by_kind"]})]
        width = 0.8 / max(1, len(runs))
        for j, s in enumerate(runs):
            vals = [s["success"] if k == "all" else s["by_kind"].get(k, {"rate": 0.0, "se": 0.0}) for k in kinds]
            ax.bar([i + j * width for i in range(len(kinds))], [100 * v["rate"] for v in vals], width,
                   yerr=[100 * v["se"] for v in vals], capsize=2, label=f"{s.get('run')} / {s.get('protocol')}")
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(kinds))], kinds, fontsize=8)
        ax.set_ylim(0, 105)
        ax.set_ylabel("success %")
        ax.set_title(f"{env}: success per task kind (held-out)", fontsize=10)
        ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    write_png(fig, path, dpi=100)
    return path


def label(s: dict[str, Any]) -> str:
    return f"{s.get('run', '')} / {s.get('protocol')}"


def bars(ax: Any, groups: list[str], series: list[tuple[str, list[float], list[float]]], title: str) -> None:
    width = 0.8 / max(1, len(series))
    for k, (name, vals, errs) in enumerate(series):
        xs = [i + k * width for i in range(len(groups))]
        ax.bar(xs, vals, width, yerr=errs, capsize=2, label=name)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, fontsize=8)
    ax.set_ylim(0, 105)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, ncol=2)
