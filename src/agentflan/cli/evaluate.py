"""`agentflan eval` (play held-out tasks with a model, log, score) and `agentflan score` (re-score
logs without a model, compare runs)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from agentflan.eval.runlog import find_logs
from agentflan.models.engines import ENGINES, EngineOptions, make_engine

__all__ = ["SEED", "db_engine_option", "db_setup", "engine_from_options", "engine_options", "eval_cmd", "find_logs", "score_cmd"]

SEED = click.IntRange(0, 2**32 - 1)
"""A seed: what numpy and torch accept (`agentflan train` seeds both with it)."""


def engine_options(f: Any) -> Any:
    """The options that choose and configure a model engine (shared by `eval` and `env play`)."""
    for opt in reversed([
        click.option("--model", "model", help="A model folder (local engine; gguf:smollm2-135m-instruct: SmolLM2 "
                                              "from PyPI, converted once), or the model name at --base-url."),
        click.option("--base-url", help="An OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."),
        click.option("--engine", "engine_name", type=click.Choice(["auto", *ENGINES.names()]), default="auto",
                     show_default=True, help="auto: openai with --base-url, else hf."),
        click.option("--protocol", "protocols", multiple=True,
                     help="Protocol(s) to prompt in (default: those the model was trained with; `native` for a "
                          "model not trained by agentflan). See `agentflan eval --list-protocols`."),
        click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True, help="Local engine: prompts per generate call."),
        click.option("--max-new-tokens", type=click.IntRange(min=1), default=256, show_default=True),
        click.option("--device", default="cpu", show_default=True),
        click.option("--dtype", default="float32", show_default=True),
        click.option("--concurrency", type=click.IntRange(1, 256), default=8, show_default=True, help="Endpoint: requests in flight."),
        click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
                     help="Endpoint: seconds a whole request may take (connecting, waiting and reading)."),
        click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True, help="Endpoint: retries on timeouts, 429 and 5xx."),
    ]):
        f = opt(f)
    return f


SQL_MODE = re.compile(r"[A-Za-z_]+(,[A-Za-z_]+)*")


def db_engine_option(f: Any) -> Any:
    """`--db-engine` and `--sql-mode` (checked together by `db_setup`)."""
    f = click.option("--sql-mode", default=None, metavar="MODE",
                     help="--db-engine mysql: the episodes' sql_mode (default: MySQL 8's strict mode, what "
                          "AgentBench's evaluation server runs). AgentBench's dbbench labels were made without strict "
                          "mode: NO_ENGINE_SUBSTITUTION reproduces them (docs/eval.md).")(f)
    return click.option("--db-engine", type=click.Choice(["sqlite", "mysql"]), default="sqlite", show_default=True,
                        help="db only: mysql plays each episode on a throw-away MariaDB server (apt-get install "
                             "mariadb-server; pip install 'agentflan[mysql]'), as AgentBench runs on MySQL.")(f)


def db_setup(db_engine: str, sql_mode: str | None) -> tuple[str, str | None]:
    """The checked (`--db-engine`, `--sql-mode`) pair: a mode needs mysql and reads as MariaDB's
    comma-separated mode names (MariaDB itself refuses an unknown name, as a one-line error)."""
    if sql_mode is None:
        return db_engine, None
    if db_engine != "mysql":
        raise click.UsageError("--sql-mode applies to --db-engine mysql only")
    mode = sql_mode.strip().replace(" ", "")
    if mode and not SQL_MODE.fullmatch(mode):
        raise click.BadParameter(f"{sql_mode!r} is not a comma-separated list of mode names "
                                 "(e.g. NO_ENGINE_SUBSTITUTION or STRICT_TRANS_TABLES,NO_ZERO_DATE)",
                                 param_hint="--sql-mode")
    return db_engine, mode.upper()


def engine_from_options(options: EngineOptions) -> Any:
    """`models.make_engine`, with a missing option reported as a usage error (exit status 2)."""
    problem = options.problem()
    if problem is not None:
        raise click.UsageError(problem)
    return make_engine(options)


@click.command("eval")
@click.argument("suites", nargs=-1)
@engine_options
@click.option("--policy", type=click.Choice(["model", "expert", "random"]), default="model", show_default=True,
              help="expert/random: the scripted baselines (no model), for calibration.")
@click.option("-n", "--n", "count", type=click.IntRange(min=1), default=100, show_default=True,
              help="Tasks per suite (model runs; --predictions scores every line).")
@click.option("--split", type=click.Choice(["heldout", "train"]), default="heldout", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Task generation seed.")
@click.option("--tasks", "tasks_file", type=click.Path(path_type=Path),
              help="db: an AgentBench dbbench JSONL file (e.g. dev.jsonl) instead of generated tasks; agent-h: a "
                   "ToolBench query file or an Agent-H items JSONL; steps: any trajectory file agentflan reads; bfcl: "
                   "a BFCL question file (possible answers in possible_answer/ beside it); teval: a T-Eval data file "
                   "(e.g. plan_str_v1.json; --protocol VARIANT when its name does not say).")
@click.option("--predictions", type=click.Path(path_type=Path),
              help="bfcl: score every line of a BFCL predictions file ({\"id\", \"result\"} lines) without a model; "
                   "teval: score a T-Eval predictions file (T-Eval's data with a 'prediction' per item, as its "
                   "test.py writes).")
@click.option("--max-steps", type=click.IntRange(min=1), default=12, show_default=True, help="Assistant actions per episode.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output folder (default out/eval/<model>).")
@click.option("--no-resume", is_flag=True, help="Start over instead of resuming episodes already logged.")
@click.option("--list-protocols", is_flag=True, help="List the protocols and exit.")
@db_engine_option
def eval_cmd(suites: tuple[str, ...], model: str | None, base_url: str | None, engine_name: str,
             protocols: tuple[str, ...], batch_size: int, max_new_tokens: int, device: str, dtype: str,
             concurrency: int, timeout_s: float, retries: int, policy: str, count: int, split: str, seed: int,
             tasks_file: Path | None, predictions: Path | None, max_steps: int, output: Path | None, no_resume: bool,
             list_protocols: bool, db_engine: str, sql_mode: str | None) -> None:
    """Play held-out tasks of SUITES (toolapi, db; default both; also agent-h, steps, bfcl, bfcl-multi, teval) and score them.

    Each (suite, protocol) run is logged to OUTPUT/<suite>-<protocol>/episodes.jsonl with every
    transcript, and summarized (success ± s.e., by task kind, parse failures, invalid actions,
    errors apart). Re-running the same command resumes; `agentflan score OUTPUT` re-scores.
    """
    from agentflan.eval.evaluate import EvalConfig, env_suites, evaluate
    from agentflan.eval.suite import suite_names
    from agentflan.formats.protocols import protocol_names

    if list_protocols:
        click.echo("\n".join(protocol_names()))
        return
    db_engine, sql_mode = db_setup(db_engine, sql_mode)
    suites = suites or env_suites()
    known = suite_names()
    unknown = [s for s in suites if s not in known]
    if unknown:
        raise click.UsageError(f"unknown suite(s) {', '.join(unknown)} (known: {', '.join(known)})")
    config = EvalConfig(suites=suites, model=model, base_url=base_url, policy=policy, protocols=protocols,
                        count=count, split=split, seed=seed, tasks_file=tasks_file, predictions=predictions,
                        max_steps=max_steps, output=output, resume=not no_resume, db_engine=db_engine,
                        sql_mode=sql_mode, max_new_tokens=max_new_tokens)
    engine = None
    if config.needs_engine:  # an endpoint's answers are cached in the output folder
        engine = engine_from_options(EngineOptions(
            engine_name, model, base_url, batch_size=batch_size, max_new_tokens=max_new_tokens, device=device,
            dtype=dtype, concurrency=concurrency, timeout_s=timeout_s, retries=retries,
            cache=str(config.out / "requests.jsonl")))
    done = evaluate(config, engine, echo=click.echo, warn=lambda line: click.echo(line, err=True))
    if done.exit_code:
        sys.exit(done.exit_code)


@click.command("score")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the comparison as Markdown (+ PNG beside).")
@click.option("--json", "as_json", is_flag=True, help="Print the summaries and paired comparisons as JSON.")
@click.option("--baseline", help="Compare every other run against this one (default: every pair of runs).")
@click.option("--no-paired", is_flag=True, help="Leave out the paired comparisons.")
@click.option("--strata/--no-strata", default=True, show_default=True,
              help="Paired rows per task kind and category below each suite's overall row.")
def score_cmd(paths: tuple[Path, ...], output: Path | None, as_json: bool, baseline: str | None, no_paired: bool,
              strata: bool) -> None:
    """Re-score evaluation logs without a model and compare the runs.

    PATHS are episodes.jsonl files or folders holding them (an `agentflan eval` output). Every
    verdict is derived again by replaying the logged calls in a fresh environment; a verdict that
    differs from the logged one is reported (and the exit status is 1).

    Runs scored on the same tasks (same seed, same task file) are compared item by item: the
    difference with a 95% bootstrap interval, McNemar's exact p (a sign-flip test for graded
    scores), Holm's adjustment, and the smallest difference the run could detect.
    """
    from agentflan.eval import paired
    from agentflan.eval.suites import chart, rescore_logs, table
    from agentflan.eval.suites import paired as pair_runs

    scored, mismatches = rescore_logs(find_logs(paths), warn=lambda line: click.echo(line, err=True))
    rows = [] if no_paired else pair_runs(scored, baseline)
    summaries = [s.summary for s in scored]
    text = table(summaries)
    if rows:
        text += "\n**paired comparisons**\n\n" + paired.summary(rows) + "\n" + paired.table(rows, strata=strata) \
            + "\n" + paired.notes()
    if as_json:
        click.echo(json.dumps({"runs": summaries, "paired": [r.to_json() for r in rows]}, indent=2))
    else:
        click.echo(text)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        png = chart(summaries, output.with_suffix(".png"))
        from agentflan.io.files import write_atomic

        write_atomic(output, "# agentflan score\n\n" + text + (f"\n![success]({png.name})\n" if png else ""))
        click.echo(f"report: {output}" + (f" and {png}" if png else ""))
    if mismatches:
        raise click.ClickException(f"{mismatches} logged verdict(s) differ from the re-scored ones (see above)")
