"""GRPO on the environments (rl/grpo.py, rl/rollout.py): token-exact rollouts, masks, rewards, recipes, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import pytest

pytest.importorskip("trl", reason="training extras not installed (pip install 'agentflan[train]')")

from agentflan.envs import ENVIRONMENTS, EnvInfo
from agentflan.envs.base import Environment, Task, Verdict
from agentflan.schema import AssistantMessage, Message, SystemMessage, ToolCall, ToolMessage, UserMessage

FIRST_HALF = set("abcdefghijklmABCDEFGHIJKLM")


class Letters(Environment):
    """A toy environment a random tiny model can learn: the reply wins when its first non-space
    character is a letter a-m (about a third of random replies at the start)."""

    name: ClassVar[str] = "letters"

    def reset(self, task: Task) -> list[Message]:
        return [SystemMessage(content="Reply."), UserMessage(content=task.query)]

    def step(self, call: ToolCall) -> ToolMessage:
        return ToolMessage(content='{"ok": true}', name=call.name, tool_call_id=call.id)

    def verify(self, task: Task, final_answer: str | None, transcript: list[Message]) -> Verdict:
        last = [m for m in transcript if isinstance(m, AssistantMessage)][-1:]
        text = final_answer if final_answer is not None else (last[0].content if last else "")
        first = text.strip()[:1]
        return Verdict(first in FIRST_HALF, "first letter")


def _letters_tasks(n: int, split: str, seed: int) -> list[Task]:
    return [Task(id=f"letters-{split}-{i}", env="letters", split=split, kind="single",  # type: ignore[arg-type]
                 query=f"Say something ({i}).") for i in range(n)]


LETTERS = EnvInfo("letters", "toy", Letters, _letters_tasks, lambda task: iter(()), ("native",))


@pytest.fixture
def letters():
    ENVIRONMENTS.register("letters", LETTERS, "toy")
    yield
    ENVIRONMENTS.unregister("letters")


@pytest.fixture(scope="module")
def tok():
    """The tiny tokenizer of the synthetic fixtures only (these tests need no real samples: one run)."""
    from agentflan.formats.protocols import training_texts
    from agentflan.training.models import tiny_tokenizer
    from tests.helpers import FIXTURE_DATA, sample_corpus

    corpus = sample_corpus(FIXTURE_DATA)
    return tiny_tokenizer(training_texts(corpus, limit=len(corpus)))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tok):
    """A tiny random model saved as `agentflan train` saves one (template agentflan, protocol react)."""
    from agentflan.training.models import tiny_model

    folder = tmp_path_factory.mktemp("model")
    tiny_model(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "agentflan.json").write_text(json.dumps({"template": "agentflan", "protocols": {"react": 10}}))
    return folder


def _rollout(tok, env: str = "toolapi", n: int = 2):
    from agentflan.envs import get_env
    from agentflan.formats.templates import get_template
    from agentflan.rl.rollout import EnvRollout
    from agentflan.rl.sources import EnvEpisode

    template = get_template("agentflan", tok)
    specs = {f"{env}/{t.id}": EnvEpisode(env, t, "react") for t in get_env(env).generate(n, "train", 0)}
    return EnvRollout(specs, template, tok, max_turns=6, max_new_tokens=64, max_completion_length=4096), specs


def _expert_replies(spec) -> list[str]:
    """The expert's turns as the react protocol renders them (what a perfect policy would write)."""
    from agentflan.envs import get_env
    from agentflan.envs.base import ExpertPolicy, run_episode
    from agentflan.formats.protocols import conversation_key, get_protocol

    info = get_env(spec.env)
    ep = run_episode(info.make(), spec.task, ExpertPolicy(info.expert(spec.task)))
    proto = get_protocol("react")
    return [m.content for m in proto.render(ep.trajectory, conversation_key(ep.trajectory))
            if isinstance(m, AssistantMessage)]


def _scripted(tok, replies: dict[int, list[str]], edit=lambda s: s):
    """A sampler that 'samples' the given texts (tokenized, the stop token appended)."""
    stop = tok.convert_tokens_to_ids("\u0d3f")
    turn: dict[int, int] = {}

    def sample(contexts, stops, max_new):
        out = []
        for r, _ in enumerate(contexts):
            k = turn.get(r, 0)
            turn[r] = k + 1
            text = edit(replies[r][min(k, len(replies[r]) - 1)])
            ids = [*tok(text, add_special_tokens=False)["input_ids"], stop]
            out.append((ids, [-0.5] * len(ids)))
        return out

    return sample


