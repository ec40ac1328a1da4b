"""`agentflan data convert | stats | inspect | formats`."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from agentflan.cli.choices import RegistryChoice
from agentflan.errors import InputRejected, PartialResult
from agentflan.formats.templates import TEMPLATES
from agentflan.io import READERS, WRITERS, ConvertResult, ReadReport, convert, read
from agentflan.io.base import rejection_problems
from agentflan.io.files import write_atomic
from agentflan.schema import Trajectory


def _options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """`key=value` reader options; values are parsed as JSON when they can be."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--option")
        key, value = pair.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _progress(enabled: bool, label: str) -> Any:
    def wrap(stream: Iterator[Any]) -> Iterator[Any]:
        if not enabled:
            yield from stream
            return
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        cols = (SpinnerColumn(), TextColumn(label), BarColumn(), TextColumn("{task.completed} records"),
                TimeElapsedColumn())
        with Progress(*cols, transient=True, console=_err()) as bar:
            task = bar.add_task(label, total=None)
            for traj in stream:
                bar.advance(task)
                yield traj
    return wrap


def _err() -> Any:
    from rich.console import Console

    return Console(stderr=True)


SHARE = click.FloatRange(0.0, 1.0)
"""A share of the records, 0 to 1."""
MAX_REJECT_HELP = ("Exit with status 3 (partial) when more than this share (0-1) of the records is rejected; "
                   "an input whose every record is rejected always does.")


@click.group()
def data() -> None:
    """Convert, summarise and inspect agent and chat datasets."""


@data.command("convert")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--from", "fmt", type=RegistryChoice(READERS), help="Input format (detected if omitted).")
@click.option("--to", "to", type=RegistryChoice(WRITERS), default="native", show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="Output file: .jsonl or .json (+.gz/.zst), .parquet for --to parquet.")
@click.option("--on-error", type=click.Choice(["raise", "skip", "quarantine"]), default="quarantine",
              show_default=True, help="What to do with a bad record.")
@click.option("--quarantine", type=click.Path(path_type=Path), help="Quarantine file (default: beside the output).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE",
              help="Reader option, e.g. dfs_retries=strip, include_give_up=true, task=os, dataset=mine.")
@click.option("--report", type=click.Path(path_type=Path), help="Also write the accounting report as JSON.")
@click.option("--dataset-info", "dataset_info", type=click.Path(path_type=Path),
              help="--to sharegpt: add the entry to this LLaMA-Factory dataset_info.json (created if absent), "
                   "file_name relative to its folder.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.option("--max-reject", type=SHARE, help=MAX_REJECT_HELP)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Processes that convert while this one reads (same output with any number).")
def convert_cmd(inputs: tuple[str, ...], fmt: str | None, to: str, output: Path, on_error: str,
                quarantine: Path | None, options: tuple[str, ...], report: Path | None,
                dataset_info: Path | None, progress: bool | None, max_reject: float | None, workers: int) -> None:
    """Convert INPUTS (files, globs, directories, hf://datasets/... URLs) into one output file.

    Every input record is accounted for: converted, quarantined (raw record and reason written to
    the quarantine file), skipped, or dropped by a documented reader rule. The output is written
    to a temporary file and renamed when complete; when every record is rejected there is none.
    """
    show = sys.stderr.isatty() if progress is None else progress
    result = convert(list(inputs), output, to=to, fmt=fmt, on_error=on_error,  # type: ignore[arg-type]
                     quarantine=quarantine, reader_options=_options(options),
                     progress=_progress(show, f"{fmt or 'auto'} -> {to}"), workers=workers)
    r, w = result.read, result.write
    click.echo(f"read {r.records} records from {r.files} file(s) as {result.reader}: "
               f"{r.converted} converted, {r.quarantined} quarantined, {r.skipped} skipped, "
               f"{sum(r.dropped.values())} dropped")
    for reason, n in sorted(r.dropped.items()):
        click.echo(f"  dropped {n}: {reason}")
    for reason, n in sorted(r.rejected.items()):
        click.echo(f"  rejected {n}: {reason}")
    if result.quarantine:
        click.echo(f"quarantine: {result.quarantine}")
    if r.records and r.records == r.quarantined + r.skipped:
        output.unlink(missing_ok=True)  # an empty output would pass for a result
        raise InputRejected(f"every one of the {r.records} records was rejected as {result.reader} "
                            f"({_reasons(r)}), so no output was written{_where(result)}; is --from right?")
    if r.converted and not w.written:  # an empty output (or dataset entry) would pass for a result
        output.unlink(missing_ok=True)
        reasons = ", ".join(f"{k} {v}" for k, v in w.unwritable.most_common(3))
        raise InputRejected(f"none of the {r.converted} converted records can be written as {to} ({reasons}), so "
                            "no output was written" + (" and nothing was added to the dataset_info" if dataset_info
                                                       else "") + "; choose another --to")
    click.echo(f"wrote {w.written} records to {output} as {result.writer}")
    for reason, n in sorted(w.unwritable.items()):
        click.echo(f"  not writable as {to}, {n}: {reason}")
    for kind, n in sorted(w.lossy.items()):
        click.echo(f"  lossy in {to}, {n}: {kind}")
    info = result.dataset_info
    if info:
        click.echo("LLaMA-Factory dataset_info.json entry:\n" + json.dumps(info, indent=2))
        if dataset_info:
            _merge_dataset_info(dataset_info, info)
            click.echo(f"added to {dataset_info}")
    elif dataset_info:
        raise click.ClickException(f"--to {to} writing {output.name} has no dataset_info entry "
                                   "(only --to sharegpt, uncompressed: LLaMA-Factory does not read .gz/.zst)")
    if report:
        write_atomic(report, json.dumps(result.to_dict(), indent=2) + "\n")
    if not r.balanced():  # pragma: no cover - an internal invariant
        raise click.ClickException("record accounting does not balance; this is a bug")
    problems = rejection_problems(r.to_dict(), max_reject)
    if problems:
        raise PartialResult(f"{'; '.join(problems)} ({_reasons(r)}){_where(result)}; the output holds the rest")


