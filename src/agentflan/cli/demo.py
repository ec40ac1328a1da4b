"""`agentflan demo`: the main job on the built-in default corpus."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("demo")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("out/demo"), show_default=True)
def demo(output: Path) -> None:
    """Write the built-in sample corpus, convert every file to native, summarise and inspect it."""
    from agentflan.io import convert, read
    from agentflan.render import render_text
    from agentflan.samples import SAMPLE_FILES, write_samples
    from agentflan.stats import compute_stats

    raw = write_samples(output / "raw")
    click.echo(f"1. wrote the built-in corpus in {len(raw)} source formats to {output / 'raw'}")
    native = []
    for name, path in raw.items():
        fmt = SAMPLE_FILES[name][1]
        dest = output / "native" / f"{path.name.split('.')[0]}.jsonl"
        r = convert(str(path), dest, fmt=fmt, to="native", on_error="raise")
        native.append(str(dest))
        click.echo(f"   {name:24} --from {fmt:14} {r.read.records} read, {r.read.converted} converted "
                   f"-> {dest}")
    merged = output / "all.openai.jsonl"
    r = convert(native, merged, fmt="native", to="openai", on_error="raise")
    click.echo(f"2. merged {r.write.written} trajectories into OpenAI messages+tools: {merged}")
    s = compute_stats(read(native, "native", on_error="raise"))
    (output / "stats.json").write_text(json.dumps(s, indent=2) + "\n")
    click.echo(f"3. statistics ({output / 'stats.json'}): {s['records']} records, {s['messages']} messages, "
               f"{s['tool_calls']} tool calls, {s['loss_bearing_turns']} loss-bearing turns, "
               f"per source {json.dumps({k: v['records'] for k, v in s['per_source'].items()})}")
    first = next(read(native[0], "native", on_error="raise"))
    click.echo("4. one trajectory as agentflan sees it (⟦trained⟧):\n")
    click.echo(render_text(first))