def test_rollout_ids_are_the_sampled_ids_and_equal_the_rerender(tok):
    from agentflan.formats.protocols import get_protocol
    from agentflan.rl.rollout import exact_rollout

    roll, specs = _rollout(tok)
    keys = list(specs)
    replies = {i: _expert_replies(specs[k]) for i, k in enumerate(keys)}
    got = roll.play(keys, _scripted(tok, replies))
    stop = tok.convert_tokens_to_ids("\u0d3f")
    for i, r in enumerate(got):
        assert r.success and r.drift_turns == 0 and r.turns == len(replies[i])
        assert exact_rollout(r, roll.template, tok, get_protocol("react"))
        # the trained (mask 1) runs are exactly the sampled ids, in order
        runs, cur = [], []
        for t, m in zip(r.completion_ids, r.env_mask, strict=True):
            if m:
                cur.append(t)
            elif cur:
                runs.append(cur)
                cur = []
        runs += [cur] if cur else []
        assert runs == [[*tok(x, add_special_tokens=False)["input_ids"], stop] for x in replies[i]]
        assert len(r.logprobs) == len(r.completion_ids)


def test_drift_is_caught(tok):
    """Broken on purpose: replies the protocol normalizes (extra spaces) re-render differently; the
    rollout counts the drift and the exactness check fails."""
    from agentflan.formats.protocols import get_protocol
    from agentflan.rl.rollout import exact_rollout

    roll, specs = _rollout(tok, n=1)
    keys = list(specs)
    replies = {0: _expert_replies(specs[keys[0]])}
    [r] = roll.play(keys, _scripted(tok, replies, edit=lambda s: s.replace("Action Input: ", "Action Input:   ")))
    assert r.drift_turns >= 1
    assert not exact_rollout(r, roll.template, tok, get_protocol("react"))


def test_environment_text_is_masked(tok):
    roll, specs = _rollout(tok, n=1)
    keys = list(specs)
    replies = {0: _expert_replies(specs[keys[0]])}
    [r] = roll.play(keys, _scripted(tok, replies))
    masked = tok.decode([t for t, m in zip(r.completion_ids, r.env_mask, strict=True) if not m])
    trained = tok.decode([t for t, m in zip(r.completion_ids, r.env_mask, strict=True) if m])
    assert "Observation" in masked or "<|Human|>" in masked  # tool results and turn markup are masked
    assert "<|Human|>" not in trained and "<|Assistant|>" not in trained
    assert all(lp == 0.0 for lp, m in zip(r.logprobs, r.env_mask, strict=True) if not m)


def test_the_sampler_stops_where_eval_stops(tok):
    """The rollout's sampler gets the protocol's stops and the template's end of turn (`turn_ends`),
    the stops eval's engines use (a multi-token end of turn is only caught as a string)."""
    from agentflan.formats.templates import turn_ends

    roll, specs = _rollout(tok, n=1)
    keys = list(specs)
    inner = _scripted(tok, {0: _expert_replies(specs[keys[0]])})
    seen: list[tuple[str, ...]] = []

    def sample(contexts, stops, max_new):
        seen.append(stops)
        return inner(contexts, stops, max_new)

    roll.play(keys, sample)
    ends, _ = turn_ends(roll.template, tok)
    assert seen and all(set(ends) <= set(s) and "\nObservation:" in s for s in seen), seen


def test_not_prefix_preserving_template_is_refused(tok):
    from agentflan.formats.templates import TemplateError

    roll, specs = _rollout(tok, n=1)
    keys = list(specs)
    replies = {0: _expert_replies(specs[keys[0]])}
    real = roll.template.render

    def shuffled(messages, tools=None, *, add_generation_prompt=False):
        segs = real(messages, tools, add_generation_prompt=add_generation_prompt)
        return [(f"[{len(messages)}]", False), *segs]  # the prompt's beginning changes with every turn

    roll.template.render = shuffled
    try:
        with pytest.raises(TemplateError, match="prefix-preserving"):
            roll.play(keys, _scripted(tok, replies))
    finally:
        del roll.template.render


