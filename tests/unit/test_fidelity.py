"""Recipe fidelity (issue 11): balancing that removes data, formats as the release writes them,
source instructions dropped where they no longer hold, the mix, decontamination, and a built-in
corpus whose thoughts say something. Each test reproduces its finding where it can."""

from __future__ import annotations

import json
import re

import pytest

from agentflan.envs import get_env
from agentflan.envs.base import ExpertPolicy, run_episode
from agentflan.envs.toolapi import answer_contains
from agentflan.formats import tflan
from agentflan.formats.agent_text import FINAL_ACTIONS
from agentflan.formats.agentinstruct import AGENTBENCH_DB_PROMPT
from agentflan.formats.neutral import TOOL_SYSTEM, neutral_view, request_of
from agentflan.formats.protocols import ReactProtocol, get_protocol, parse_react_reply
from agentflan.io import read
from agentflan.overrides import apply_overrides
from agentflan.pipeline.build import build
from agentflan.pipeline.recipe import MixConfig, load_recipe, packaged_recipes
from agentflan.schema import AssistantMessage, SystemMessage, Trajectory, UserMessage
from agentflan.tokens import approx_tokens
from tests.helpers import agentinstruct_db_records, write_jsonl
from tests.helpers import run_steps as _run


@pytest.fixture(scope="module")
def fireact(sample_data):
    return list(read(str(sample_data / "fireact/hotpotqa_react.jsonl"), "react"))


@pytest.fixture(scope="module")
def toolbench(sample_data):
    return list(read(str(sample_data / "toolbench/answer/*/*.json"), "toolbench"))


@pytest.fixture(scope="module")
def agentinstruct(tmp_path_factory):
    path = write_jsonl(tmp_path_factory.mktemp("ai") / "db.jsonl", agentinstruct_db_records(12))
    return list(read(str(path), "agentinstruct"))


# ---- balancing ----------------------------------------------------------------------------------------------

def _tokens(trajs):
    processed = sum(approx_tokens(m.content) for t in trajs for m in t.messages)
    trained = sum(approx_tokens(m.content) for t in trajs for m in t.messages
                  if isinstance(m, AssistantMessage) and m.loss)
    return processed, trained


def test_drop_mode_meets_the_ratios_and_removes_data(fireact):
    """Reproduces the finding (masking processes every token) and shows `drop` shrinking both."""
    aligned, _ = _run([{"type": "align"}], fireact)
    masked, _ = _run([{"type": "balance", "ratios": "paper"}], aligned)
    assert _tokens(masked)[0] == _tokens(aligned)[0]  # mask: the same tokens are processed
    dropped, ctxs = _run([{"type": "balance", "ratios": "paper", "mode": "drop", "scale": 0.5}], aligned)
    c = ctxs[0].stats.counts
    for cap, p in {"reasoning": 0.5, "retrieval": 0.125, "understanding": 0.375}.items():
        assert abs(c[f"turns_after:{cap}"] / c[f"turns_before:{cap}"] - p) < 0.02, cap
    assert c["dropped:no_trained_turns"] > .3 * len(fireact) and len(dropped) == len(fireact) - c["dropped:no_trained_turns"]
    assert _tokens(dropped)[0] < 0.6 * _tokens(masked)[0] and _tokens(dropped)[1] < 0.6 * _tokens(masked)[1]
    assert c["approx_tokens_processed_after"] == _tokens(dropped)[0]
    had = {t.id: {m.capability for m in t.messages if isinstance(m, AssistantMessage)} for t in aligned}
    for t in dropped:  # still whole T-FLAN conversations: they parse back, and end with a trained turn
        tflan.parse(t)
        assert isinstance(t.messages[-1], AssistantMessage) and t.messages[-1].loss
        caps = {m.capability for m in t.messages if isinstance(m, AssistantMessage) and m.loss}
        if "retrieval" in caps:  # capabilities nest: a sample trained on retrieval is trained on the rest
            # (on those it has: an episode that answers at once has no understanding turn)
            assert {"understanding", "reasoning"} & had[t.id] <= caps


