"""The command line's contract, table-driven: every numeric option's bounds (refused with exit 2 and
the allowed range, before any work; the boundary itself accepted) and every row of README's exit
status table, one or more commands per row.

`test_every_numeric_option_is_in_the_table` walks the whole command tree, so an option added later
without bounds (or without a row here) fails this file.
"""

from __future__ import annotations

import errno
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.errors import EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, EXIT_RUNTIME, EXIT_USAGE
from tests.helpers import write_jsonl

GOOD = {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]}
README = Path(__file__).resolve().parents[2] / "README.md"

# (command, required arguments, option, values refused, the range the message states, a value accepted)
BOUNDS: list[tuple[str, tuple[str, ...], str, tuple[str, ...], str, str]] = [
    ("data convert", ("in.jsonl", "-o", "o.jsonl"), "--max-reject", ("-0.1", "1.5", "x"), "0<=x<=1", "0"),
    ("data convert", ("in.jsonl", "-o", "o.jsonl"), "--workers", ("0", "-1"), "x>=1", "1"),
    ("data inspect", ("in.jsonl",), "--index", ("-1",), "x>=0", "0"),
    ("data inspect", ("in.jsonl",), "--max-chars", ("-1",), "x>=0", "0"),
    ("data tokenize", ("in.jsonl", "-o", "o.jsonl", "--tokenizer", "tiny"), "--max-length", ("0", "-5"), "x>=1", "1"),
    ("data build", ("builtin", "-o", "out"), "--workers", ("0", "-1"), "x>=1", "1"),
    ("data build", ("builtin", "-o", "out"), "--max-reject", ("2", "-1"), "0<=x<=1", "1"),
    ("env synth", ("toolapi", "-o", "o.jsonl"), "--n", ("0", "-1"), "x>=1", "1"),
    ("env synth", ("toolapi", "-o", "o.jsonl"), "--seed", ("-1", str(2**32)), "0<=x<=4294967295", "0"),
    ("env play", ("toolapi",), "--index", ("-1",), "x>=0", "0"),
    ("env play", ("toolapi",), "--seed", ("-1",), "0<=x<=4294967295", "4294967295"),
    ("env play", ("toolapi",), "--batch-size", ("0",), "x>=1", "1"),
    ("env play", ("toolapi",), "--max-new-tokens", ("0",), "x>=1", "1"),
    ("env play", ("toolapi",), "--concurrency", ("0", "257"), "1<=x<=256", "1"),
    ("env play", ("toolapi",), "--timeout", ("0", "-1"), "x>0", "0.001"),
    ("env play", ("toolapi",), "--retries", ("-1",), "x>=0", "0"),
    ("eval", ("toolapi",), "--n", ("0", "-1"), "x>=1", "1"),
    ("eval", ("toolapi",), "--seed", ("-1",), "0<=x<=4294967295", "0"),
    ("eval", ("toolapi",), "--max-steps", ("0", "-3"), "x>=1", "1"),
    ("eval", ("toolapi",), "--batch-size", ("0",), "x>=1", "1"),
    ("eval", ("toolapi",), "--max-new-tokens", ("0",), "x>=1", "1"),
    ("eval", ("toolapi",), "--concurrency", ("0", "-2"), "1<=x<=256", "256"),
    ("eval", ("toolapi",), "--timeout", ("-1", "0"), "x>0", "0.5"),
    ("eval", ("toolapi",), "--retries", ("-1",), "x>=0", "0"),
    ("train", ("tiny-cpu-smoke",), "--num-processes", ("0", "-1"), "x>=1", "1"),
    ("demo", (), "--steps", ("0",), "x>=1", "1"),
    ("demo", (), "--eval-tasks", ("0",), "x>=1", "1"),
    ("demo", (), "--train-tasks", ("0",), "x>=1", "1"),
    ("demo", (), "--agent-h-items", ("0",), "x>=1", "1"),
    ("demo", (), "--seed", ("-1",), "0<=x<=4294967295", "0"),
]
OWNED_ELSEWHERE = {"serve"}
"""Commands whose options another table covers (`tests/unit/test_serve.py`)."""


