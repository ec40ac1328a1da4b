"""One Suite interface, one run type, one versioned log record, one run writer, a thin `eval`.

The toy suite below is defined and registered here and nowhere else: `agentflan eval`, `agentflan
score` and the paired comparison run it with no other edit (a new suite is one module and one
registration).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.errors import ConfigError
from agentflan.eval.runlog import LOG_VERSION, Exchange, Run, read_log, single_record
from agentflan.eval.suite import SUITES, SingleActionSuite, SuiteRequest, get_suite, suite_names
from agentflan.formats.protocols import Protocol
from agentflan.schema import AssistantMessage, Source, Trajectory, UserMessage

V0 = Path(__file__).parent / "runlog_v0"
"""Logs written by agentflan before records carried a version (a tiny model's demo evaluation, cut
to a few items), and `score.json`: what `agentflan score --json` printed for them then."""


# ---- a toy suite, registered from this module ----------------------------------------------------------------

class ToyItem:
    def __init__(self, i: int) -> None:
        self.id = f"toy-{i}"
        self.a, self.b = i, 2 * i + 1

    def trajectory(self) -> Trajectory:
        return Trajectory(id=self.id, source=Source(format="toy"),
                          messages=[UserMessage(content=f"What is {self.a} + {self.b}? Answer with the number.")])


def _answer(ex: Exchange) -> str:
    a = ex.action
    return (a.answer or "").strip() if a is not None and a.kind == "answer" else ""


class ToySuite(SingleActionSuite):
    """Sums: an answer is right when it is the sum."""

    name = "toy"
    default = ("bfcl",)  # a protocol in which a plain reply is an answer

    def items(self, req: SuiteRequest, proto: Protocol) -> tuple[list[Any], dict[str, Any]]:
        return [ToyItem(i) for i in range(req.n)], {}

    def gold(self, item: ToyItem) -> Trajectory:
        traj = item.trajectory()
        return traj.model_copy(update={"messages": [*traj.messages, AssistantMessage(content=str(item.a + item.b))]})

    def record(self, item: ToyItem, protocol: str, agent: str, ex: Exchange) -> dict[str, Any]:
        verdict = None if ex.error else {"right": _answer(ex) == str(item.a + item.b)}
        return single_record(self.name, protocol, agent, item.id, ex, sum=item.a + item.b, verdict=verdict)

    def rescore(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        from agentflan.eval.runlog import replay
        from agentflan.formats.protocols import conversation_key, get_protocol

        if rec.get("error") is not None:
            return None
        item = ToyItem(int(rec["task_id"].split("-")[1]))
        traj = item.trajectory()
        action = replay(get_protocol(rec["protocol"]), traj, conversation_key(traj), rec["completions"])
        return {"right": (action.answer or "").strip() == str(rec["sum"]) if action.kind == "answer" else False}

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        scored = [r for r in records if r.get("verdict") is not None]
        first = records[0] if records else {}
        return {"suite": self.name, "protocol": first.get("protocol"), "items": len(records), "scored": len(scored),
                "errors": len(records) - len(scored), "right": sum(r["verdict"]["right"] for r in scored),
                "error_examples": []}

    def table(self, summaries: list[dict[str, Any]]) -> str:
        return "\n".join(f"| {s.get('run')} | {s['right']}/{s['scored']} |" for s in summaries) + "\n"

    def outcomes(self, rec: dict[str, Any]) -> dict[tuple[str, str], float]:
        return {("right", "all"): float(rec["verdict"]["right"])}


TOY = ToySuite()


@pytest.fixture
def toy(monkeypatch):
    """The toy suite registered for one test (the registry has no unregister: its table is restored)."""
    monkeypatch.setattr(SUITES, "_targets", dict(SUITES._targets))
    monkeypatch.setattr(SUITES, "_docs", dict(SUITES._docs))
    SUITES.register("toy", f"{__name__}:TOY", "sums")
    return TOY


def test_a_suite_registered_here_runs_through_eval_score_and_paired(toy, tmp_path):
    from agentflan.eval.evaluate import EvalConfig, evaluate
    from agentflan.models.engines import ScriptedEngine

    assert "toy" in suite_names() and get_suite("toy") is TOY
    res = CliRunner().invoke(cli, ["eval", "toy", "--policy", "expert", "-n", "6", "-o", str(tmp_path / "expert")])
    assert res.exit_code == 0, res.output
    assert "| expert | 6/6 |" in res.output
    # a model that answers 0 to everything, through the library call `agentflan eval` makes
    done = evaluate(EvalConfig(suites=("toy",), model="zero", count=6, output=tmp_path / "zero"),
                    ScriptedEngine(respond=lambda p: "0"), echo=lambda s: None)
    assert [(r.suite, r.protocol, r.summary["right"]) for r in done.runs] == [("toy", "bfcl", 0)]
    assert done.exit_code == 0
    res = CliRunner().invoke(cli, ["score", str(tmp_path / "expert"), str(tmp_path / "zero"), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output[res.output.index("{"):])
    assert [(s["run"], s["suite"], s["right"]) for s in got["runs"]] == [("expert", "toy", 6), ("zero", "toy", 0)]
    row = next(r for r in got["paired"] if r["stratum"] == "all")
    assert (row["a"], row["b"], row["group"], row["metric"], row["n"], row["diff"]) == ("expert", "zero", "toy",
                                                                                        "right", 6, 1.0)
    text = CliRunner().invoke(cli, ["score", str(tmp_path / "expert")]).output
    assert "**toy**" in text and "| expert | 6/6 |" in text
    # a doctored completion is a re-scoring mismatch, as for the built-in suites
    log = tmp_path / "expert" / "toy-bfcl" / "episodes.jsonl"
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    recs[0]["completions"][0]["text"] = "41"
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = CliRunner().invoke(cli, ["score", str(log)])
    assert res.exit_code == 1 and "1 logged verdict(s) differ" in res.output


def test_an_unknown_suite_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"unknown suite 'agent_h'.*agent-h.*did you mean agent-h"):
        get_suite("agent_h")
    res = CliRunner().invoke(cli, ["eval", "nope", "--policy", "expert"])
    assert res.exit_code == 2 and "unknown suite(s) nope" in res.output and "toolapi, db, agent-h, steps, bfcl, bfcl-multi, teval" in res.output


# ---- one run type, one versioned record, one writer ------------------------------------------------------------

def test_every_suite_runs_into_the_one_run_type_and_stamps_its_records(tmp_path):
    from agentflan.eval.suites import run_suite

    runs = [*run_suite("toolapi", engine=None, policy="expert", protocols=[], n=3, seed=0, tasks_file=None,
                       out_root=tmp_path, agent_name="expert", base_config={}, resume=True,
                       progress=lambda label, total: (lambda k: None)),
            *run_suite("agent-h", engine=None, policy="expert", protocols=["react"], n=4, seed=0, tasks_file=None,
                       out_root=tmp_path, agent_name="expert", base_config={}, resume=True,
                       progress=lambda label, total: (lambda k: None))]
    assert [(type(r), r.suite, r.protocol) for r in runs] == [(Run, "toolapi", "expert"), (Run, "agent-h", "react")]
    for run in runs:
        assert json.loads((run.out / "summary.json").read_text()) == run.summary
        lines = (run.out / "episodes.jsonl").read_text().splitlines()
        assert lines and all(line.startswith(f'{{"version": {LOG_VERSION}, ') for line in lines)
        assert [r["version"] for r in read_log(run.out / "episodes.jsonl")] == [LOG_VERSION] * len(lines)


def test_logs_written_before_the_version_field_read_and_rescore_the_same(tmp_path):
    logs = tmp_path / "v0"
    shutil.copytree(V0, logs)
    for log in logs.rglob("episodes.jsonl"):
        assert all("version" not in r for r in read_log(log))
    res = CliRunner().invoke(cli, ["score", str(logs), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.output[res.output.index("{"):])
    then = json.loads((V0 / "score.json").read_text())
    for s in then["runs"]:  # it was scored from the repository root
        s["log"] = str(logs / Path(s["log"]).relative_to("tests/unit/runlog_v0"))
    assert got == then


def test_a_record_that_is_not_a_log_record_is_one_line_naming_file_line_and_field(tmp_path):
    log = tmp_path / "episodes.jsonl"
    log.write_text('{"suite": "env", "task_id": "a", "verdict": null}\n{"suite": "env", "verdict": null}\n')
    with pytest.raises(ConfigError, match=r"episodes.jsonl:2: field 'task_id': Field required"):
        read_log(log)
    log.write_text('{"suite": "env", "task_id": "a", "verdict": "yes"}\n')
    with pytest.raises(ConfigError, match=r"episodes.jsonl:1: field 'verdict'"):
        read_log(log)


# ---- a thin CLI: evaluate(config), demo(config) ----------------------------------------------------------------

def test_the_eval_config_names_its_run_as_the_command_did(tmp_path):
    from agentflan.eval.evaluate import EvalConfig

    assert EvalConfig(model="runs/x/merged").name == "x-merged"
    assert EvalConfig(model="models/SmolLM2 135M").name == "SmolLM2_135M"
    assert EvalConfig(model="org/model", base_url="http://h/v1").name == "org_model"
    assert EvalConfig(policy="expert", model="m").name == "expert"
    assert EvalConfig(predictions=Path("p/my preds.jsonl")).name == "my_preds"
    assert EvalConfig(model="m", run_name="arm").out == Path("out/eval/arm")
    assert EvalConfig(policy="expert").needs_engine is False and EvalConfig(model="m").needs_engine is True


def test_evaluate_checks_before_any_work(tmp_path):
    from agentflan.eval.evaluate import EvalConfig, evaluate

    with pytest.raises(ConfigError, match="needs an engine"):
        evaluate(EvalConfig(suites=("toolapi",), model="m", output=tmp_path / "a"))
    # db's task file is missing: refused before toolapi, named first, plays
    with pytest.raises(ConfigError, match=r"dev\.jsonl does not exist"):
        evaluate(EvalConfig(suites=("toolapi", "db"), policy="expert", count=2, tasks_file=tmp_path / "dev.jsonl",
                            output=tmp_path / "b"), echo=lambda s: None)
    assert not (tmp_path / "b").exists()
    # an empty task file: an empty db run, summarized and tabled beside toolapi's
    (tmp_path / "dev.jsonl").write_text("")
    done = evaluate(EvalConfig(suites=("toolapi", "db"), policy="expert", count=2, tasks_file=tmp_path / "dev.jsonl",
                               output=tmp_path / "c"), echo=lambda s: None)
    assert [(r.suite, r.summary["episodes"]) for r in done.runs] == [("toolapi", 2), ("db", 0)]


def test_eval_errors_are_one_line_with_their_exit_code(tmp_path):
    from agentflan.errors import EXIT_INPUT

    res = CliRunner().invoke(cli, ["eval", "db", "--policy", "expert", "--tasks", str(tmp_path / "x.jsonl"),
                                   "-o", str(tmp_path / "o")])
    assert res.exit_code == EXIT_INPUT and "x.jsonl does not exist" in res.output


def test_demo_config_is_checked_in_the_library(tmp_path):
    from agentflan.eval.demo import DemoConfig, demo

    with pytest.raises(ConfigError, match="distinct"):
        demo(DemoConfig(output=tmp_path, arms=("a=builtin", "a=builtin-agenttuning")))
    with pytest.raises(ConfigError, match="unknown demo model 'huge'"):
        demo(DemoConfig(output=tmp_path, model="huge"))
    res = CliRunner().invoke(cli, ["demo", "-o", str(tmp_path), "--arm", "base=builtin"])
    assert res.exit_code == 2 and "--arm names must be distinct and not `base`" in res.output


# ---- every write atomic, temporary files removed on failure -----------------------------------------------------

def test_a_whole_log_written_at_once_leaves_nothing_when_it_fails(tmp_path, monkeypatch):
    from agentflan.eval import runlog

    path = tmp_path / "episodes.jsonl"
    recs = [{"suite": "x", "task_id": str(i), "verdict": None} for i in range(3)]
    assert [r["version"] for r in runlog.write_records(path, recs)] == [LOG_VERSION] * 3
    before = path.read_bytes()
    calls = []

    def fail_third(rec: Any) -> str:
        calls.append(rec)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return json.dumps(rec) + "\n"

    monkeypatch.setattr(runlog, "json_line", fail_third)
    with pytest.raises(Exception, match=r"episodes\.jsonl"):
        runlog.write_records(path, recs)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["episodes.jsonl"]


def test_synthesized_episodes_leave_no_partial_file_when_writing_fails(tmp_path, monkeypatch):
    from agentflan.envs import synth

    calls = []

    def fail_second(rec: Any) -> str:
        calls.append(rec)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return json.dumps(rec)

    monkeypatch.setattr(synth, "dumps", fail_second)
    with pytest.raises(KeyboardInterrupt):
        synth.synth("toolapi", 3, "train", tmp_path, seed=0)
    assert list((tmp_path / "toolapi" / "train").iterdir()) == []


def test_the_prepared_cache_removes_its_temporary_folder_when_saving_fails(tmp_path, monkeypatch):
    np = pytest.importorskip("numpy")
    from agentflan.training.prepared import PreparedCache

    cache = PreparedCache(tmp_path, "k")
    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}]
    real_save, saved = np.save, []

    def fail_second(path: Any, arr: Any) -> None:
        saved.append(path)
        if len(saved) == 2:
            raise OSError(28, "No space left on device")
        real_save(path, arr)

    monkeypatch.setattr(np, "save", fail_second)
    with pytest.raises(OSError):
        cache.save(rows, {"n": 1})
    assert list(tmp_path.iterdir()) == [] and cache.load() is None
    monkeypatch.setattr(np, "save", real_save)
    cache.save(rows, {"n": 1})
    assert cache.load() == (rows, {"n": 1})


def test_a_module_written_to_the_earlier_contract_is_a_suite_by_one_line(monkeypatch, tmp_path):
    """A suite module with module-level run/rescore/summarize/table/outcomes (the contract before
    `Suite`, which BFCL multi-turn was written to) registers through `ModuleSuite` unchanged."""
    import sys
    import types

    from agentflan.eval.suite import ModuleSuite

    mod = types.ModuleType("agentflan_test_old_contract")
    seen: dict[str, Any] = {}

    def run(*, engine, policy, protocols, tasks_file, n, out_root, agent_name, base_config, resume, progress):
        from agentflan.eval.runlog import Run, run_logged, write_summary

        seen.update(protocols=protocols, n=n)
        ids = [f"old-{i}" for i in range(n)]

        def start(i):
            yield from ()
            return i

        records, resumed = run_logged(out_root / "old-x", {"suite": "old"}, ids, start,
                                      lambda i, got: {"suite": "old", "protocol": "x", "task_id": ids[i],
                                                      "verdict": {"even": got % 2 == 0}, "error": None}, None,
                                      resume=resume, progress=progress("old / x", n))
        return [write_summary(Run("old", "x", out_root / "old-x", records, resumed, mod.summarize(records)))]

    mod.run = run
    mod.rescore = lambda rec, proto: {"even": int(rec["task_id"].split("-")[1]) % 2 == 0, "proto": proto}
    mod.summarize = lambda records: {"suite": "old", "items": len(records), "scored": len(records), "errors": 0,
                                     "even": sum(r["verdict"]["even"] for r in records), "error_examples": []}
    mod.table = lambda summaries: "".join(f"| {s.get('run')} | {s['even']} |\n" for s in summaries)
    mod.outcomes = lambda rec: {("even", "all"): float(rec["verdict"]["even"])}
    mod.OLD = ModuleSuite("old", mod.__name__)
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    monkeypatch.setattr(SUITES, "_targets", dict(SUITES._targets))
    monkeypatch.setattr(SUITES, "_docs", dict(SUITES._docs))
    SUITES.register("old", f"{mod.__name__}:OLD")

    res = CliRunner().invoke(cli, ["eval", "old", "--policy", "expert", "-n", "4", "--protocol", "p",
                                   "-o", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    assert seen == {"protocols": ["p"], "n": 4} and "| expert | 2 |" in res.output
    res = CliRunner().invoke(cli, ["eval", "old", "--policy", "expert", "--predictions", "x", "-o", str(tmp_path / "f")])
    assert res.exit_code == 4 and "--predictions does not apply to the old suite" in res.output
    # re-scored through the module: its verdict has no `proto` key, so each logged verdict differs
    res = CliRunner().invoke(cli, ["score", str(tmp_path / "e")])
    assert res.exit_code == 1 and "4 logged verdict(s) differ" in res.output and "'proto': None" in res.output
    mod.rescore = lambda rec, proto: {"even": int(rec["task_id"].split("-")[1]) % 2 == 0}
    res = CliRunner().invoke(cli, ["score", str(tmp_path / "e"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output[res.output.index("{"):])["runs"][0]["even"] == 2


def test_a_quarantine_file_appears_whole_when_the_read_ends(tmp_path):
    from agentflan.io import make_reader

    src = tmp_path / "in.jsonl"
    src.write_text('{"bad": 1}\n{"bad": 2}\n')
    q = tmp_path / "q" / "rejected.jsonl"
    reader = make_reader([str(src)], "react", quarantine=q)
    it = reader.read([str(src)])
    assert list(it) == [] and reader.quarantine is not None and reader.quarantine.count == 2
    assert not q.exists() and [p.name for p in q.parent.iterdir()] == [".partial-rejected.jsonl"]  # killed here: no cut file
    reader.quarantine.close()
    assert [p.name for p in q.parent.iterdir()] == ["rejected.jsonl"] and len(q.read_text().splitlines()) == 2
