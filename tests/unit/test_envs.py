"""Environments: experts solve everything, baselines do not, hostile input is contained."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.envs import get_env, run_episode
from agentflan.envs.base import ExpertPolicy, Policy, RandomPolicy, ReplayPolicy, Task
from agentflan.envs.db import DBEnvironment, derive_select_sql, task_from_agentbench
from agentflan.envs.synth import synth
from agentflan.envs.toolapi import TRAIN_TOOLS, ToolAPIEnvironment
from agentflan.io import convert
from agentflan.schema import AssistantMessage, ToolCall
from tests.helpers import on_fixtures


class WrongPolicy(Policy):
    """Answers at once with a fixed wrong answer, calling a tool when one is offered."""

    name = "wrong"

    def __init__(self):
        self.called = False

    def act(self, messages, tools):
        usable = [t for t in tools if t.name not in ("Finish", "answer")]
        if usable and not self.called:
            self.called = True
            return AssistantMessage(tool_calls=[ToolCall(id="w0", name=usable[0].name, arguments={})])
        final = "answer" if any(t.name == "answer" for t in tools) else "Finish"
        args = {"answer": ["wrong"]} if final == "answer" else {"return_type": "give_answer", "final_answer": "wrong"}
        return AssistantMessage(tool_calls=[ToolCall(id="w1", name=final, arguments=args)])


def _score(env_name: str, split: str, n: int, make_policy) -> float:
    info = get_env(env_name)
    tasks = info.generate(n, split, 0)
    wins = sum(run_episode(info.make(), t, make_policy(t)).verdict.success for t in tasks)
    return wins / len(tasks)


@pytest.mark.parametrize("env_name", ["toolapi", "db"])
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_expert_solves_every_generated_task(env_name, split):
    info = get_env(env_name)
    assert _score(env_name, split, 120, lambda t: ExpertPolicy(info.expert(t))) == 1.0


@pytest.mark.parametrize("env_name", ["toolapi", "db"])
def test_random_and_wrong_policies_score_near_zero(env_name):
    assert _score(env_name, "train", 120, lambda t: RandomPolicy(seed=len(t.id))) < 0.05
    assert _score(env_name, "heldout", 60, lambda t: RandomPolicy(seed=len(t.id))) < 0.05
    assert _score(env_name, "train", 120, lambda t: WrongPolicy()) == 0.0  # no task passes by doing nothing
    assert _score(env_name, "heldout", 60, lambda t: WrongPolicy()) == 0.0


def test_replay_reproduces_the_expert():
    info = get_env("toolapi")
    task = info.generate(5, "train", 0)[4]
    first = run_episode(info.make(), task, ExpertPolicy(info.expert(task)))
    again = run_episode(info.make(), task, ReplayPolicy(first.trajectory))
    assert again.verdict.success and again.trajectory.messages == first.trajectory.messages


def test_heldout_is_disjoint_from_train():
    info = get_env("toolapi")
    train, held = info.generate(100, "train", 0), info.generate(100, "heldout", 0)
    tool_groups = lambda tasks: {t.name.split("_for_")[-1] for task in tasks for t in task.tools}  # noqa: E731
    assert tool_groups(train) <= set(TRAIN_TOOLS) and not (tool_groups(held) & set(TRAIN_TOOLS))
    assert not ({t.template.split("#")[0] for t in train} & {t.template.split("#")[0] for t in held})
    db = get_env("db")
    assert not ({t.template for t in db.generate(50, "train", 0)} & {t.template for t in db.generate(50, "heldout", 0)})


def test_generation_is_seeded():
    info = get_env("toolapi")
    assert info.generate(30, "train", 1) == info.generate(30, "train", 1)
    assert info.generate(30, "train", 1) != info.generate(30, "train", 2)


# ---- AgentBench dev tasks ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dev_tasks(sample_data):
    lines = (sample_data / "agentbench/dbbench/dev.jsonl").read_text().splitlines()
    return on_fixtures(sample_data), [task_from_agentbench(json.loads(line), i) for i, line in enumerate(lines)]


def test_agentbench_hash_reproduces_answer_md5_for_every_gold_modification(dev_tasks):
    fixtures, tasks = dev_tasks
    mods = [t for t in tasks if t.kind != "select"]
    assert len(mods) == (4 if fixtures else 40)
    expert = get_env("db").expert
    assert all(run_episode(DBEnvironment(), t, ExpertPolicy(expert(t))).verdict.success for t in mods)


def test_expert_solves_every_derivable_select_task(dev_tasks):
    fixtures, tasks = dev_tasks
    selects = [t for t in tasks if t.kind == "select"]
    derivable = [t for t in selects if derive_select_sql(t) is not None]
    if fixtures:
        assert len(selects) == len(derivable) == 4
    else:
        assert len(selects) == 20 and len(derivable) == 12  # 7 and 10 need MySQL's numeric comparison of text
    expert = get_env("db").expert
    assert all(run_episode(DBEnvironment(), t, ExpertPolicy(expert(t))).verdict.success for t in derivable)


# ---- hostile input -------------------------------------------------------------------------------

def _db_env() -> DBEnvironment:
    env = DBEnvironment()
    env.reset(get_env("db").generate(1, "train", 0)[0])
    return env


@pytest.mark.parametrize(("sql", "fragment"), [
    ("ATTACH DATABASE '/tmp/x.db' AS x", "not authorized"),
    ("SELECT load_extension('/tmp/evil.so')", "not authorized"),
    ("PRAGMA writable_schema = 1", "not authorized"),
    ("PRAGMA table_info(Employees)", "not authorized"),
    ("SELECT readfile('/etc/passwd')", "no such function"),
    ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c", "time limit"),
    ("SELECT 1; DROP TABLE Employees", "one statement"),
    ("SELECT " + "1+" * 20000 + "1", "refused"),
    ("DROP TABLE", "incomplete input"),
])
def test_hostile_sql_is_refused_or_bounded(sql, fragment):
    env = _db_env()
    obs = env.step(ToolCall(id="h", name="operation", arguments={"sql": sql}))
    assert fragment in obs.content.lower() or fragment in obs.content
    env.close()


def test_huge_results_are_truncated_with_a_note():
    env = _db_env()
    obs = env.step(ToolCall(id="h", name="operation", arguments={
        "sql": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 5000) "
               "SELECT x, 'padding padding padding' FROM c"}))
    assert "only the first 100 rows" in obs.content and len(obs.content) < 4200
    cross = env.step(ToolCall(id="h2", name="operation", arguments={
        "sql": "SELECT count(*) FROM Employees a, Employees b, Employees c, Employees d, Employees e, Employees f"}))
    assert "time limit" in cross.content or cross.content.startswith("[(")
    env.close()


@pytest.mark.parametrize(("name", "args", "fragment"), [
    ("get_country_for_world_atlas", {"name": 42}, "expected string"),
    ("get_country_for_world_atlas", {}, "missing required field 'name'"),
    ("get_country_for_world_atlas", {"name": "x", "extra": 1}, "unknown field"),
    ("get_country_for_world_atlas", {"name": "../../etc/passwd"}, "not a valid name"),
    ("get_country_for_world_atlas", {"name": "A" * 5000}, "longer than 1000"),
    ("word_count_for_text_tools", {"text": "x " * 600}, "longer than 1000"),
    ("divide_for_calculator", {"a": 1, "b": 0}, "division by zero"),
    ("add_for_calculator", {"a": True, "b": 1}, "expected number"),
    ("add_for_calculator", {"a": float("inf"), "b": 1}, "finite number"),
    ("remove_item_for_inventory", {"item": "mugs", "quantity": 10 ** 9}, "not enough"),
    ("convert_length_for_unit_converter", {"value": 1, "from_unit": "parsec", "to_unit": "m"}, "unknown unit"),
    ("no_such_function", {}, "No such function name"),
])
def test_hostile_tool_arguments_get_clear_observations(name, args, fragment):
    env = ToolAPIEnvironment()
    env.reset(Task(id="t", env="toolapi", kind="single", query="q"))
    obs = env.step(ToolCall(id="h", name=name, arguments=args))
    assert fragment in obs.content
    assert json.loads(obs.content)["response"] == ""


# ---- synth, CLI, model policy --------------------------------------------------------------------

def test_synth_writes_verified_trajectories_readers_accept(tmp_path):
    for env_name, fmt_path, reader in [("toolapi", "toolbench_answer", "toolbench"),
                                       ("db", "agentinstruct.jsonl", "agentinstruct")]:
        for split, n in (("train", 500), ("heldout", 200)):
            r = synth(env_name, n, split, tmp_path, seed=0)
            assert (r.tasks, r.written, dict(r.failed)) == (n, n, {})
            res = convert(str(tmp_path / env_name / split / fmt_path), tmp_path / "c.jsonl", fmt=reader)
            assert (res.read.records, res.read.converted, res.read.quarantined) == (n, n, 0)


def test_env_cli(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["env", "list"])
    assert res.exit_code == 0 and "toolapi" in res.output and "unserviceable" in res.output
    res = runner.invoke(cli, ["env", "synth", "db", "-n", "20", "--split", "heldout", "-o", str(tmp_path)])
    assert res.exit_code == 0 and "20 verified episodes" in res.output, res.output
    res = runner.invoke(cli, ["env", "play", "toolapi", "--index", "2"])
    assert res.exit_code == 0 and "== SUCCESS" in res.output
    res = runner.invoke(cli, ["env", "play", "toolapi", "--index", "2", "--policy", "random"])
    assert res.exit_code == 0 and "== FAILURE" in res.output
    res = runner.invoke(cli, ["env", "play", "db", "--policy", "replay", "--split", "heldout", "--index", "3",
                              "--replay", str(tmp_path / "db" / "heldout" / "native.jsonl")])
    assert res.exit_code == 0 and "== SUCCESS" in res.output, res.output


def test_a_stateful_task_is_judged_by_its_final_state_not_the_answer_alone():
    """Saying the right final stock without making every change is a failure (the inventory is checked)."""
    info = get_env("toolapi")
    task = next(t for t in info.generate(200, "train", 0) if t.kind == "stateful")
    done = run_episode(info.make(), task, ExpertPolicy(info.expert(task)))
    assert done.verdict.success
    acts = [m for m in done.trajectory.messages if isinstance(m, AssistantMessage)]
    assert len(acts) >= 3 and str(task.expected["values"][0]) in str(acts[-1].tool_calls[0].arguments)
    skipped = done.trajectory.model_copy(update={"messages": [acts[0], acts[-1]]})  # the removal left out
    verdict = run_episode(info.make(), task, ReplayPolicy(skipped)).verdict
    assert not verdict.success and verdict.reason.startswith("inventory is"), verdict