def _recipe(tmp_path: Path, model_dir: Path, **rl: Any) -> dict[str, Any]:
    return {"name": "rl-test", "model": str(model_dir), "envs": ["letters"], "tasks": 4, "max_turns": 1,
            "max_new_tokens": 6, "output_dir": str(tmp_path / "rl"), "seed": 3,
            "rl": {"per_device_train_batch_size": 8, "num_generations": 4, "max_completion_length": 16,
                   "learning_rate": 3e-3, "use_cpu": True, "logging_steps": 1, "temperature": 1.0,
                   "gradient_checkpointing": False, "max_steps": 4, **rl}}


def test_bad_rl_recipe_exits_4_naming_file_and_key(tmp_path, model_dir, letters):
    import yaml
    from click.testing import CliRunner

    from agentflan.cli.main import cli

    bad = _recipe(tmp_path, model_dir, max_step=3)
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(bad))
    res = CliRunner().invoke(cli, ["train", str(f)])
    assert res.exit_code == 4, res.output
    assert str(f) in res.output and "rl.max_step" in res.output and "max_steps" in res.output
    f.write_text(yaml.safe_dump(_recipe(tmp_path, model_dir)))
    res = CliRunner().invoke(cli, ["train", str(f), "envs=[letterz]"])
    assert res.exit_code == 4 and str(f) in res.output and "letterz" in res.output
    res = CliRunner().invoke(cli, ["train", str(f), f"model={tmp_path}"])
    assert res.exit_code == 4 and "agentflan.json" in res.output
    res = CliRunner().invoke(cli, ["train", str(f), "tasks=0"])
    assert res.exit_code == 4 and "tasks" in res.output
    res = CliRunner().invoke(cli, ["train", str(f), "--dry-run"])
    assert res.exit_code == 0 and '"envs"' in res.output
    res = CliRunner().invoke(cli, ["train", str(f), 'protocol={"letterz": "native"}'])  # one per source: named ones
    assert res.exit_code == 4 and "protocol: letterz is not in envs (letters)" in res.output, res.output


def test_a_protocol_per_source():
    from agentflan.rl.grpo import pick_protocol

    info = {"protocols": {"tflan": 9, "agentinstruct:db": 5}}
    chosen = {"db": "agentinstruct:db"}
    assert pick_protocol(info, "db", chosen) == "agentinstruct:db"
    assert pick_protocol(info, "toolapi", chosen) == pick_protocol(info, "toolapi", None) == "tflan"
    assert pick_protocol(info, "toolapi", "react") == "react"


def test_reward_rises_on_a_learnable_toy_environment(tmp_path, model_dir, letters):
    from agentflan.rl.grpo import RLRecipe, run

    m = run(RLRecipe.model_validate(_recipe(tmp_path, model_dir, max_steps=14, learning_rate=0.05,
                                            per_device_train_batch_size=16)))
    success = m["success"]  # 4 tasks x 4 rollouts per step: about half win at first
    assert len(success) == 14
    first, last = sum(success[:4]) / 4, sum(success[-4:]) / 4
    assert last > first + 0.25 and last >= 0.8, success
    rewards = [h["rewards/verdict/mean"] for h in m["log_history"] if "rewards/verdict/mean" in h]
    assert rewards == pytest.approx(success)  # the reward is the verdict (no format term here)
    assert (tmp_path / "rl" / "final" / "agentflan.json").is_file()
    info = json.loads((tmp_path / "rl" / "final" / "agentflan.json").read_text())
    assert info["template"] == "agentflan" and info["rl_recipe"] == "rl-test"
    logged = [h for h in m["log_history"] if "reward" in h]
    assert all("rewards/verdict/mean" in h and "rl/drift_turns" in h for h in logged)


def test_checkpoints_resume(tmp_path, model_dir, letters):
    from agentflan.rl.grpo import RLRecipe, run

    first = run(RLRecipe.model_validate(_recipe(tmp_path, model_dir, max_steps=2, save_strategy="steps",
                                                save_steps=2)))
    assert first["global_step"] == 2 and (tmp_path / "rl" / "checkpoint-2").is_dir()
    again = run(RLRecipe.model_validate({**_recipe(tmp_path, model_dir, max_steps=4, save_strategy="steps",
                                                   save_steps=2), "resume": True}))
    assert again["resumed_from"] == "checkpoint-2" and again["global_step"] == 4
    steps = [h["step"] for h in again["log_history"] if "reward" in h]
    assert steps[-2:] == [3, 4]