def _reasons(r: ReadReport) -> str:
    return ", ".join(f"{k} {v}" for k, v in r.rejected.most_common(3))


def _where(result: ConvertResult) -> str:
    return f"; see {result.quarantine}" if result.quarantine else " (--on-error quarantine keeps them)"


def _merge_dataset_info(path: Path, entry: dict[str, Any]) -> None:
    """Add `entry` to a LLaMA-Factory dataset_info.json; `file_name` made relative to its folder, as
    LLaMA-Factory resolves it (joined to `dataset_dir`, the folder of dataset_info.json)."""
    import os

    infos = json.loads(path.read_text()) if path.exists() else {}
    for spec in entry.values():
        spec["file_name"] = os.path.relpath(spec["file_name"], path.resolve().parent)
    infos.update(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(infos, indent=2, ensure_ascii=False) + "\n")


@data.command("stats")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--from", "fmt", type=RegistryChoice(READERS), help="Input format (detected if omitted).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Reader option.")
def stats_cmd(inputs: tuple[str, ...], fmt: str | None, as_json: bool, options: tuple[str, ...]) -> None:
    """Summarise a dataset: records, turns, roles, tool calls, capabilities, loss, per source."""
    from agentflan.io import make_reader
    from agentflan.stats import compute_stats

    reader = make_reader(list(inputs), fmt, on_error="skip", **_options(options))
    result = compute_stats(reader.read(list(inputs)))
    result["reading"] = reader.report.to_dict()
    if as_json:
        click.echo(json.dumps(result, indent=2, ensure_ascii=False))
        return
    _print_stats(result, f"{', '.join(inputs)} ({reader.name})")