def test_drop_mode_removes_thoughts_it_does_not_train(fireact):
    aligned, _ = _run([{"type": "align"}], fireact[:200])
    out, ctxs = _run([{"type": "balance", "ratios": {"reasoning": 0.5, "retrieval": 1.0, "understanding": 1.0},
                       "mode": "drop"}], aligned)
    c = ctxs[0].stats.counts
    assert c["turns_removed:reasoning"] > 0 and c["dropped:no_trained_turns"] == 0
    for t in out:
        for i, m in enumerate(t.messages):
            if isinstance(m, AssistantMessage) and m.capability == "reasoning" and i + 1 < len(t.messages):
                nxt = t.messages[i + 1]
                if isinstance(nxt, UserMessage) and nxt.content in tflan.ELICIT_TOOL:
                    assert m.loss  # an untrained thought is removed, never kept masked


def test_balance_modes_and_config():
    from agentflan.pipeline.steps.balance import BalanceConfig

    assert BalanceConfig(mode="loss").mode == "mask"  # the old name still reads
    with pytest.raises(ValueError, match="drop only"):
        BalanceConfig(scale=0.5)


def test_paper_ratios_by_step_index_override():
    """Reproduces the finding: `steps.N.ratios=paper` used to be rejected."""
    name = "outputs.toolbench_tflan_60p_r10r5u7.steps.3"
    recipe, _ = load_recipe("agent-flan", [f"{name}.ratios=paper", f"{name}.mode=drop"])
    step = recipe.steps_of("toolbench_tflan_60p_r10r5u7")[3]
    assert step.config.ratios == "paper" and step.config.mode == "drop"
    from agentflan.errors import ConfigError

    with pytest.raises(ConfigError, match="4 item"):
        apply_overrides({"s": [1, 2, 3, 4]}, ["s.7=1"])
    with pytest.raises(ConfigError, match="index it with a number"):
        apply_overrides({"s": [1]}, ["s.x=1"])


def test_packaged_recipes_for_the_paper_and_the_ablation():
    paper, _ = load_recipe("agent-flan-paper")
    assert all(s.config.ratios == "paper" for o in paper.step_outputs().values() for s in o.steps
               if s.type == "balance")
    assert "toolbench_tflan_60p_r10r25u75" in paper.outputs
    no_bal, _ = load_recipe("agent-flan-no-balance")
    assert not any(s.type == "balance" for o in no_bal.step_outputs().values() for s in o.steps)


# ---- formats ------------------------------------------------------------------------------------------------

def test_aligned_samples_drop_the_source_format_instructions(toolbench, agentinstruct):
    """Reproduces the finding (ToolBench's "Thought-call pairs" / "Finish", AgentBench's "Action:
    Operation" stated above answers in another format) and checks every non-source protocol."""
    assert all("Thought-call" in t.messages[0].content for t in toolbench)
    assert all("Action: Operation" in t.messages[0].content for t in agentinstruct)
    for name in ("tflan", "tflan:inline", "react:random", "json:random", "react"):
        proto = get_protocol(name)
        for t in [*toolbench, *agentinstruct]:
            msgs = proto.render(t, f"k:{t.id}")
            prompt = "\n".join(m.content for m in msgs if not isinstance(m, AssistantMessage))
            for marker in ("Thought-call", "AutoGPT", "Action: Operation", "Final Answer:", "give up and restart",
                           "Ok."):
                assert marker not in prompt, (name, t.id, marker)
            if t.tags.get("task") == "db":  # the task is still stated, without its format
                assert msgs[0].content.startswith("I will ask you a question")
                assert sum(isinstance(m, AssistantMessage) and not m.loss for m in msgs) == 0  # no ack, no demo
    for t in toolbench:  # the services the APIs belong to stay as context
        assert neutral_view(t).messages[0].content.startswith(TOOL_SYSTEM)
        assert "You have access of the following tools" in neutral_view(t).messages[0].content
    # the source protocols keep the source text: the AgentTuning arm and the held-in prompt
    assert get_protocol("agentinstruct:db").render(agentinstruct[0])[0].content.strip() == AGENTBENCH_DB_PROMPT.strip()
    assert "AutoGPT" in get_protocol("toolllama").render(toolbench[0])[0].content


def test_requests_are_the_request(agentinstruct, toolbench):
    for t in agentinstruct:
        assert request_of(t).startswith(("How many", "What", "Which", "Add", "Update")) or " moved to " in request_of(t)
    assert all(not request_of(t).endswith("Begin!") for t in toolbench)