@pytest.mark.parametrize("name", ["tiny-rl-smoke", "smollm2-135m-rl"])
def test_packaged_rl_recipes_validate(name, model_dir):
    from trl import GRPOConfig

    from agentflan.rl.grpo import is_rl_data, load_rl_recipe
    from agentflan.training.sft import read_train_recipe

    path, data = read_train_recipe(name, [f"model={model_dir}"])
    assert is_rl_data(data)
    recipe = load_rl_recipe(path, data)
    assert recipe.name == name and set(recipe.envs) == {"toolapi", "db"}
    GRPOConfig(output_dir="/tmp/x", **recipe.rl)  # TRL's own checks of the values


def test_packaged_tiny_rl_recipe_trains_through_the_cli(tmp_path, model_dir):
    """`agentflan train tiny-rl-smoke` on toolapi and db from an agentflan model folder."""
    from click.testing import CliRunner

    from agentflan.cli.main import cli

    res = CliRunner().invoke(cli, ["train", "tiny-rl-smoke", f"model={model_dir}", f"output_dir={tmp_path}/run",
                                   "rl.max_steps=1", "tasks=1", "max_turns=2", "max_new_tokens=8"])
    assert res.exit_code == 0, res.output
    assert "GRPO steps" in res.output and (tmp_path / "run" / "final" / "config.json").is_file()
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["protocols"] == {"toolapi": "react", "db": "react"} and m["global_step"] == 1


def test_format_term_is_logged_apart(tmp_path, model_dir, letters):
    from agentflan.rl.grpo import RLRecipe, format_term, run

    assert format_term(0.2)([], [], format_ok=[1.0, 0.0]) == [0.2, 0.0]
    m = run(RLRecipe.model_validate({**_recipe(tmp_path, model_dir, max_steps=1), "format_reward": 0.2}))
    [h] = [h for h in m["log_history"] if "reward" in h]
    assert h["rewards/format_valid/mean"] == pytest.approx(0.2 * h["rl/format_ok"])
    assert h["reward"] == pytest.approx(h["rewards/verdict/mean"] + h["rewards/format_valid/mean"])


def test_same_recipe_and_seed_train_the_same_model(tmp_path, model_dir, letters):
    """Determinism: one RL recipe and seed run twice gives the same rewards and losses per step and
    a byte-identical model (sampling, shuffling and the updates all follow the recipe's seed)."""
    from agentflan.rl.grpo import RLRecipe, run

    def once(name: str) -> tuple[list[tuple[float, ...]], bytes]:
        recipe = {**_recipe(tmp_path, model_dir, max_steps=3, learning_rate=0.05), "output_dir": str(tmp_path / name)}
        m = run(RLRecipe.model_validate(recipe))
        steps = [(h["step"], h["reward"], h["loss"], h["rl/success"], h["completions/mean_length"])
                 for h in m["log_history"] if "reward" in h]
        return steps, (tmp_path / name / "final" / "model.safetensors").read_bytes()

    import torch
    from safetensors.torch import load_file

    first, second = once("a"), once("b")
    assert len(first[0]) == 3 and len({s[1] for s in first[0]}) > 1  # rewards vary: the sampling is random
    assert first[0] == second[0]
    assert first[1] == second[1]
    start, end = load_file(model_dir / "model.safetensors"), load_file(tmp_path / "a" / "final" / "model.safetensors")
    assert any(not torch.equal(start[k], end[k]) for k in start)  # the steps did update the weights


# ---- BFCL multi-turn as an episode source (the BFCL-layout tree of tests/unit/test_bfcl_multi.py) ----------


@pytest.fixture
def bfcl_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """test_bfcl_multi's tree plus `multi_turn_base_100`, the first entry RL may train on (BFCL has
    no train split: `_0` stands for the entries eval plays)."""
    import sys

    from tests.unit.test_bfcl_multi import write_tree

    root = write_tree(tmp_path / "bfcl")
    for f in (root / "BFCL_v4_multi_turn_base.json", root / "possible_answer" / "BFCL_v4_multi_turn_base.json"):
        first = json.loads(f.read_text().splitlines()[0])
        f.write_text(f.read_text() + json.dumps({**first, "id": "multi_turn_base_100"}) + "\n")
    monkeypatch.setenv("AGENTFLAN_BFCL_DATA", str(root))
    monkeypatch.delenv("AGENTFLAN_BFCL_EVAL", raising=False)
    yield root
    for name in [m for m in sys.modules if m == "bfcl_eval" or m.startswith("bfcl_eval.")]:
        del sys.modules[name]  # the backends were imported as `bfcl_eval`: other tests import BFCL's own


