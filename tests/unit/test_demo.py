"""`agentflan demo` end to end on the tiny model: both arms built, trained, evaluated in the protocols
they were trained with, a report whose numbers the logs reproduce, and a second run that does nothing
twice."""

import json
import re

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.eval.score import pct

pytest.importorskip("trl")

ARGS = ["--model", "tiny", "--steps", "3", "--eval-tasks", "2", "--agent-h-items", "4"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    res = CliRunner().invoke(cli, ["demo", "-o", str(out), *ARGS])
    assert res.exit_code == 0, res.output
    return out, res.output


def test_demo_trains_both_arms_and_evaluates_each_in_its_protocols(demo):
    out, output = demo
    assert "agenttuning: toolapi in toolllama; db in agentinstruct:db" in output  # progress names what runs
    for arm in ("agent-flan", "agenttuning"):
        assert (out / "runs" / arm / "final" / "model.safetensors").exists()
        assert json.loads((out / "runs" / arm / "metrics.json").read_text())["global_step"] == 3
    runs = {p.parent.name + "/" + p.name for p in (out / "eval").glob("*/*") if p.is_dir()}
    assert {"agent-flan/toolapi-tflan", "agent-flan/db-agentinstruct_db", "agenttuning/toolapi-toolllama",
            "agenttuning/db-agentinstruct_db", "agent-flan/agent-h-react", "agenttuning/agent-h-tflan_inline"} <= runs
    assert not any(r.startswith("agenttuning/") and "tflan" in r and "agent-h" not in r for r in runs)
    trained = json.loads((out / "runs" / "agenttuning" / "metrics.json").read_text())["data"]["protocols"]
    assert set(trained) == {"toolllama", "agentinstruct:db"}  # original formats only: no chat, no negatives
    for png in ("eval", "env_kinds", "loss", "tokens"):
        assert (out / f"{png}.png").stat().st_size > 1000


def test_report_numbers_are_what_score_derives_from_the_logs(demo):
    out, _ = demo
    report = (out / "report.md").read_text()
    res = CliRunner().invoke(cli, ["score", str(out / "eval"), "--json"])
    assert res.exit_code == 0, res.output
    summaries = json.loads(res.output[res.output.index("{"):])["runs"]
    envs = [s for s in summaries if s["suite"] == "env"]
    assert len(envs) == 4  # each arm: toolapi in its protocol, db in AgentBench's dialect
    for s in envs:
        row = f"| {s['run']} | {s['env']} | `{s['protocol']}` | {s['scored']} | {pct(s['success'])} |"
        assert row in report, row
    for arm in ("agent-flan", "agenttuning"):
        assert re.search(rf"^\| {arm} \| [\d.-]+ \| [\d.-]+ \| [\d.-]+ \|", report, re.M), arm
    html = (out / "report.html").read_text()
    assert "<table>" in html and "data:image/png;base64," in html and "<h2>Agent-H" in html


def test_a_second_run_does_no_work_twice(demo):
    out, _ = demo
    before = (out / "report.md").read_text()
    res = CliRunner().invoke(cli, ["demo", "-o", str(out), *ARGS])
    assert res.exit_code == 0, res.output
    stages = ["episodes", "data-agent-flan", "data-agenttuning", "train-agent-flan", "train-agenttuning",
              "eval-agent-flan", "eval-agenttuning"]
    assert all(f"{s}: done before" in res.output for s in stages), res.output
    assert "Loading weights" not in res.output
    assert (out / "report.md").read_text().split("## Time per stage")[0] == before.split("## Time per stage")[0]
