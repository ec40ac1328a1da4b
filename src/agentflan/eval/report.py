"""A comparison report of trained models: Markdown and a self-contained HTML page, with charts.

`write_report` takes what the logs say (the summaries `agentflan score` derives from them), the
training metrics of each trained model and the data statistics of each arm, and writes
`report.md`, `report.html` (the same content, images inlined) and the PNGs beside them:

* `eval.png`: environment success, Agent-H per item kind, HScore against over-refusal;
* `env_kinds.png`: success per environment and task kind, one bar per model and protocol;
* `loss.png`: the training loss of each arm against the step;
* `tokens.png`: the share of trained tokens per protocol and per capability of each arm.

The HTML is rendered from the Markdown by a converter for the subset written here (headings,
paragraphs, lists, tables, code blocks, images), so the two never disagree.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentflan.io.charts import plot_curves, pyplot
from agentflan.io.files import write_atomic, write_png


@dataclass
class Arm:
    """One trained model of the comparison: its name, training metrics and data statistics."""

    name: str
    metrics: dict[str, Any]
    data: dict[str, Any] = field(default_factory=dict)


def loss_chart(arms: Sequence[Arm], path: Path) -> Path | None:
    """Training loss against the step, one line per arm."""
    curves = {a.name: [(h["step"], h["loss"]) for h in a.metrics.get("log_history", []) if "loss" in h]
              for a in arms}
    curves = {name: c for name, c in curves.items() if c}
    return plot_curves(curves, path, "training loss (trained tokens)", "Training loss") if curves else None


def token_shares(arm: Arm, key: str) -> dict[str, float]:
    """Share of the arm's trained tokens per protocol (`key="protocol"`) or capability."""
    counts = arm.metrics.get("data", {}).get(f"trained_tokens_by_{key}", {})
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())} if total else {}