def _bfcl_gold_replies(episode) -> list[str]:
    """BFCL's ground truth as the react protocol writes it, turn by turn (what a perfect policy samples)."""
    from agentflan.eval import bfcl_multi as bm
    from agentflan.formats.protocols import get_protocol
    from agentflan.models.driver import drive
    from agentflan.models.engines import ScriptedEngine

    proto = get_protocol("react")
    gold = bm.gold_responder(episode.entry, proto, episode.backends)
    texts: list[str] = []

    def respond(prompt):
        c = gold(prompt)
        texts.append(c.text)
        return c

    [played] = drive([bm.play(episode.entry, proto, episode.backends)], ScriptedEngine(respond=respond))
    assert bm.judge(episode.entry, played.turns, episode.backends)["valid"]
    return texts


def test_bfcl_multi_trains_on_base_entries_from_100_only(bfcl_tree):
    from agentflan.eval import bfcl_multi as bm
    from agentflan.rl.sources import episode_source, source_names

    assert "bfcl-multi" in source_names() and {"toolapi", "db"} <= set(source_names())
    episodes = episode_source("bfcl-multi").episodes(10, 0, "react")
    assert [e.key for e in episodes] == ["bfcl-multi/multi_turn_base_100"]  # not multi_turn_base_0: eval's
    assert [bm.is_rl_train(i) for i in ("multi_turn_base_100", "multi_turn_base_99", "multi_turn_miss_func_150",
                                        "multi_turn_base_0")] == [True, False, False, False]


def test_bfcl_multi_rollouts_are_token_exact_and_rewarded_by_bfcl_verdict(bfcl_tree, tok):
    """The gold replies pass BFCL's checker (reward 1), the rollout is the re-render of the episode,
    BFCL's execution results are masked; answering at once fails BFCL's checker (reward 0)."""
    from agentflan.formats.protocols import get_protocol
    from agentflan.formats.templates import get_template
    from agentflan.rl.rollout import EnvRollout, exact_rollout
    from agentflan.rl.sources import episode_source

    [episode] = episode_source("bfcl-multi").episodes(1, 0, "react")
    replies = _bfcl_gold_replies(episode)
    assert len(replies) > 4  # four user turns, several calls

    def rollout():
        return EnvRollout({episode.key: episode}, get_template("agentflan", tok), tok, max_turns=6, max_new_tokens=64,
                          max_completion_length=4096)

    roll = rollout()
    [r] = roll.play([episode.key], _scripted(tok, {0: replies}))
    assert r.success and r.format_ok and r.drift_turns == 0 and r.turns == len(replies)
    assert exact_rollout(r, roll.template, tok, get_protocol("react"))
    masked = tok.decode([t for t, m in zip(r.completion_ids, r.env_mask, strict=True) if not m])
    trained = tok.decode([t for t, m in zip(r.completion_ids, r.env_mask, strict=True) if m])
    assert '"created": "apples"' in masked and '"created"' not in trained  # BFCL's execution results: masked
    assert "How many apples now?" in masked  # the next user turns too
    roll = rollout()
    roll.sampler = _scripted(tok, {0: replies})
    assert roll([episode.key], trainer=None)["verdict"] == [1.0]  # what TRL's reward function receives
    answer = replies[-1]  # the gold's answer at the end of each user turn
    assert "Finish" in answer
    [lazy] = rollout().play([episode.key], _scripted(tok, {0: [answer]}))
    assert lazy.turns == 4 and lazy.format_ok and not lazy.success  # answers read fine; BFCL's checker wants calls