def test_randomized_react_follows_its_own_format(toolbench):
    """Reproduces the finding: 2 of the 8 ToolBench samples wrote a text-only turn that breaks the
    stated format; every turn now states an action, and the final action is the one stated."""
    proto = ReactProtocol(None, ("react", "json"))
    specs = set()
    for seed in range(6):
        for t in toolbench:
            key = f"{seed}:{t.id}"
            spec = proto.spec_for(key)
            specs.add(spec)
            msgs = proto.render(t, key)
            system = msgs[0].content
            stated = system[system.index("Reply"):]
            named = set(re.findall(rf'{re.escape(spec.action_key)}"?: "?(\w+)', stated)) & set(FINAL_ACTIONS)
            assert named == {spec.final_action}, (named, spec)  # one final action, the one the answers use
            assert "Finish" not in system.replace(spec.final_action, "") or spec.final_action == "Finish"
            turns = [m for m in msgs if isinstance(m, AssistantMessage)]
            for m in turns:
                action = parse_react_reply(spec, m.content, t.tags.get("final_tool"))
                assert action.kind != "unparseable" and not action.flags, (t.id, m.content[:200])
            last = parse_react_reply(spec, turns[-1].content, t.tags.get("final_tool"))
            assert last.kind == "answer" and last.answer
            if spec.return_type:
                assert '"return_type": "give_answer"' in turns[-1].content
    assert {s.return_type for s in specs} == {True, False}


def test_instruct_varies_key_names_and_reads_them_back(toolbench, fireact):
    out, _ctxs = _run([{"type": "instruct"}], [*toolbench, *fireact[:80]])
    formats = {tuple(sorted(t.metadata["instruct_format"].items())) for t in out}
    assert len(formats) > 8
    for t in out:
        proto = get_protocol(t.tags["protocol"])
        (reply,) = [m for m in t.messages if isinstance(m, AssistantMessage)]
        action = proto.parse(reply.content, t, t.metadata["protocol_key"])
        assert action.kind == "call" and not action.flags
        fmt = t.metadata["instruct_format"]
        assert fmt["name_key"] in t.messages[0].content and fmt["args_key"] in t.messages[0].content
    fixed, _ = _run([{"type": "instruct", "random_keys": False}], toolbench)
    assert {t.tags["protocol"] for t in fixed} <= {"instruct:json", "instruct:string"}


def test_agentinstruct_in_both_formats_at_full_size(sample_data, tmp_path, agentinstruct):
    """Reproduces the finding (a 90/10 split) and checks the release's layout: both at full size."""
    folder = tmp_path / "ai"
    folder.mkdir()
    write_jsonl(folder / "db.jsonl", agentinstruct_db_records(12))
    recipe, resolved = load_recipe("agent-flan", [f"vars.data_dir={sample_data}",
                                                  f"sources.agentinstruct.paths=[{folder}/*.jsonl]",
                                                  "outputs.toolbench_negative.config.teacher=null"])
    build(recipe, resolved, tmp_path / "out")
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["outputs"]["agent_instruct_tflan"]["records"] == stats["outputs"]["agent_instruct_react"]["records"] == 12
    react = [Trajectory.model_validate_json(line) for line in
             (tmp_path / "out" / "native" / "agent_instruct_react.jsonl").read_text().splitlines()]
    assert all(t.tags["protocol"] == "agentinstruct:db" and AGENTBENCH_DB_PROMPT.strip()[:40] in t.messages[0].content
               for t in react)
    half, _ = load_recipe("agent-flan", ["vars.agentinstruct_dialect_share=0.5"])
    assert half.outputs["agent_instruct_react"].steps[0].config.end == 0.5
    # HotpotQA is not read unless asked for
    assert "fireact" not in recipe.used_sources()
    assert stats["sources"].keys() == {"toolbench", "agentinstruct", "sharegpt", "glaive", "alpaca"}


# ---- the mix ------------------------------------------------------------------------------------------------