def _print_stats(s: dict[str, Any], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=title, show_header=True)
    t.add_column("metric")
    t.add_column("value", overflow="fold")
    rd = s["reading"]
    t.add_row("records read / converted", f"{rd['records']} / {rd['converted']}")
    if rd["dropped"] or rd["rejected_by_reason"]:
        t.add_row("dropped / rejected", f"{rd['dropped']} / {rd['rejected_by_reason']}")
    t.add_row("messages", str(s["messages"]))
    t.add_row("roles", ", ".join(f"{k} {v}" for k, v in s["roles"].items()))
    d = s["turns_per_record"]
    t.add_row("turns per record", f"min {d['min']}, median {d['median']}, mean {d['mean']}, p90 {d['p90']}, max {d['max']}")
    d = s["chars_per_record"]
    t.add_row("chars per record", f"median {d['median']}, mean {d['mean']}, max {d['max']}")
    t.add_row("tool calls", f"{s['tool_calls']} ({s['distinct_tools_called']} distinct tools, "
              f"{s['records_with_tool_calls']} records with calls, {s['tool_call_parse_errors']} parse errors)")
    t.add_row("records offering tools", str(s["records_offering_tools"]))
    t.add_row("loss-bearing turns", f"{s['loss_bearing_turns']} (untrained assistant turns: "
              f"{s['untrained_assistant_turns']})")
    t.add_row("capabilities", ", ".join(f"{k} {v}" for k, v in s["capabilities"].items()) or "-")
    t.add_row("tags", ", ".join(f"{k} {v}" for k, v in s["tags"].items()) or "-")
    t.add_row("validation warnings", ", ".join(f"{k} {v}" for k, v in s["validation"].items()) or "-")
    top = ", ".join(f"{k} {v}" for k, v in itertools.islice(s["top_tools"].items(), 5))
    t.add_row("top tools", top or "-")
    console.print(t)
    ps = Table(title="per source")
    for col in ("source", "records", "messages", "tool_calls", "tool_results", "trained_turns"):
        ps.add_column(col)
    for name, row in s["per_source"].items():
        ps.add_row(name, *(str(row.get(c, 0)) for c in ("records", "messages", "tool_calls", "tool_results",
                                                          "trained_turns")))
    console.print(ps)


@data.command("inspect")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--from", "fmt", type=RegistryChoice(READERS), help="Input format (detected if omitted).")
@click.option("-i", "--index", type=click.IntRange(min=0), default=0, show_default=True, help="Which record (0-based, after conversion).")
@click.option("--id", "record_id", help="Pick the record with this id instead of --index.")
@click.option("--plain", is_flag=True, help="Plain text with ⟦trained⟧ markers instead of colours.")
@click.option("--max-chars", type=click.IntRange(min=0), default=2000, show_default=True, help="Clip long messages (0: never).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Reader option.")
@click.option("--tokenizer", help="Show the tokenized sample: trained tokens highlighted (a path, hub id, "
                                  "gguf:smollm2-135m-instruct, or tiny).")
@click.option("--template", type=RegistryChoice(TEMPLATES, ordered=True), default="hf", show_default=True,
              help="Chat template for --tokenizer.")
@click.option("--html", "html_path", type=click.Path(path_type=Path), help="With --tokenizer: also write an HTML view.")
def inspect_cmd(inputs: tuple[str, ...], fmt: str | None, index: int, record_id: str | None, plain: bool,
                max_chars: int, options: tuple[str, ...], tokenizer: str | None, template: str,
                html_path: Path | None) -> None:
    """Show one record as agentflan sees it, trained spans marked."""
    from agentflan.render import render_rich, render_text

    stream = read(list(inputs), fmt, on_error="skip", **_options(options))
    if record_id is not None:
        traj = next((t for t in stream if t.id == record_id), None)
    else:
        traj = next(itertools.islice(stream, index, None), None)
    if traj is None:
        raise click.ClickException(f"no record {'with id ' + record_id if record_id else f'at index {index}'}")
    clip = max_chars or None
    if tokenizer:
        _inspect_tokens(traj, tokenizer, template, plain or not sys.stdout.isatty(), html_path)
        return
    if plain or not sys.stdout.isatty():
        click.echo(render_text(traj, max_chars=clip))
    else:
        from rich.console import Console

        Console().print(render_rich(traj, max_chars=clip))


@data.command("tokenize")
@click.argument("inputs", nargs=-1, required=True)
@click.option("--from", "fmt", type=RegistryChoice(READERS), help="Input format (detected if omitted).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output .jsonl/.json (+.gz/.zst).")
@click.option("--tokenizer", required=True, help="Tokenizer: a path, hub id, gguf:smollm2-135m-instruct, or tiny.")
@click.option("--template", type=RegistryChoice(TEMPLATES, ordered=True), default="hf", show_default=True)
@click.option("--max-length", type=click.IntRange(min=1), help="Truncate samples to this many tokens.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Reader option.")
def tokenize_cmd(inputs: tuple[str, ...], fmt: str | None, output: Path, tokenizer: str, template: str,
                 max_length: int | None, options: tuple[str, ...]) -> None:
    """Write INPUTS pre-tokenized with their loss masks: `input_ids` + `labels` rows.

    TRL's SFTTrainer trains on `labels` as they are, so per-message loss (untrained turns, negative
    samples) survives exactly; pass the same tokenizer to the trainer.
    """
    from agentflan.formats.protocols import training_texts
    from agentflan.formats.templates import get_template
    from agentflan.training.export import export_tokenized
    from agentflan.training.models import ModelConfig, load_tokenizer

    trajs = list(read(list(inputs), fmt, on_error="skip", **_options(options)))
    tok = load_tokenizer(ModelConfig(name_or_path=tokenizer), training_texts(trajs))
    rep = export_tokenized(trajs, output, get_template(template, tok), tok, max_length)
    click.echo(f"wrote {rep.written} tokenized samples to {output} (template {template}, tokenizer {tokenizer})")
    for reason, n in sorted(rep.unwritable.items()):
        click.echo(f"  not written, {n}: {reason}")
    for kind, n in sorted(rep.lossy.items()):
        click.echo(f"  {kind}: {n}")