def test_rl_recipe_on_bfcl_multi_trains_and_says_when_bfcl_is_missing(tmp_path, model_dir, bfcl_tree, monkeypatch):
    from agentflan.rl.grpo import load_rl_recipe, run

    data = {**_recipe(tmp_path, model_dir, max_steps=1, per_device_train_batch_size=4), "envs": ["bfcl-multi"],
            "max_new_tokens": 8, "tasks": 1}
    m = run(load_rl_recipe(tmp_path / "r.yaml", data))
    assert m["global_step"] == 1 and m["tasks"] == 1 and m["protocols"] == {"bfcl-multi": "react"}
    assert m["success"] == [0.0]  # a random tiny model makes no call BFCL accepts
    from agentflan.errors import AgentflanError

    monkeypatch.setenv("AGENTFLAN_BFCL_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(AgentflanError, match="fetch_bfcl") as e:
        load_rl_recipe(tmp_path / "r.yaml", data)
    assert e.value.exit_code == 4 and str(tmp_path / "r.yaml") in str(e.value)


def test_eval_says_when_it_plays_entries_rl_trains_on(bfcl_tree, tmp_path, caplog):
    from click.testing import CliRunner

    from agentflan.cli.main import cli

    res = CliRunner().invoke(cli, ["eval", "bfcl-multi", "--policy", "expert", "--protocol", "bfcl", "--tasks",
                                   str(bfcl_tree / "BFCL_v4_multi_turn_base.json"), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    said = [r.getMessage() for r in caplog.records if "RL trains on" in r.getMessage()]
    assert said and "1 of 2 entries (multi_turn_base_100" in said[0]


def test_a_resumed_run_is_the_uninterrupted_run(tmp_path, model_dir, letters):
    """Stopped after epoch 1 (2 steps) and resumed to 4 steps, a run gives the same rewards, losses
    and model as 4 steps at once: the task order of epoch 2 does not depend on where the run started."""
    from agentflan.rl.grpo import RLRecipe, run

    def recipe(name: str, steps: int, resume: bool = False) -> RLRecipe:
        r = _recipe(tmp_path, model_dir, max_steps=steps, learning_rate=0.05, lr_scheduler_type="constant",
                    save_strategy="steps", save_steps=2)  # constant: the schedule does not depend on max_steps
        return RLRecipe.model_validate({**r, "output_dir": str(tmp_path / name), "resume": resume})

    def steps(m: dict[str, Any]) -> list[tuple[float, ...]]:
        return [(h["step"], h["reward"], h["loss"], h["grad_norm"]) for h in m["log_history"] if "reward" in h]

    straight = run(recipe("straight", 4))
    run(recipe("split", 2))
    resumed = run(recipe("split", 4, resume=True))
    assert resumed["resumed_from"] == "checkpoint-2"
    assert steps(resumed)[-2:] == steps(straight)[-2:]
    final = [(tmp_path / d / "final" / "model.safetensors").read_bytes() for d in ("straight", "split")]
    assert final[0] == final[1]


def test_the_launch_entry_point_dispatches_an_rl_recipe(tmp_path, model_dir, letters, monkeypatch):
    """`accelerate launch -m agentflan.cli.launch RECIPE key=value`: an `rl:` recipe trains with GRPO."""
    import yaml

    from agentflan.cli import launch

    f = tmp_path / "rl.yaml"
    f.write_text(yaml.safe_dump(_recipe(tmp_path, model_dir)))
    monkeypatch.setattr("sys.argv", ["launch", str(f), "rl.max_steps=1"])
    launch.main()
    m = json.loads((tmp_path / "rl" / "metrics.json").read_text())
    assert m["global_step"] == 1 and m["success"] and (tmp_path / "rl" / "final" / "agentflan.json").is_file()


PROBE = """
import json, os
from dataclasses import dataclass

from agentflan.formats.protocols import Prompt
from agentflan.rl.sources import Episode, EpisodeSource, Outcome
from agentflan.schema import SystemMessage, UserMessage


@dataclass
class ProbeEpisode(Episode):
    n: int

    @property
    def key(self):
        return f"probe/{self.n}"

    def play(self, template, max_turns):
        yield Prompt([SystemMessage(content="Reply."), UserMessage(content=f"Say something ({self.n}).")])

    def outcome(self, result):
        # which process played which task, in order; the verdict is 1 on rank 0 and 0 on rank 1, so a
        # group split across the ranks is the only kind whose rewards differ
        rank = int(os.environ["RANK"])
        with open(os.path.join(os.environ["PROBE_DIR"], f"rank-{rank}.jsonl"), "a") as f:
            f.write(json.dumps(self.key) + "\\n")
        return Outcome(success=rank == 0, format_ok=True)


class ProbeSource(EpisodeSource):
    name = "probe"

    def check(self):
        pass

    def episodes(self, n, seed, protocol):
        return [ProbeEpisode(i) for i in range(n)]
"""


def _probe_env(tmp_path: Path) -> dict[str, str]:
    """An environment for child processes where the episode source `probe` (above) is installed."""
    import os

    site = tmp_path / "site"
    info = site / "rlprobe-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: rlprobe\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[agentflan.rl_sources]\nprobe = rlprobe:ProbeSource\n")
    (site / "rlprobe.py").write_text(PROBE)
    (tmp_path / "probe").mkdir()
    src = str(Path(__file__).resolve().parents[2] / "src")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), src, os.environ.get("PYTHONPATH", "")]),
            "PROBE_DIR": str(tmp_path / "probe")}


