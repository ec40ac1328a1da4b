"""`agentflan eval` (play held-out tasks with a model, log, score) and `agentflan score` (re-score
logs without a model, compare runs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from agentflan.errors import EXIT_PARTIAL, AgentflanError, ConfigError, RunFailed

SEED = click.IntRange(0, 2**32 - 1)
"""A seed: what numpy and torch accept (`agentflan train` seeds both with it)."""


def engine_options(f: Any) -> Any:
    """The options that choose and configure a model engine (shared by `eval` and `env play`)."""
    for opt in reversed([
        click.option("--model", "model", help="A model folder (local engine), or the model name at --base-url."),
        click.option("--base-url", help="An OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1."),
        click.option("--engine", "engine_name", type=click.Choice(["auto", "hf", "openai", "vllm"]), default="auto",
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


def db_engine_option(f: Any) -> Any:
    return click.option("--db-engine", type=click.Choice(["sqlite", "mysql"]), default="sqlite", show_default=True,
                        help="db only: mysql plays each episode on a throw-away MariaDB server (apt-get install "
                             "mariadb-server; pip install 'agentflan[mysql]'), as AgentBench runs on MySQL.")(f)


def make_engine(model: str | None, base_url: str | None, engine_name: str, *, batch_size: int, max_new_tokens: int,
                device: str, dtype: str, concurrency: int, timeout_s: float, retries: int,
                cache: str | None = None) -> Any:
    from agentflan.eval.engines import HFEngine, OpenAIEngine, VLLMEngine

    kind = engine_name if engine_name != "auto" else ("openai" if base_url else "hf")
    if kind == "openai":
        if not base_url or not model:
            raise click.UsageError("an endpoint needs --base-url and --model (the model name it serves)")
        from agentflan.client import ClientConfig

        return OpenAIEngine(ClientConfig(base_url=base_url, model=model, concurrency=concurrency, timeout_s=timeout_s,
                                         retries=retries, cache=cache), max_tokens=max_new_tokens)
    if not model:
        raise click.UsageError("--model FOLDER is required (a folder `agentflan train` wrote, e.g. runs/x/merged)")
    if kind == "vllm":
        return VLLMEngine(model, max_new_tokens=max_new_tokens)
    return HFEngine(model, batch_size=batch_size, max_new_tokens=max_new_tokens, device=device, dtype=dtype)


def default_protocols(engine: Any, env: str, chosen: tuple[str, ...]) -> list[str]:
    if chosen:
        return list(chosen)
    info = getattr(engine, "info", None)
    return info.episode_protocols(env) if info is not None else ["native"]


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
             list_protocols: bool, db_engine: str) -> None:
    """Play held-out tasks of SUITES (toolapi, db; default both; also agent-h, steps, bfcl, bfcl-multi, teval) and score them.

    Each (suite, protocol) run is logged to OUTPUT/<suite>-<protocol>/episodes.jsonl with every
    transcript, and summarized (success ± s.e., by task kind, parse failures, invalid actions,
    errors apart). Re-running the same command resumes; `agentflan score OUTPUT` re-scores.
    """
    from agentflan.formats.protocols import protocol_names

    if list_protocols:
        click.echo("\n".join(protocol_names()))
        return
    from agentflan.eval.envs import ENV_SUITES
    from agentflan.eval.suites import SUITES

    suites = suites or ENV_SUITES
    unknown = [s for s in suites if s not in (*ENV_SUITES, *SUITES)]
    if unknown:
        raise click.UsageError(f"unknown suite(s) {', '.join(unknown)} (known: {', '.join((*ENV_SUITES, *SUITES))})")
    try:
        code = _run_eval(suites, model, base_url, engine_name, protocols, batch_size, max_new_tokens, device, dtype,
                         concurrency, timeout_s, retries, policy, count, split, seed, tasks_file, max_steps, output,
                         not no_resume, db_engine, predictions)
    except AgentflanError as e:
        raise click.ClickException(str(e)) from e
    if code:
        sys.exit(code)


def _run_eval(suites: tuple[str, ...], model: str | None, base_url: str | None, engine_name: str,
              protocols: tuple[str, ...], batch_size: int, max_new_tokens: int, device: str, dtype: str,
              concurrency: int, timeout_s: float, retries: int, policy: str, count: int, split: str, seed: int,
              tasks_file: Path | None, max_steps: int, output: Path | None, resume: bool, db_engine: str = "sqlite",
              predictions: Path | None = None, *, run_name: str | None = None,
              suite_protocols: dict[str, list[str]] | None = None, suite_counts: dict[str, int] | None = None) -> int:
    """`agentflan eval` (see its help). `run_name` names the run (default: from the model);
    `suite_protocols` and `suite_counts` give some suites protocols and sizes of their own (the
    others take `protocols` and `count`)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from agentflan.eval.envs import load_tasks, model_agent, run_env, scripted_agent
    from agentflan.eval.suites import SUITES, chart, run_suite, safe_name, table
    from agentflan.io.files import write_atomic
    from agentflan.pipeline.build import versions

    name = policy if policy != "model" else safe_name(Path(model or "model").name if not base_url else f"{model}")
    if policy == "model" and not base_url and model and Path(model).name in ("final", "merged"):
        name = safe_name(f"{Path(model).parent.name}-{Path(model).name}")
    if predictions is not None:
        name = safe_name(predictions.stem)
    if run_name is not None:
        name = run_name
    out = output or Path("out/eval") / name
    engine = None
    if policy == "model" and predictions is None:  # an endpoint's answers are cached in the output folder
        engine = make_engine(model, base_url, engine_name, batch_size=batch_size, max_new_tokens=max_new_tokens,
                             device=device, dtype=dtype, concurrency=concurrency, timeout_s=timeout_s, retries=retries,
                             cache=str(out / "requests.jsonl"))
    plan: list[tuple[str, str, list[Any]]] = []
    for env in suites:
        if env in SUITES:
            plan.append((env, "", []))
            continue
        tasks = load_tasks(env, split=split, n=(suite_counts or {}).get(env, count), seed=seed,
                           tasks_file=tasks_file if env == "db" else None)
        chosen = tuple((suite_protocols or {}).get(env, protocols))
        for proto_name in (default_protocols(engine, env, chosen) if engine is not None else [policy]):
            plan.append((env, proto_name, tasks))
    runs: list[Any] = []
    base_config = {"model": model, "base_url": base_url, "policy": policy, "split": split, "seed": seed,
                   "db_engine": db_engine,
                   "tasks_file": str(tasks_file) if tasks_file else None, "max_new_tokens": max_new_tokens,
                   "engine": engine.describe() if engine is not None else None, "versions": versions()}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=_stderr_console(), transient=False) as bar:
        for env, proto_name, tasks in plan:
            if env in SUITES:  # the single-action suites: each runs its protocols itself
                for srun in run_suite(env, engine=engine, policy=policy,
                                      protocols=list((suite_protocols or {}).get(env, protocols)),
                                      n=(suite_counts or {}).get(env, count),
                                      seed=seed, tasks_file=tasks_file, out_root=out, agent_name=name,
                                      base_config=base_config, resume=resume, predictions=predictions,
                                      progress=lambda label, total: _advance(bar, bar.add_task(label, total=total))):
                    srun.summary["run"] = name
                    runs.append(srun)
                continue
            task_bar = bar.add_task(f"{env} / {proto_name}", total=len(tasks))
            if engine is None:
                agent_for, pname = scripted_agent(policy, env, seed, db_engine), policy
            else:
                proto, agent_for = model_agent(proto_name, getattr(engine, "template", None))
                pname = proto.name
            run = run_env(env, tasks, agent_for, engine, out / f"{env}-{safe_name(pname)}", protocol_name=pname,
                          agent_name=name, config={**base_config, "n": len(tasks)}, max_steps=max_steps, resume=resume,
                          db_engine=db_engine if env == "db" else "sqlite",
                          progress=_advance(bar, task_bar))
            run.summary["run"] = name
            runs.append(run)
    click.echo(table([r.summary for r in runs]))
    # the folder's summary covers every run in it: runs of earlier commands into the same folder stay
    index = out / "summary.json"
    entries = [{"dir": str(r.out), **r.summary} for r in runs]
    if index.exists():
        this = {e["dir"] for e in entries}
        earlier = json.loads(index.read_text()).get("runs", [])
        entries = [e for e in earlier if e.get("dir") not in this and (Path(e["dir"]) / "episodes.jsonl").exists()] + entries
    write_atomic(index, json.dumps({"runs": entries}, indent=2) + "\n")
    summaries = [{k: v for k, v in e.items() if k != "dir"} for e in entries]
    md = table(summaries)
    png = chart(summaries, out / "summary.png")
    write_atomic(out / "summary.md", f"# agentflan eval: {name}\n\n{md}\n" + (f"![success]({png.name})\n" if png else ""))
    click.echo(f"logs and summaries: {out}/ (summary.md" + (", summary.png" if png else "") + ")")
    errors = sum(r.summary["errors"] for r in runs)  # this command's runs decide its exit status
    if errors:
        example = next((e for r in runs for e in r.summary["error_examples"]), "")
        if not sum(r.summary["scored"] for r in runs):  # an unreachable endpoint: no work done, not partial
            raise RunFailed(f"every one of the {errors} episode(s) ended in an error (failed requests), none was "
                            f"scored, e.g. {example}; the logs are in {out}/, run the same command again to resume")
        click.echo(f"{errors} episode(s) ended in errors (failed requests), not counted as answers, e.g. {example}\n"
                   "run the same command again to resume them", err=True)
        return EXIT_PARTIAL
    return 0


def _advance(bar: Any, task: Any) -> Any:
    return lambda k: bar.advance(task, k)


def _stderr_console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def find_logs(paths: tuple[Path, ...]) -> list[Path]:
    logs: list[Path] = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.rglob("episodes.jsonl"))
            if not found:
                raise ConfigError(f"{p}: no episodes.jsonl below it")
            logs += found
        elif p.is_file():
            logs.append(p)
        else:
            raise ConfigError(f"{p} does not exist")
    return logs


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

    try:
        scored, mismatches = rescore_logs(find_logs(paths), warn=lambda line: click.echo(line, err=True))
        rows = [] if no_paired else pair_runs(scored, baseline)
    except AgentflanError as e:
        raise click.ClickException(str(e)) from e
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