def tokens_chart(arms: Sequence[Arm], path: Path) -> Path | None:
    """Stacked bars: each arm's trained tokens by protocol and by capability."""
    plt = pyplot()
    if plt is None or not any(token_shares(a, "protocol") for a in arms):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key in zip(axes, ("protocol", "capability"), strict=True):
        shares = [token_shares(a, key) for a in arms]
        parts = sorted({k for s in shares for k in s})
        bottom = [0.0] * len(arms)
        for part in parts:
            vals = [100 * s.get(part, 0.0) for s in shares]
            ax.bar([a.name for a in arms], vals, bottom=bottom, label=part)
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_ylim(0, 100)
        ax.set_ylabel("% of trained tokens")
        ax.set_title(f"Trained tokens by {key}", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    write_png(fig, path, dpi=100)
    return path


def training_table(arms: Sequence[Arm]) -> str:
    """Markdown: what each arm was trained on and how the training went."""
    rows = ["| arm | records | samples | trained tokens | tokens | steps | first -> last loss | seconds | "
            "tokens/s | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for a in arms:
        m, d = a.metrics, a.metrics.get("data", {})
        losses = [h["loss"] for h in m.get("log_history", []) if "loss" in h]
        loss = f"{losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "-"
        rows.append(f"| {a.name} | {d.get('trajectories', '-')} | {d.get('samples', '-')} | "
                    f"{d.get('trained_tokens', 0):,} | {d.get('tokens', 0):,} | {m.get('global_step', '-')} | {loss} | "
                    f"{m.get('seconds', '-')} | {m.get('tokens_per_second', '-')} | {m.get('peak_rss_mb', '-')} |")
    return "\n".join(rows) + "\n"


def shares_table(arms: Sequence[Arm], key: str) -> str:
    shares = {a.name: token_shares(a, key) for a in arms}
    parts = sorted({k for s in shares.values() for k in s})
    if not parts:
        return ""
    rows = [f"| {key} | " + " | ".join(f"{a.name} %" for a in arms) + " |", "|---|" + "---|" * len(arms)]
    for part in parts:
        rows.append(f"| `{part}` | " + " | ".join(
            f"{100 * shares[a.name][part]:.1f}" if part in shares[a.name] else "" for a in arms) + " |")
    return "\n".join(rows) + "\n"


def paired_section(rows: Sequence[Any], headline_pairs: Sequence[tuple[str, str]]) -> str:
    """Markdown: a headline sentence per pair, the overall rows, then the rows per task kind and category."""
    from agentflan.eval import paired

    heads = "\n".join(f"**{paired.headline(rows, a, b)}**\n" for a, b in headline_pairs)
    overall = paired.table([r for r in rows if r.stratum == "all"])
    strata = [r for r in rows if r.stratum != "all"]
    return (heads + "\n" + paired.summary(rows) + "\n" + overall + "\n" + paired.notes()
            + ("\n### Paired, per task kind and category\n\n" + paired.table(strata) if strata else ""))


def write_report(out: Path, *, title: str, intro: str, summaries: list[dict[str, Any]], arms: Sequence[Arm],
                 sections: Sequence[tuple[str, str]] = (), paired_rows: Sequence[Any] = (),
                 headline_pairs: Sequence[tuple[str, str]] = ()) -> tuple[Path, Path]:
    """Write `report.md`, `report.html` and their charts into `out`; returns the two paths.

    `sections` are extra (heading, Markdown) parts placed after the results (setup, commands);
    `paired_rows` (`eval.paired.Comparison`) are shown first, with one headline sentence for each
    of `headline_pairs`.
    """
    from agentflan.eval.suite import by_suite
    from agentflan.eval.suites import chart

    out.mkdir(parents=True, exist_ok=True)
    images = {"eval": chart(summaries, out / "eval.png")}
    results = [part for suite, group in by_suite(summaries) for part in suite.report_sections(group, out)]
    images.update({"loss": loss_chart(arms, out / "loss.png"), "tokens": tokens_chart(arms, out / "tokens.png")})

    def img(name: str, alt: str) -> str:
        return f"![{alt}]({name}.png)\n" if images.get(name) else ""

    parts = [f"# {title}\n", intro.strip() + "\n"]
    if paired_rows:
        parts += ["## Paired comparison (same tasks, item by item)\n", paired_section(paired_rows, headline_pairs)]
    for heading, body in results:  # each suite's part: environments, then Agent-H, ...
        parts += [f"## {heading}\n", body]
    parts += [img("eval", "success, Agent-H kinds, HScore against over-refusal")]
    if arms:
        parts += ["## Training\n", training_table(arms), img("loss", "training loss"),
                  "### Trained tokens by protocol\n", shares_table(arms, "protocol"),
                  "### Trained tokens by capability\n", shares_table(arms, "capability"), img("tokens", "trained tokens")]
    for heading, body in sections:
        parts += [f"## {heading}\n", body.strip() + "\n"]
    md = "\n".join(p for p in parts if p)
    md_path, html_path = out / "report.md", out / "report.html"
    write_atomic(md_path, md)
    write_atomic(html_path, markdown_to_html(md, out, title))
    return md_path, html_path


# ---- the Markdown subset, as HTML ------------------------------------------------------------------

_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:.9em}th,td{border:1px solid #ccc;padding:.3em .6em;"
        "text-align:left}th{background:#f3f3f3}code,pre{background:#f6f6f6;font-size:.9em}pre{padding:.8em;"
        "overflow-x:auto}img{max-width:100%}")


def _inline(text: str) -> str:
    out = html.escape(text, quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', out)


def _image(alt: str, src: str, base: Path) -> str:
    path = base / src
    if path.is_file():
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        src = f"data:image/png;base64,{data}"
    return f'<p><img alt="{html.escape(alt)}" src="{src}"></p>'


def markdown_to_html(md: str, base: Path, title: str) -> str:
    """HTML for the Markdown written by this module (images under `base` inlined)."""
    body: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("```"):
            j = i + 1
            while j < len(lines) and not lines[j].startswith("```"):
                j += 1
            body.append("<pre><code>" + html.escape("\n".join(lines[i + 1:j])) + "</code></pre>")
            i = j + 1
            continue
        if m := re.match(r"^(#{1,4}) (.*)", line):
            n = len(m.group(1))
            body.append(f"<h{n}>{_inline(m.group(2))}</h{n}>")
        elif m := re.match(r"^!\[([^\]]*)\]\(([^)]+)\)$", line.strip()):
            body.append(_image(m.group(1), m.group(2), base))
        elif line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            head, rest = rows[0], [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r)]
            body.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                        + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rest)
                        + "</table>")
            continue
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            para = [line]
            while i + 1 < len(lines) and lines[i + 1].strip() and not re.match(r"^(#|\||- |```|!\[)", lines[i + 1]):
                i += 1
                para.append(lines[i])
            body.append("<p>" + _inline(" ".join(para)) + "</p>")
        i += 1
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