def test_grpo_on_cpu_with_two_processes(tmp_path, model_dir):
    """`agentflan train RL-RECIPE --launcher torchrun`: two processes (gloo) each play their share of
    every GRPO batch; TRL gathers the rewards before the group advantages; one set of outputs."""
    import subprocess
    import sys

    import yaml

    # 3 tasks x 2 rollouts = one step per epoch, 3 rollouts per process: the middle group is split
    # across the processes (TRL's RepeatSampler deals a group's rollouts in order, not per process)
    recipe = {**_recipe(tmp_path, model_dir, max_steps=2, save_strategy="steps", save_steps=2,
                        per_device_train_batch_size=3, num_generations=2, lr_scheduler_type="constant"),
              "envs": ["probe"], "tasks": 3}
    f = tmp_path / "rl.yaml"
    f.write_text(yaml.safe_dump(recipe))
    env = _probe_env(tmp_path)

    def train(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "agentflan.cli.main", "train", str(f), *extra, "--launcher", "torchrun",
               "--num-processes", "2"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    proc = train()
    out = tmp_path / "rl"
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["global_step"] == 2
    assert (out / "final" / "model.safetensors").is_file() and (out / "final" / "agentflan.json").is_file()
    assert (out / "checkpoint-2").is_dir() and (out / "reward.png").is_file()
    # each process played its own half of every step's batch: 3 rollouts each, every task twice per
    # step (a whole group in all), epoch 2 reshuffled the same way on both processes
    played = [[json.loads(x) for x in (tmp_path / "probe" / f"rank-{r}.jsonl").read_text().split()] for r in (0, 1)]
    assert [len(p) for p in played] == [6, 6]
    for step in (0, 1):
        batch = played[0][3 * step:3 * step + 3] + played[1][3 * step:3 * step + 3]
        assert sorted(batch) == sorted([f"probe/{i}" for i in range(3)] * 2), batch
        assert batch[2] == batch[3]  # the group dealt across the two processes
    # the logged stats cover both processes: success 1/2 (rank 0 wins, rank 1 loses); TRL gathered the
    # rewards before grouping: exactly the split group has a nonzero spread (1 group of 3)
    logged = [h for h in m["log_history"] if "reward" in h]
    assert [h["rl/success"] for h in logged] == [0.5, 0.5]
    assert [h["frac_reward_zero_std"] for h in logged] == pytest.approx([2 / 3, 2 / 3])
    assert "Traceback" not in proc.stderr
    # one log: the trainer's lines come from the main process only (2 steps, then the summary)
    assert proc.stdout.count("'rewards/verdict/mean'") == 2 and proc.stderr.count("Loading weights: 100%") == 1
    # a resumed run on two processes goes on from the checkpoint
    train("rl.max_steps=3", "resume=true")
    m = json.loads((out / "metrics.json").read_text())
    assert m["resumed_from"] == "checkpoint-2" and m["global_step"] == 3 and m["world_size"] == 2


# ---- rollouts through TRL's vLLM generation (tests/vllm_standin.py: vLLM cannot be installed here) -------


class _OneProcess:
    num_processes = 1
    process_index = 0
    is_main_process = True
    device = "cpu"


def test_vllm_sampler_samples_a_turn_and_cuts_at_the_stops():
    """Per turn: vLLM's budget is the turn's `max_new_tokens` (restored after), the completion is cut
    after its first end-of-turn id (ids and log-probabilities alike), `num_generations` 1."""
    from agentflan.rl.rollout import VLLMSampler
    from tests.vllm_standin import STOP, Tok, VLLMGenerationStandIn, completion

    gen = VLLMGenerationStandIn(_OneProcess(), mode="colocate", max_completion_length=512)
    sampler = VLLMSampler(gen, _OneProcess(), Tok(), {STOP}, max_new_tokens=8)
    contexts = [[3, 4], [5, 6, 7, 8], [9]]
    out = sampler(contexts, (), 8)
    assert gen.budgets == [8] and gen.max_completion_length == 512 and not sampler.lockstep
    for c, (ids, lps) in zip(contexts, out, strict=True):
        full, full_lps = completion(c, 8)
        k = full.index(STOP) + 1
        assert k < 8 and ids == full[:k] and lps == [x[0] for x in full_lps[:k]]
    sampler.finish()  # nothing to join in one process
    assert gen.budgets == [8]


def test_vllm_sampler_in_lockstep_across_processes(tmp_path):
    """Server mode on 2 processes whose rounds differ in number (3 and 1) and size: every process
    joins every round, padded to the largest, so TRL's gather and slicing give each process the
    completions of its own contexts, and nobody waits forever."""
    import os
    import subprocess
    import sys

    from tests.vllm_standin import PLANS, STOP, completion

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "src")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "tests.vllm_standin", str(tmp_path)], capture_output=True, text=True, timeout=120,
                          env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert got["lockstep"] and got["calls"] == 3 and got["budgets"] == [6] and got["restored"] == 99
        assert [len(r["contexts"]) for r in got["rounds"]] == PLANS[rank]
        for r in got["rounds"]:
            for c, (ids, lps) in zip(r["contexts"], r["results"], strict=True):
                full, full_lps = completion(c, 6)
                k = full.index(STOP) + 1
                assert ids == full[:k] and lps == [x[0] for x in full_lps[:k]]


