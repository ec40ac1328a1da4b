"""The verdict's study command (`bench/reproduce.py`) end to end on CPU with the tiny model, through
the GPU kit's run path (`bench/gpu_kit.py stage --run`), as it runs on the GPU machine; and its
dry run (the plan and its budget)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _env(tmp: Path) -> dict[str, str]:
    src = str(BENCH.parent / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
            "AGENTFLAN_KIT": str(tmp / "stage"), "OUT": str(tmp / "out"), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study")
    (tmp / "kit" / "wheels").mkdir(parents=True)
    res = subprocess.run([sys.executable, str(BENCH / "gpu_kit.py"), "stage", "--run", "--kit", str(tmp / "kit"),
                          "--", "--preset", "tiny", "--seeds", "0", "1", "--study", "main", "--steps", "2",
                          "--eval-tasks", "3", "--agent-h-items", "4"],
                         env=_env(tmp), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp


def test_the_study_runs_through_the_kit_and_reports_paired_results(study):
    out = study / "out"
    md = (out / "results.md").read_text()
    assert "### Paired, pooled over the seeds" in md and "### Paired, per seed" in md
    assert "Paired, agent-flan - agenttuning: the difference is" in md
    rows = json.loads((out / "paired.json").read_text())
    env_rows = [r for r in rows if r["group"] in ("toolapi", "db") and r["stratum"] == "all"]
    # pooled: each seed's 3 held-out tasks are their own items
    assert {r["n"] for r in env_rows} == {6} and {(r["a"], r["b"]) for r in rows} == {("agent-flan", "agenttuning")}
    assert any(r["metric"] == "hscore" for r in rows) and any(r["group"] == "steps" for r in rows)
    assert "exit 0" in (out / "wall.txt").read_text()
    for seed in ("seed-0", "seed-1"):
        assert "## Paired comparison" in (out / seed / "report.md").read_text()


def test_the_report_is_rebuilt_from_the_logs_alone(study):
    res = subprocess.run([sys.executable, str(BENCH / "reproduce.py"), "--preset", "tiny", "--study", "main",
                          "--report-only", "-o", str(study / "stage" / "study")],
                         env=_env(study), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == (study / "out" / "results.md").read_text().strip()


def test_the_dry_run_prints_the_plan_and_its_budget(tmp_path):
    res = subprocess.run([sys.executable, str(BENCH / "reproduce.py"), "--preset", "tiny", "--study", "main",
                          "--seeds", "0", "--dry-run", "-o", str(tmp_path / "s")],
                         env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "| agent-flan |" in res.stdout and "| agenttuning |" in res.stdout and "Per seed:" in res.stdout
    assert not (tmp_path / "s" / "seed-0" / "runs").exists()  # nothing trained


def test_grpo_on_top_of_an_arm_plays_the_same_tasks_and_is_paired_with_it(study, tmp_path):
    import shutil

    out = tmp_path / "study"
    shutil.copytree(study / "stage" / "study", out)  # the kit's study: seed 0 is trained and evaluated
    res = subprocess.run([sys.executable, str(BENCH / "reproduce.py"), "--preset", "tiny", "--study", "main",
                          "--seeds", "0", "--steps", "2", "--eval-tasks", "3", "--agent-h-items", "4",
                          "--rl", "agenttuning", "--rl-env", "db", "--rl-override", "rl.max_steps=1", "-o", str(out)],
                         env=_env(study), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads((out / "seed-0" / "runs" / "agenttuning-grpo" / "metrics.json").read_text())
    assert metrics["global_step"] == 1
    sys.path.insert(0, str(BENCH))
    try:
        from reproduce import sft_runs
    finally:
        sys.path.remove(str(BENCH))
    sft, rl = sft_runs(out / "seed-0", "agenttuning"), sft_runs(out / "seed-0", "agenttuning-grpo")
    assert [(c["env"], c["protocol"], c["tasks"], c["max_steps"], c["engine"]["max_new_tokens"]) for c in sft] == \
        [(c["env"], c["protocol"], c["tasks"], c["max_steps"], c["engine"]["max_new_tokens"]) for c in rl]
    # trained on db only (--rl-env), in the protocol the arm is played in there; played in both environments
    assert metrics["protocols"] == {c["env"]: c["protocol"] for c in sft if c["env"] == "db"}
    rows = [r for r in json.loads((out / "paired.json").read_text()) if r["stratum"] == "all"]
    grpo = {r["group"]: r["n"] for r in rows if (r["a"], r["b"]) == ("agenttuning-grpo", "agenttuning")}
    assert grpo == {"toolapi": 3, "db": 3}
    assert "Paired, agenttuning-grpo - agenttuning" in (out / "results.md").read_text()


def test_the_field_benchmarks_are_played_per_seed_and_paired_over_the_seeds(study, tmp_path):
    import shutil

    from tests.helpers import teval_review_file

    out = tmp_path / "study"
    shutil.copytree(study / "stage" / "study", out)  # the kit's study: seeds 0 and 1 trained and evaluated
    teval_review_file(tmp_path / "teval", 4)
    env = {**_env(study), "AGENTFLAN_TEVAL_DATA": str(tmp_path / "teval"), "AGENTFLAN_TEVAL_MODEL": str(tmp_path / "x")}
    res = subprocess.run([sys.executable, str(BENCH / "reproduce.py"), "--preset", "tiny", "--study", "main",
                          "--seeds", "0", "1", "--steps", "2", "--eval-tasks", "3", "--agent-h-items", "4",
                          "--field", "teval", "-o", str(out)], env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    for seed in ("seed-0", "seed-1"):
        for arm in ("agent-flan", "agenttuning"):
            assert (out / seed / "field" / arm / "teval-review_str" / "episodes.jsonl").is_file()
    rows = [r for r in json.loads((out / "field_paired.json").read_text()) if r["stratum"] == "all"]
    # pooled: each seed's 4 T-Eval items are their own items
    assert {(r["a"], r["b"], r["group"], r["n"]) for r in rows} == {("agent-flan", "agenttuning", "teval", 8)}
    md = (out / "results.md").read_text()
    assert "### The field's benchmarks, paired, pooled over the seeds" in md and "| teval/review_str |" in md
    main = json.loads((out / "paired.json").read_text())
    assert not any(r["group"] == "teval" for r in main)  # the study's own rows stay apart