def _command(path: str) -> click.Command:
    cmd: click.Command = cli
    for part in path.split():
        assert isinstance(cmd, click.Group)
        cmd = cmd.commands[part]
    return cmd


def _option(path: str, flag: str) -> click.Option:
    for p in _command(path).params:
        if isinstance(p, click.Option) and flag in p.opts:
            return p
    raise AssertionError(f"{path} has no option {flag}")


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out: list[tuple[str, click.Command]] = []
    for name, cmd in group.commands.items():
        path = f"{prefix} {name}".strip()
        if isinstance(cmd, click.Group):
            out += _commands(cmd, path)
        else:
            out.append((path, cmd))
    return out


def test_every_numeric_option_is_in_the_table():
    listed = {(cmd, flag) for cmd, _, flag, *_ in BOUNDS}
    found = set()
    for path, cmd in _commands(cli):
        if path.split()[0] in OWNED_ELSEWHERE:
            continue
        for p in cmd.params:
            if not isinstance(p, click.Option) or p.is_flag:
                continue
            if isinstance(p.type, (click.IntRange, click.FloatRange)):
                found.add((path, next(o for o in p.opts if o.startswith("--"))))
            else:  # a bare int or float takes 0 and negatives: every number needs its range
                assert p.type not in (click.INT, click.FLOAT), f"{path} {p.opts}: a number without a range"
    assert found == listed, (found - listed, listed - found)


@pytest.mark.parametrize(("command", "required", "flag", "bad", "shown", "ok"), BOUNDS,
                         ids=[f"{c.replace(' ', '-')}{f}" for c, _, f, *_ in BOUNDS])
def test_an_option_out_of_range_is_a_usage_error_naming_the_range(tmp_path, monkeypatch, command, required, flag,
                                                                   bad, shown, ok):
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, not in the checkout
    for value in bad:
        res = CliRunner().invoke(cli, [*command.split(), *required, flag, value])
        assert res.exit_code == EXIT_USAGE, (value, res.exit_code, res.output)
        assert flag in res.output and (shown in res.output or "is not a valid" in res.output), res.output
        assert "Traceback" not in res.output
    assert not any(tmp_path.iterdir())  # refused before any work
    opt = _option(command, flag)
    assert opt.type.convert(ok, opt, None) is not None  # the bound itself is allowed


# ---- README's exit status table, one test per row ------------------------------------------------

def test_the_readme_table_is_the_one_tested():
    rows = re.findall(r"^\| (\d+) \| (\w+)", README.read_text(encoding="utf-8"), re.M)
    assert {int(code) for code, _ in rows} == {EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_PARTIAL, EXIT_INPUT,
                                               EXIT_INTERRUPTED}


def _one_line(res, code: int, *fragments: str) -> str:
    assert res.exit_code == code, (res.exit_code, res.output)
    lines = res.stderr.strip().splitlines()  # a progress bar may come before it
    err = [line for line in lines if line.startswith("agentflan: error: ")]
    assert len(err) == 1 and lines[-1] == err[0], res.stderr
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in err[0], (f, err[0])
    return err[0]