def test_recipe_header_examples_work(sample_data, tmp_path):
    """Reproduces the finding: the header's own ShareGPT override failed with "unknown reader 'None'"."""
    sharegpt = tmp_path / "sharegpt.json"
    sharegpt.write_text(json.dumps([{"conversations": [{"from": "human", "value": f"Tell me a story about {w}."},
                                                       {"from": "gpt", "value": f"Once upon a time, a {w}..."}]}
                                    for w in ("fox", "lamp", "river")]))
    text = packaged_recipes()["agent-flan"].read_text()
    overrides = re.findall(r"'([a-z_.]+=\[[^']*\])'", text.split("\nkind:")[0])
    assert any(o.startswith("sources.sharegpt.paths=") for o in overrides)
    fixed = [o.replace("data/sharegpt.json", str(sharegpt)).replace("data/", f"{sample_data}/") for o in overrides
             if not o.startswith(("sources.toolbench", "sources.agentinstruct", "decontaminate.against"))]
    recipe, resolved = load_recipe("agent-flan", [f"vars.data_dir={sample_data}", *fixed])
    assert recipe.sources["sharegpt"].reader == "sharegpt"
    build(recipe, resolved, tmp_path / "out")
    general = (tmp_path / "out" / "native" / "general.jsonl").read_text()
    assert "Tell me a story about lamp" in general
    from agentflan.errors import ConfigError

    with pytest.raises(ConfigError, match="no `reader`"):
        load_recipe("agent-flan", ["sources.general.paths=[x.json]"])


def test_mix_by_trained_tokens_and_the_same_general_data_in_both_arms(sample_data, tmp_path):
    """Reproduces the finding (1:1 by records made general chat the bulk of the trained text, and
    the AgentTuning arm got less of it) and checks the fix."""
    common = [f"vars.data_dir={sample_data}", "vars.react_sources=[fireact]"]
    by_records, _ = load_recipe("agent-flan", [*common, "mix.by=records", "mix.basis=outputs"])
    build(by_records, {}, tmp_path / "records")
    r = json.loads((tmp_path / "records" / "stats.json").read_text())["mix"]
    assert r["general_share"]["trained"] > 0.55  # the finding: general chat dominates the trained tokens
    general = {}
    for name in ("agent-flan", "agenttuning"):
        recipe, resolved = load_recipe(name, common)
        build(recipe, resolved, tmp_path / name)
        mix = json.loads((tmp_path / name / "stats.json").read_text())["mix"]
        assert mix["general_share"]["trained"] < r["general_share"]["trained"]
        general[name] = sorted(json.loads(line)["id"] for line in
                               (tmp_path / name / "native" / "train.jsonl").read_text().splitlines()
                               if json.loads(line)["metadata"].get("output") == "general")
    assert general["agent-flan"] == general["agenttuning"] and general["agent-flan"]
    assert MixConfig(eta=0.2).chat_ratio == pytest.approx(4.0)


# ---- decontamination ----------------------------------------------------------------------------------------

def test_decontaminate_drops_records_whose_request_is_evaluated(fireact, tmp_path):
    evaluated = list(fireact[::25])
    eval_file = write_jsonl(tmp_path / "hotpot_eval.jsonl", [
        {"query": request_of(t).lower() + " (dev set)", "query_id": i} for i, t in enumerate(evaluated)])
    out, ctxs = _run([{"type": "decontaminate", "against": [str(eval_file)], "format": "toolbench_query",
                       "ngram": 8}], fireact)
    c = ctxs[0].stats.counts
    assert c["dropped:contaminated"] == c[f"contaminated:{eval_file}"] >= len(evaluated)
    kept = {t.id for t in out}
    assert not any(t.id in kept for t in evaluated)
    assert len(out) == len(fireact) - c["dropped:contaminated"] and len(out) > .9 * len(fireact)


def test_decontaminate_against_the_environments_held_out_tasks():
    info = get_env("toolapi")
    train = [run_episode(info.make(), t, ExpertPolicy(info.expert(t))).trajectory for t in info.generate(16, "train")]
    heldout = info.generate(3, "heldout")
    leaked = [run_episode(info.make(), t, ExpertPolicy(info.expert(t))).trajectory for t in heldout]
    out, ctxs = _run([{"type": "decontaminate", "envs": ["toolapi"], "env_tasks": 50}], [*train, *leaked])
    assert ctxs[0].stats.counts["contaminated:env:toolapi"] == 3 and len(out) == 16