def test_rollouts_sample_with_vllm_when_the_recipe_says_so(tok, letters):
    """`rl.use_vllm`: the rollout samples through `trainer.vllm_generation`, one turn's budget per call."""
    from types import SimpleNamespace

    from agentflan.envs import get_env
    from agentflan.formats.templates import get_template
    from agentflan.rl.rollout import EnvRollout
    from agentflan.rl.sources import EnvEpisode
    from tests.vllm_standin import VLLMGenerationStandIn, completion

    specs = {f"letters/{t.id}": EnvEpisode("letters", t, "react") for t in get_env("letters").generate(2, "train", 0)}
    roll = EnvRollout(specs, get_template("agentflan", tok), tok, max_turns=1, max_new_tokens=5,
                      max_completion_length=64)
    gen = VLLMGenerationStandIn(_OneProcess(), mode="colocate", max_completion_length=64)
    trainer = SimpleNamespace(use_vllm=True, vllm_generation=gen, accelerator=_OneProcess())
    out = roll(list(specs), trainer)
    assert gen.budgets == [5]
    for p, c in zip(out["prompt_ids"], out["completion_ids"], strict=True):  # one turn: all of it sampled
        assert c and c == completion(p, 5)[0][:len(c)]


def test_use_vllm_without_vllm_exits_4(tmp_path, model_dir, letters):
    import importlib.util

    import yaml
    from click.testing import CliRunner

    from agentflan.cli.main import cli

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed")
    f = tmp_path / "rl.yaml"
    f.write_text(yaml.safe_dump(_recipe(tmp_path, model_dir, use_vllm=True)))
    res = CliRunner().invoke(cli, ["train", str(f)])
    assert res.exit_code == 4 and "rl.use_vllm" in res.output and "vLLM is not installed" in res.output, res.output


@pytest.mark.parametrize("config", ["zero3", "fsdp"])
def test_rl_under_sharded_weights_is_refused(tmp_path, model_dir, letters, config):
    import yaml
    from click.testing import CliRunner

    from agentflan.cli.main import cli

    f = tmp_path / "rl.yaml"
    f.write_text(yaml.safe_dump(_recipe(tmp_path, model_dir)))
    res = CliRunner().invoke(cli, ["train", str(f), "--launcher", "accelerate", "--accelerate-config", config])
    assert res.exit_code == 4 and "ddp or zero2" in res.output, res.output
