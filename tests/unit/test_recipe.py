from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from agentflan.cli.main import cli
from agentflan.errors import ConfigError
from agentflan.overrides import apply_overrides
from agentflan.pipeline.recipe import load_recipe, packaged_recipes


@pytest.mark.parametrize("name", sorted(packaged_recipes()))
def test_packaged_recipes_validate_and_carry_their_command(name):
    recipe, _ = load_recipe(name)
    assert recipe.name == name
    first = packaged_recipes()[name].read_text().splitlines()[0]
    assert first.startswith(f"# agentflan data build {name} ")
    for out in recipe.outputs:
        if recipe.outputs[out].kind == "steps":
            recipe.steps_of(out)  # every step config instantiates


def test_release_layout_of_agent_flan():
    recipe, _ = load_recipe("agent-flan")
    assert set(recipe.outputs) == {"agent_instruct_react", "agent_instruct_tflan", "toolbench_instruct_j1s1_3k",
                                   "toolbench_negative", "toolbench_react_10p", "toolbench_tflan_60p_r10r5u7",
                                   "toolbench_tflan_cot_30p", "general"}
    assert recipe.chat_outputs() == {"general"}


def test_ablations_differ_from_agent_flan_only_where_named():
    base, _ = load_recipe("agent-flan")
    no_neg, _ = load_recipe("agent-flan-no-negatives")
    assert set(base.outputs) - set(no_neg.outputs) == {"toolbench_negative"}
    no_bal, _ = load_recipe("agent-flan-no-balance")
    assert all(s.type != "balance" for s in no_bal.outputs["toolbench_tflan_60p_r10r5u7"].steps)
    assert no_bal.outputs["toolbench_tflan_60p_r10r5u7"].from_ == ["toolbench"]
    tuning, _ = load_recipe("agenttuning")
    assert not any(s.type in ("align", "balance") for o in tuning.step_outputs().values() for s in o.steps)
    assert not any(o.kind == "negatives" for o in tuning.outputs.values())


def test_every_problem_is_reported_with_its_key_path(tmp_path):
    bad = {"name": "bad", "sources": {"a": {"reader": "toolbenchh", "paths": ["x"]}},
           "outputs": {"o": {"from": ["a", "missing"], "steps": [
               {"type": "balance", "ratios": {"retrieval": 2}}, {"type": "alignn"}, {"cot": True}]}},
           "seed": "abc"}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError) as info:
        load_recipe(p)
    msg = str(info.value)
    for fragment in ("sources.a.reader: unknown reader 'toolbenchh'", "did you mean toolbench",
                     "outputs.o.steps[0]", "outputs.o.steps[1].type: unknown step 'alignn'",
                     "outputs.o.steps[2]: each step is a mapping with a `type`", "seed",
                     "outputs.o: unknown source 'missing'"):
        assert fragment in msg, fragment


def test_overrides_vars_and_lists(tmp_path):
    recipe, _ = load_recipe("agent-flan", ["vars.data_dir=/data", "seed=3", "~outputs.general",
                                                  "mix.chat_ratio=0.5"])
    assert recipe.seed == 3 and "general" not in recipe.outputs
    assert recipe.sources["toolbench"].paths == ["/data/toolbench/answer/*/*.json"]
    assert recipe.mix.chat_ratio == 0.5
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "vars": {"files": ["a.jsonl", "b.jsonl"]},
                                 "sources": {"s": {"reader": "react", "paths": ["${files}", "c.jsonl"]}},
                                 "outputs": {"o": {"from": ["s"]}}}))
    recipe, _ = load_recipe(p)
    assert recipe.sources["s"].paths == ["a.jsonl", "b.jsonl", "c.jsonl"]
    with pytest.raises(ConfigError, match="unknown variable"):
        load_recipe(p, ['sources.s.paths=["${nope}"]'])


def test_apply_overrides_errors():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["justakey"])
    with pytest.raises(ConfigError, match="does not exist"):
        apply_overrides({"a": {}}, ["~a.b"])


def test_recipes_cli(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["recipes"])
    assert res.exit_code == 0 and "agenttuning" in res.output and "$ agentflan data build" in res.output
    res = runner.invoke(cli, ["recipes", "cp", "agent-flan", str(tmp_path)])
    assert res.exit_code == 0 and (tmp_path / "agent-flan.yaml").exists()
    res = runner.invoke(cli, ["data", "build", str(tmp_path / "agent-flan.yaml"), "-o", str(tmp_path / "o"),
                              "--dry-run", "vars.data_dir=/x"])
    assert res.exit_code == 0 and "/x/toolbench/answer" in res.output


def test_builtin_ladder_recipes_each_remove_what_they_name(tmp_path):
    """The demo's arms and the reproduction study's ladder, built from the same episodes: each step
    differs from the next by exactly its fix."""
    from agentflan.envs.synth import synth
    from agentflan.pipeline.build import build

    for env in ("toolapi", "db"):
        synth(env, 12, "train", tmp_path / "env")
    stats = {}
    for name in ("builtin-agenttuning", "builtin-align", "builtin-no-negatives", "builtin", "builtin-balance-drop"):
        recipe, resolved = load_recipe(name, [f"vars.env_dir={tmp_path / 'env'}"])
        stats[name] = build(recipe, resolved, tmp_path / name).stats["outputs"]
    protocols = {p for o in stats["builtin-agenttuning"].values() for p in o["protocols"]}
    assert protocols == {"toolllama", "agentinstruct:db"}  # original formats only
    assert not any(o["balance"] for o in stats["builtin-align"].values()) and "negatives" not in stats["builtin-align"]
    balanced = {n for n, o in stats["builtin-no-negatives"].items() if o["balance"]}
    assert balanced == {"db_tflan", "toolapi_tflan_60p"} and "negatives" not in stats["builtin-no-negatives"]
    assert stats["builtin"]["negatives"]["records"] > 0
    assert set(stats["builtin"]) == set(stats["builtin-balance-drop"])

    def modes(name: str) -> dict[str, str]:
        return {out: step["config"]["mode"] for out, o in stats[name].items() for step in o["steps"]
                if step["step"] == "balance"}
    assert modes("builtin") == {"db_tflan": "mask", "toolapi_tflan_60p": "mask"}
    assert modes("builtin-balance-drop") == {"db_tflan": "drop", "toolapi_tflan_60p": "drop"}


def test_step_entries_are_typed_and_dump_as_written():
    """A recipe holds each step as its validated `Config` (a `${var}` string becomes the float the
    config declares) and dumps it back as the `{type, ...config}` entry it was written as."""
    import pickle

    from agentflan.pipeline.base import StepSpec
    from agentflan.pipeline.steps.split import SplitConfig

    recipe, _ = load_recipe("agent-flan", ["vars.agentinstruct_dialect_share=0.5", "decontaminate.envs=[db]"])
    split = recipe.outputs["agent_instruct_react"].steps[0]
    assert isinstance(split, StepSpec) and isinstance(split.config, SplitConfig) and split.config.end == 0.5
    assert split.model_dump(mode="json") == {"type": "split", "start": 0.0, "end": 0.5, "salt": "agentinstruct_dialect"}
    assert StepSpec.model_validate(split.model_dump(mode="json")) == split
    entries = recipe.step_entries("agent_instruct_react")
    assert [s.type for s in entries] == ["decontaminate", "split", "react"]
    assert entries[0].config is recipe.decontaminate  # the recipe's own object, not a copy through JSON
    assert pickle.loads(pickle.dumps(entries)) == entries  # what a build task carries to its worker
    assert [s.name for s in recipe.steps_of("agent_instruct_react")] == ["decontaminate", "split", "react"]
