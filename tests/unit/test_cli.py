from __future__ import annotations

import json

from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.samples import write_samples


def test_convert_stats_inspect(tmp_path):
    raw = write_samples(tmp_path / "raw")
    runner = CliRunner()
    out = tmp_path / "n.jsonl"
    res = runner.invoke(cli, ["data", "convert", str(raw["toolllama.json"]), "-o", str(out),
                              "--report", str(tmp_path / "rep.json")])
    assert res.exit_code == 0, res.output
    assert "read 2 records from 1 file(s) as toolbench: 2 converted, 0 quarantined" in res.output
    rep = json.loads((tmp_path / "rep.json").read_text())
    assert rep["read"]["balanced"] and rep["write"]["written"] == 2

    res = runner.invoke(cli, ["data", "stats", str(out), "--json"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert stats["records"] == 2 and stats["tool_calls"] == 5 and stats["loss_bearing_turns"] == 5
    assert stats["per_source"]["toolbench"]["records"] == 2

    res = runner.invoke(cli, ["data", "stats", str(out)])
    assert res.exit_code == 0 and "per source" in res.output

    res = runner.invoke(cli, ["data", "inspect", str(out), "--index", "1", "--plain"])
    assert res.exit_code == 0, res.output
    assert "⟦First I need the number of days" in res.output
    assert "-> days_between(" in res.output


def test_convert_sharegpt_prints_dataset_info(tmp_path):
    raw = write_samples(tmp_path / "raw")
    res = CliRunner().invoke(cli, ["data", "convert", str(raw["openai_tools.jsonl"]), "--to", "sharegpt",
                                   "-o", str(tmp_path / "s.json")])
    assert res.exit_code == 0, res.output
    assert '"formatting": "sharegpt"' in res.output
    assert "lossy in sharegpt" in res.output
    info = tmp_path / "lf" / "dataset_info.json"
    info.parent.mkdir()
    info.write_text('{"theirs": {"file_name": "x.json"}}')
    res = CliRunner().invoke(cli, ["data", "convert", str(raw["openai_tools.jsonl"]), "--to", "sharegpt",
                                   "-o", str(tmp_path / "s.json"), "--dataset-info", str(info)])
    assert res.exit_code == 0, res.output
    entries = json.loads(info.read_text())
    assert entries["theirs"] == {"file_name": "x.json"} and entries["s"]["file_name"] == "../s.json"
    res = CliRunner().invoke(cli, ["data", "convert", str(raw["openai_tools.jsonl"]), "--to", "openai",
                                   "-o", str(tmp_path / "o.jsonl"), "--dataset-info", str(info)])
    assert res.exit_code != 0 and "no dataset_info entry" in res.output


def test_raise_policy_exits_with_the_location(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    res = CliRunner().invoke(cli, ["data", "convert", str(p), "--from", "react", "--on-error", "raise",
                                   "-o", str(tmp_path / "o.jsonl")])
    assert res.exit_code != 0
    assert f"{p}:1" in res.output and "messages[0].role" in res.output and "robot" in res.output


def test_reader_options_and_formats(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["data", "formats"])
    assert "toolbench" in res.output and "parquet" in res.output
    raw = write_samples(tmp_path / "raw")
    res = runner.invoke(cli, ["data", "convert", str(raw["react.jsonl"]), "--option", "dataset=hotpot",
                              "-o", str(tmp_path / "n.jsonl")])
    assert res.exit_code == 0, res.output
    assert '"dataset": "hotpot"' in (tmp_path / "n.jsonl").read_text()


def test_demo_runs_the_whole_loop(tmp_path):
    res = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path / "demo"), "--steps", "3"])
    assert res.exit_code == 0, res.output
    stats = json.loads((tmp_path / "demo" / "data" / "stats.json").read_text())
    assert stats["mix"]["records"] > 500 and all(s["quarantined"] == 0 for s in stats["sources"].values())
    assert (tmp_path / "demo" / "run" / "final" / "model.safetensors").exists()
    assert "300/300 verified" in res.output and "⟦" in res.output
