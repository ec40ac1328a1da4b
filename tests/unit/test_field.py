"""`bench/field.py`: several models on the field's own benchmarks (BFCL, T-Eval, AgentBench DB),
paired. Played here on small files in each benchmark's own format by the scripted expert (every
verdict known: it passes everything) and a random two-layer model folder, which the report pairs
item by item."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import teval_review_file

BENCH = Path(__file__).resolve().parents[2] / "bench"
AREA = {"name": "calc.area", "description": "Area of a triangle.",
        "parameters": {"type": "dict", "properties": {"base": {"type": "integer", "description": "base"},
                                                       "height": {"type": "integer", "description": "height"}},
                       "required": ["base", "height"]}}


def _bfcl(folder: Path, per: int = 3) -> None:
    """BFCL's four default question files (and their possible answers), `per` items each."""
    (folder / "possible_answer").mkdir(parents=True)
    for cat in ("simple_python", "multiple", "parallel", "irrelevance"):
        items, answers = [], []
        for i in range(per):
            ask = f"{cat}: area of {i + 2} by 5" + (" twice" if cat == "parallel" else "")
            items.append({"id": f"{cat}_{i}", "question": [[{"role": "user", "content": ask}]],
                          "function": [AREA]})
            gt = [{"calc.area": {"base": [i + 2], "height": [5]}}]
            answers.append({"id": f"{cat}_{i}", "ground_truth": gt * (2 if cat == "parallel" else 1)})
        name = f"BFCL_v4_{cat}.json"
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in items))
        if cat != "irrelevance":
            (folder / "possible_answer" / name).write_text("".join(json.dumps(r) + "\n" for r in answers))


def _dbbench(path: Path, n: int = 3) -> None:
    """AgentBench dbbench SELECT tasks (its dev.jsonl's fields)."""
    rows = [["alpha", "1"], ["beta", "2"], ["gamma", "3"]]
    recs = [{"description": f"What is the Name whose Count is {i + 1}?", "label": [rows[i][0]],
             "type": ["other"], "sql": {"query": f"SELECT Name FROM T WHERE Count = '{i + 1}'"},
             "table": {"table_name": "T", "table_info": {"columns": [{"name": "Name", "type": "TEXT"},
                                                                     {"name": "Count", "type": "TEXT"}],
                                                         "rows": rows}}} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _tiny(folder: Path) -> Path:
    from agentflan.training.models import tiny_model, tiny_tokenizer

    tok = tiny_tokenizer(["calc.area(base=2, height=5)", "Answer: A", "SELECT Name FROM T"])
    tiny_model(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _field(tmp: Path, *args: str, teval: bool = True) -> subprocess.CompletedProcess[str]:
    src = str(BENCH.parent / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
           "AGENTFLAN_BFCL_DATA": str(tmp / "bfcl"),
           "AGENTFLAN_TEVAL_DATA": str(tmp / ("teval" if teval else "none")),
           "AGENTFLAN_TEVAL_MODEL": str(tmp / "no-model"), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, str(BENCH / "field.py"), *args], env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def played(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("field")
    _bfcl(tmp / "bfcl")
    teval_review_file(tmp / "teval")
    _dbbench(tmp / "dev.jsonl")
    res = _field(tmp, "--model", "gold=policy:expert", "--model", f"tiny={_tiny(tmp / 'tiny')}", "--pair", "gold:tiny",
                 "--bfcl-n", "12", "--teval-n", "4", "--dbbench", str(tmp / "dev.jsonl"), "-o", str(tmp / "out"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp, res


def test_every_model_plays_every_benchmark_and_the_report_pairs_them(played):
    tmp, _ = played
    md = (tmp / "out" / "results.md").read_text()
    rows = json.loads((tmp / "out" / "paired.json").read_text())
    overall = {(r["group"], r["metric"]): r for r in rows if r["stratum"] == "all"}
    assert {(r["a"], r["b"]) for r in rows} == {("gold", "tiny")}
    # the same items on both sides: BFCL's 12 (3 per category), the T-Eval file's 4, the dbbench file's 3
    assert overall[("bfcl", "accuracy")]["n"] == 12 and overall[("bfcl", "accuracy")]["mean_a"] == 1.0
    assert overall[("db", "success")]["n"] == 3 and overall[("db", "success")]["mean_a"] == 1.0
    teval = [r for (g, _), r in overall.items() if g.startswith("teval")]
    assert teval and all(r["n"] == 4 for r in teval)
    assert "| bfcl (bfcl) | 100.0 (n 12) |" in md and "| dbbench | 100.0 (n 3) |" in md
    assert "| teval/review_str | 100.0 (n 4) |" in md
    assert "Paired, gold - tiny" in md and (tmp / "out" / "field.png").is_file()


def test_the_report_is_rebuilt_from_the_logs_and_a_rerun_resumes(played):
    tmp, _ = played
    before = (tmp / "out" / "results.md").read_text()
    again = _field(tmp, "--report-only", "--pair", "gold:tiny", "-o", str(tmp / "out"))
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.strip() == before.strip() == (tmp / "out" / "results.md").read_text().strip()
    logs = {p: p.read_bytes() for p in sorted((tmp / "out").glob("*/*/episodes.jsonl"))}
    assert len(logs) == 6  # 2 models x (bfcl, teval review_str, dbbench)
    rerun = _field(tmp, "--model", "gold=policy:expert", "--pair", "gold:tiny", "--bfcl-n", "12", "--teval-n", "4",
                   "--dbbench", str(tmp / "dev.jsonl"), "-o", str(tmp / "out"))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert (tmp / "out" / "results.md").read_text() == before  # every model's logs are read, not only those played
    assert {p: p.read_bytes() for p in logs} == logs  # resumed: nothing played again
    log = tmp / "out" / "gold" / "bfcl-bfcl" / "episodes.jsonl"
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    recs[0]["verdict"]["valid"] = not recs[0]["verdict"]["valid"]  # a doctored verdict stops the report
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    bad = _field(tmp, "--report-only", "-o", str(tmp / "out"))
    assert bad.returncode != 0 and "differ from the re-scored ones" in bad.stderr


def test_missing_data_is_named_and_an_explicit_suite_without_data_fails(tmp_path):
    _bfcl(tmp_path / "bfcl", per=1)
    res = _field(tmp_path, "--model", "gold=policy:expert", "--bfcl-n", "4", "--dbbench", str(tmp_path / "none.jsonl"),
                 "-o", str(tmp_path / "out"), teval=False)
    assert res.returncode == 0, res.stderr[-3000:]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "Left out: " in md and "no T-Eval data file" in md and "no AgentBench dbbench file" in md
    res = _field(tmp_path, "--model", "gold=policy:expert", "--suite", "bfcl-multi", "-o", str(tmp_path / "o2"))
    assert res.returncode != 0 and "multi-turn files are not in" in res.stderr
    (tmp_path / "teval").mkdir()
    (tmp_path / "teval" / "plan_json_v1.json").write_text("{}")  # scored with the sentence model only
    res = _field(tmp_path, "--model", "gold=policy:expert", "--suite", "teval", "-o", str(tmp_path / "o4"))
    assert res.returncode != 0 and "none of the T-Eval files" in res.stderr and "sentence model" in res.stderr
    res = _field(tmp_path, "--model", "gold", "-o", str(tmp_path / "o3"))
    assert res.returncode == 2 and "NAME=PATH" in res.stderr
    res = _field(tmp_path, "--report-only", "--pair", "gold:nobody", "-o", str(tmp_path / "out"))
    assert res.returncode != 0 and "no model 'nobody'" in res.stderr