@data.command("formats")
def formats_cmd() -> None:
    """List the readers (--from) and writers (--to)."""
    click.echo("readers (--from):")
    for name in READERS.names():
        click.echo(f"  {name:16} {READERS.doc(name)}")
    click.echo("writers (--to):")
    for name in WRITERS.names():
        click.echo(f"  {name:16} {WRITERS.doc(name)}")


@data.command("build")
@click.argument("recipe")
@click.argument("overrides", nargs=-1)
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option("--workers", type=click.IntRange(min=1), help="Processes (default: the recipe's `workers`).")
@click.option("--no-resume", is_flag=True, help="Rebuild every stage even if it is marked done.")
@click.option("--dry-run", is_flag=True, help="Validate the recipe and print it resolved; build nothing.")
@click.option("--max-reject", type=SHARE, help=MAX_REJECT_HELP.replace("the records", "a source's records"))
def build_cmd(recipe: str, overrides: tuple[str, ...], output: Path, workers: int | None, no_resume: bool,
              dry_run: bool, max_reject: float | None) -> None:
    """Build a dataset from RECIPE (a packaged name or a YAML file) with key=value OVERRIDES.

    Writes every output in native and the recipe's formats, a mixed training file, stats.json,
    report.md and charts into OUTPUT. A killed build resumes where it stopped.
    """
    import yaml

    from agentflan.pipeline.build import build
    from agentflan.pipeline.recipe import load_recipe

    rec, resolved = load_recipe(recipe, list(overrides))
    if dry_run:
        click.echo(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
        return
    result = build(rec, resolved, output, workers=workers, resume=not no_resume, echo=click.echo)
    if result.stages_skipped:
        click.echo(f"resumed: {len(result.stages_skipped)} stage(s) already done ({', '.join(result.stages_skipped)})")
    click.echo(f"done: {output}")
    problems = [f"source {name}: {p}" for name, report in result.stats.get("sources", {}).items()
                for p in rejection_problems(report, max_reject)]
    if problems:
        raise PartialResult(f"{'; '.join(problems)} (see {output}/quarantine/ and report.md)")


def _inspect_tokens(traj: Trajectory, tokenizer_name: str, template_name: str, plain: bool,
                    html_path: Path | None) -> None:
    """The sample as the trainer sees it: decoded token runs, trained ones marked."""
    import html

    from agentflan.formats.protocols import training_texts
    from agentflan.formats.templates import get_template
    from agentflan.training.masking import encode, show_trained, token_runs
    from agentflan.training.models import ModelConfig, load_tokenizer

    tok = load_tokenizer(ModelConfig(name_or_path=tokenizer_name), training_texts([traj]))
    enc = encode(traj, get_template(template_name, tok), tok)
    click.echo(f"{len(enc.input_ids)} tokens, {enc.trained} trained (template {template_name})")
    if plain:
        click.echo(show_trained(enc, tok))
    else:
        from rich.console import Console
        from rich.text import Text

        text = Text()
        for ids, trained in token_runs(enc):
            text.append(tok.decode(ids), style="bold green on grey11" if trained else "dim")
        Console().print(text)
    if html_path:
        body = "".join(f"<mark>{html.escape(tok.decode(ids))}</mark>" if trained else html.escape(tok.decode(ids))
                       for ids, trained in token_runs(enc))
        write_atomic(html_path,
            "<!doctype html><meta charset=utf-8><title>agentflan inspect</title><style>body{font-family:monospace;"
            "white-space:pre-wrap;color:#888}mark{background:#cfe8cf;color:#000}</style>"
            f"<p>{html.escape(traj.id)}: {len(enc.input_ids)} tokens, {enc.trained} trained "
            f"(highlighted), template {template_name}</p>{body}\n")
        click.echo(f"HTML: {html_path}")