def test_builtin_recipe_decontaminates_every_output(tmp_path):
    recipe, _ = load_recipe("builtin")
    assert recipe.decontaminate is not None and set(recipe.decontaminate.envs) == {"toolapi", "db"}
    assert all(recipe.step_entries(o)[0].type == "decontaminate" for o in recipe.step_outputs())


# ---- the built-in corpus ------------------------------------------------------------------------------------

@pytest.mark.parametrize("env", ["db", "toolapi"])
def test_expert_thoughts_state_the_plan_and_the_result(env):
    """Reproduces the finding's fillers ("The result answers the question.") as absent, and checks
    that thoughts name the task's entities and what the tools returned."""
    info = get_env(env)
    thoughts: dict[str, set[str]] = {}
    for task in info.generate(60, "train"):
        ep = run_episode(info.make(), task, ExpertPolicy(info.expert(task)))
        turns = [m for m in ep.trajectory.messages if isinstance(m, AssistantMessage)]
        texts = [m.content for m in turns]
        assert not {"The result answers the question.", "The change is done.", "I have the count.",
                    "The calculator gave the product.", "I have both populations."} & set(texts)
        thoughts.setdefault(task.template.split("#")[0], set()).update(texts)
        results = [m.content for m in ep.trajectory.messages if m.role == "tool"]
        if env == "db" and task.kind == "select":
            value = str(turns[-1].tool_calls[0].arguments["answer"][0])
            assert value in texts[-1], (texts[-1], value)  # the result it read
            slots = task.data["slots"]
            assert all(v in texts[0] for v in slots.values())  # the task's own entities
        if env == "toolapi" and results:
            payload = json.loads(results[-1])["response"]
            values = [v for v in payload.values() if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
            assert any(answer_contains(texts[-1], v) for v in values), (texts[-1], payload)
    assert all(len(v) >= 3 for v in thoughts.values())  # varied


def test_db_tflan_answers_with_the_values_and_the_dialect_is_kept(tmp_path):
    info = get_env("db")
    task = info.generate(1, "train")[0]
    traj = run_episode(info.make(), task, ExpertPolicy(info.expert(task))).trajectory
    msgs = get_protocol("tflan").render(traj, "k")
    assert msgs[-1].content == json.dumps(task.expected["label"])
    assert all(str(v) in msgs[-5].content for v in task.expected["label"])  # the conclusion states them
    dialect = get_protocol("agentinstruct:db").render(traj, "k")
    assert dialect[-1].content.endswith(f"Final Answer: {json.dumps(task.expected['label'])}")
    assert isinstance(msgs[0], SystemMessage)


def test_overlap_rules():
    from agentflan.pipeline.steps.decontaminate import EvalIndex

    index = EvalIndex(ngram=6, min_words=3)
    for text in ("Who wrote Hamlet?", "Name the largest ocean on the planet Earth today please", "Hi"):
        index.add(text, "eval")
    assert index.match("who WROTE hamlet")  # equal, normalized
    assert index.match("Tell me: who wrote Hamlet, and when?")  # a short item inside a request
    assert index.match("the largest ocean on the planet")  # a short request inside an item
    assert index.match("Quick quiz: name the largest ocean on the planet Earth, now")  # a shared 6-gram
    assert index.match("hi") and not index.match("hi there, how are you doing?")
    assert not index.match("Who wrote Macbeth?") and not index.match("largest ocean")  # under min_words: whole only


def test_every_agentinstruct_task_gets_its_request_and_a_neutral_statement(tmp_path):
    from agentflan.formats.neutral import TASK_STATEMENTS
    from tests.unit.test_agentinstruct_reader import RECORDS

    trajs = {t.tags["task"]: t for t in read(str(write_jsonl(tmp_path / "ai.jsonl", RECORDS)), "agentinstruct")}
    assert request_of(trajs["os"]) == "How many .log files are there?"  # lead-in and demo gone
    assert request_of(trajs["db"]).startswith("What is the highest score?")
    assert request_of(trajs["kg"]).startswith("Question: who is the spouse")
    for task in ("os", "db", "kg", "webshop", "alfworld"):
        view = neutral_view(trajs[task])
        assert view.messages[0].content == TASK_STATEMENTS[task]
        assert not any(isinstance(m, AssistantMessage) and not m.loss for m in view.messages)  # no ack, no demo
    assert neutral_view(trajs["mind2web"]) is trajs["mind2web"]  # one turn: the request itself