def test_row_0_success(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", [GOOD])
    res = CliRunner().invoke(cli, ["data", "convert", str(src), "-o", str(tmp_path / "o.jsonl")])
    assert res.exit_code == EXIT_OK and res.stderr == "", res.output


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("command", ["eval", "env play"])
def test_row_1_an_unreachable_endpoint(tmp_path, command):
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    args = (["eval", "toolapi", "-n", "2", "-o", str(tmp_path / "ev")] if command == "eval"
            else ["env", "play", "toolapi", "--policy", "model"])
    res = CliRunner().invoke(cli, [*args, "--base-url", url, "--model", "m", "--retries", "0"])
    _one_line(res, EXIT_RUNTIME, "cannot connect", url)


def test_row_1_a_full_disk_names_the_file(tmp_path, monkeypatch):
    from agentflan.io.writers.base import JsonSink

    src = write_jsonl(tmp_path / "in.jsonl", [GOOD] * 3)
    out = tmp_path / "o.jsonl"

    def full(self, data: bytes) -> None:  # what write(2) says on a full disk: no file named
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(JsonSink, "add_bytes", full)
    res = CliRunner().invoke(cli, ["data", "convert", str(src), "-o", str(out)])
    _one_line(res, EXIT_RUNTIME, f"{out}: No space left on device while writing it")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no temporary, no empty output


def test_row_1_an_internal_error_says_bug(tmp_path, monkeypatch):
    import agentflan.cli.data as data_cli

    def broken(*a, **k):
        raise ValueError("boom")

    monkeypatch.setattr(data_cli, "convert", broken)
    res = CliRunner().invoke(cli, ["data", "convert", str(tmp_path / "x.jsonl"), "-o", str(tmp_path / "o.jsonl")])
    _one_line(res, EXIT_RUNTIME, "internal error ValueError: boom", "--debug")


@pytest.mark.parametrize("args", [["data", "convert", "--nope"], ["data", "convert"], ["env", "synth"],
                                  ["data", "convert", "x", "-o", "y", "--max-reject", "7"],
                                  ["eval", "toolapi", "--timeout", "-1"], ["nosuchcommand"]])
def test_row_2_usage(args):
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == EXIT_USAGE, res.output
    assert "Traceback" not in res.output


def test_row_3_partial_convert(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [GOOD] * 3)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": 5}])
    res = CliRunner().invoke(cli, ["data", "convert", str(good), str(bad), "--from", "openai",
                                   "-o", str(tmp_path / "o.jsonl")])
    _one_line(res, EXIT_PARTIAL, f"every record of {bad} was rejected", "the output holds the rest")
    res = CliRunner().invoke(cli, ["data", "convert", str(good), str(bad), "--from", "openai", "--max-reject", "0.2",
                                   "-o", str(tmp_path / "o.jsonl")])
    _one_line(res, EXIT_PARTIAL, "more than --max-reject 0.2")


class _HalfBroken(BaseHTTPRequestHandler):
    """Answers every other request with a 400: half the episodes end in errors, half are scored."""

    calls = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            type(self).calls += 1
            fail = self.calls % 2 == 1
        body = (b'{"error": "no"}' if fail else json.dumps(
            {"choices": [{"message": {"role": "assistant", "content": "I do not know."}}]}).encode())
        self.send_response(400 if fail else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a: object) -> None:
        pass


def test_row_3_partial_eval(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _HalfBroken)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        res = CliRunner().invoke(cli, ["eval", "toolapi", "-n", "2", "--max-steps", "1", "--concurrency", "1",
                                       "--retries", "0", "--base-url", f"http://127.0.0.1:{server.server_address[1]}/v1",
                                       "--model", "m", "-o", str(tmp_path)])
    finally:
        server.shutdown()
    assert res.exit_code == EXIT_PARTIAL, res.output
    assert "1 episode(s) ended in errors" in res.stderr and "HTTP 400" in res.stderr


@pytest.mark.parametrize("args, fragments", [
    (["data", "convert", "missing.jsonl", "-o", "o.jsonl"], ["missing.jsonl"]),
    (["env", "play", "nope"], ["unknown environment 'nope'"]),
    (["data", "build", "agent-flan", "-o", "out", "--dry-run", "vars.data_dri=x"], ["vars.data_dri", "did you mean"]),
    (["data", "build", "agent-flam", "-o", "out", "--dry-run"], ["agent-flam", "did you mean"]),
    (["train", "tiny-cpu-smok", "--dry-run"], ["tiny-cpu-smok", "did you mean tiny-cpu-smoke"]),
])
def test_row_4_input(tmp_path, monkeypatch, args, fragments):
    monkeypatch.chdir(tmp_path)
    _one_line(CliRunner().invoke(cli, args), EXIT_INPUT, *fragments)


def test_row_4_recipe_names_stay_in_the_packaged_folder_and_yaml_errors_name_the_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(cli, ["train", "../data/agent-flan", "--dry-run"])  # exists beside recipes/train/
    _one_line(res, EXIT_INPUT, "no training recipe '../data/agent-flan'", "packaged: ")
    res = CliRunner().invoke(cli, ["train", "tiny-cpu-smoke", "data.paths=[]", "--dry-run"])
    _one_line(res, EXIT_INPUT, "data.paths: no training data given")
    (tmp_path / "syntax.yaml").write_text("name: x\ndata:\n  paths: [a\noutput_dir: o\n")
    (tmp_path / "tag.yaml").write_text("name: x\nmodel: !!python/object:os.system x\n")
    for cmd in (["train"], ["data", "build"]):
        extra = ["-o", "out"] if cmd[0] == "data" else []
        res = CliRunner().invoke(cli, [*cmd, str(tmp_path / "syntax.yaml"), *extra, "--dry-run"])
        _one_line(res, EXIT_INPUT, f"{tmp_path / 'syntax.yaml'}:4:11: not valid YAML", "opened at line 3")
        res = CliRunner().invoke(cli, [*cmd, str(tmp_path / "tag.yaml"), *extra, "--dry-run"])
        _one_line(res, EXIT_INPUT, f"{tmp_path / 'tag.yaml'}:2:8: not valid YAML", "python/object")
        res = CliRunner().invoke(cli, [*cmd, "tiny-cpu-smoke" if cmd[0] == "train" else "builtin", *extra,
                                       "output_dir=[", "--dry-run"])
        _one_line(res, EXIT_INPUT, "override 'output_dir=['", "not valid a YAML value")
    res = CliRunner().invoke(cli, ["data", "build", "agent-flan", "-o", "out", "--dry-run", "vars.data_dri=x",
                                   "vars.data_dir=y"])
    _one_line(res, EXIT_INPUT, "vars.data_dri: unknown variable 'data_dri'", "did you mean data_dir?")
    res = CliRunner().invoke(cli, ["data", "build", "agent-flan", "-o", "out", "--dry-run", "vars.data_dir=y",
                                   "vars.extra=z", "sources.toolbench.paths=${extra}/x.json"])
    assert res.exit_code == 0, res.output  # a new variable that an override uses is no typo
    assert not (tmp_path / "out").exists()


def test_row_4_every_record_rejected(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": 5}, {"x": 1}])
    res = CliRunner().invoke(cli, ["data", "convert", str(bad), "--from", "openai", "-o", str(tmp_path / "o.jsonl")])
    _one_line(res, EXIT_INPUT, "every one of the 2 records was rejected")
    assert not (tmp_path / "o.jsonl").exists()


def test_row_4_no_record_writable_writes_and_registers_nothing(tmp_path, sample_data):
    info = tmp_path / "lf" / "dataset_info.json"
    out = tmp_path / "lf" / "db.json"
    tasks = sample_data / "agentbench" / "dbbench" / "dev.jsonl"
    n = len(tasks.read_text().splitlines())
    res = CliRunner().invoke(cli, ["data", "convert", str(tasks),
                                   "--to", "sharegpt", "-o", str(out), "--dataset-info", str(info)])
    _one_line(res, EXIT_INPUT, f"none of the {n} converted records can be written as sharegpt (no_assistant_turn {n})",
              "nothing was added to the dataset_info")
    assert not out.exists() and not info.exists()


@pytest.mark.parametrize(("signal_name", "code"), [("SIGINT", EXIT_INTERRUPTED), ("SIGTERM", 143)])
def test_row_130_interrupted(tmp_path, monkeypatch, signal_name, code):
    import signal

    import agentflan.cli.data as data_cli
    from agentflan.cli.main import Interrupted

    def interrupted(*a, **k):
        raise KeyboardInterrupt if signal_name == "SIGINT" else Interrupted(signal.SIGTERM)

    monkeypatch.setattr(data_cli, "convert", interrupted)
    res = CliRunner().invoke(cli, ["data", "convert", str(tmp_path / "x.jsonl"), "-o", str(tmp_path / "o.jsonl")])
    _one_line(res, code, f"interrupted ({signal_name})", "temporary files were removed")
