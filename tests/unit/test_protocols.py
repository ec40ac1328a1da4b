"""Protocols: serving prompts equal training prompts token for token, and replies parse back.

The parity test is the contract of `agentflan.formats.protocols`: for every template and protocol,
on expert episodes of both environments (read back from the files the `builtin` recipe reads),
the prompt the harness builds before each assistant turn is, token for token, what training showed
before that turn, and parsing each trained turn gives back the expert's action.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="training extras not installed (pip install 'agentflan[train]')")

from agentflan.envs import get_env  # noqa: E402
from agentflan.envs.base import ExpertPolicy, Task, play, run_episode  # noqa: E402
from agentflan.formats.agent_text import FormatSpec  # noqa: E402
from agentflan.formats.protocols import (  # noqa: E402
    Completion,
    Prompt,
    get_protocol,
    parse_tool_call_text,
    training_view,
)
from agentflan.formats.templates import AgentFlanTemplate, HFTemplate, get_template  # noqa: E402
from agentflan.io.readers.toolbench import ToolBenchReader  # noqa: E402
from agentflan.io.writers.agent import ToolBenchAnswerWriter  # noqa: E402
from agentflan.models.driver import drive  # noqa: E402
from agentflan.models.engines import ScriptedEngine  # noqa: E402
from agentflan.schema import AssistantMessage, ToolMessage, Trajectory  # noqa: E402
from agentflan.training.masking import encode, prompt_ids  # noqa: E402
from agentflan.training.models import tiny_tokenizer  # noqa: E402


def env_protocols(env: str) -> list[str]:
    """Every registered protocol an episode of `env` is played in (episodic, fitting `env`): a new
    protocol is under the parity tests once it is registered."""
    from agentflan.formats.protocols import PROTOCOLS

    return [n for n in PROTOCOLS.names(ordered=True) if (p := get_protocol(n)).episodic and p.fits(env)]


def test_env_protocols_are_the_trained_ones():
    base = ["native", "react", "json", "react:random", "json:random", "toolllama", "tflan", "tflan:nocot",
            "tflan:inline"]
    assert env_protocols("toolapi") == base and env_protocols("db") == [*base, "agentinstruct:db"]


# a compact Hermes/Qwen-style template that renders tools and tool calls itself (the `native` path)
HERMES = (
    "{%- if tools %}{{ '<|im_start|>system\\n' }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    "{% endif %}{{ '\\n<tools>\\n' }}{% for t in tools %}{{ t | tojson }}{{ '\\n' }}{% endfor %}"
    "{{ '</tools><|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'system' %}{% if not tools %}{{ '<|im_start|>system\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{%- elif m['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' + m['content'] }}"
    "{%- for c in m.get('tool_calls') or [] %}{{ '<tool_call>\\n{\"name\": \"' + c['function']['name'] + "
    "'\", \"arguments\": ' + (c['function']['arguments'] | tojson) + '}\\n</tool_call>' }}{%- endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{%- elif m['role'] == 'tool' %}{{ '<|im_start|>user\\n<tool_response>\\n' + m['content'] + "
    "'\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}")


def _episodes(env: str, n: int) -> list[tuple[Task, Trajectory]]:
    """Expert episodes as training reads them: Tool-API through ToolBench answer files (as the
    `builtin` recipe reads them), DB episodes as native records."""
    info = get_env(env)
    out = []
    for task in info.generate(n, "train", 3):
        ep = run_episode(info.make(), task, ExpertPolicy(info.expert(task)))
        assert ep.verdict.success
        if env == "toolapi":
            rec = ToolBenchAnswerWriter().record(ep.trajectory)
            from agentflan.io.base import RecordContext
            from agentflan.io.files import RawRecord

            ctx = RecordContext(RawRecord(f"{task.id}_answer/{task.id}.json", None, 0), "toolbench", None)
            traj = ToolBenchReader().parse(rec, ctx)
        else:
            traj = Trajectory.model_validate(ep.trajectory.to_json_dict())
        out.append((task, traj))
    return out


@pytest.fixture(scope="module")
def episodes():
    return {"toolapi": _episodes("toolapi", 10), "db": _episodes("db", 6)}


@pytest.fixture(scope="module")
def episode_tok(episodes):
    """A tiny tokenizer trained on every environment episode as each protocol renders it."""
    texts = []
    for env, eps in episodes.items():
        for name in env_protocols(env):
            proto = get_protocol(name, AgentFlanTemplate())
            texts += [m.content for _, t in eps for m in proto.render(t, "k")]
    return tiny_tokenizer(texts)


def _templates(tok):
    from transformers import PreTrainedTokenizerFast

    hermes = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<|im_end|>",
                                     pad_token="<pad>", bos_token="<s>")
    hermes.chat_template = HERMES
    return {"agentflan": get_template("agentflan"), "llama2": get_template("llama2"),
            "hf": HFTemplate(tok), "hf-tools": HFTemplate(hermes)}


def _reply(template, msgs, tools, j) -> str:
    """What the model says at assistant turn j when it says what it was trained to say."""
    before = template.text(msgs[:j], tools, add_generation_prompt=True)
    text = template.text(msgs[: j + 1], tools)[len(before):]
    for stop in template.stop:
        text = text.split(stop)[0]
    return text


def _calls(traj: Trajectory):
    final = traj.tags.get("final_tool")
    out = []
    for m in traj.messages:
        if isinstance(m, AssistantMessage):
            out += [(c.name, c.arguments) for c in m.tool_calls if c.name != final]
    return out


@pytest.mark.parametrize("template_name", ["agentflan", "llama2", "hf", "hf-tools"])
@pytest.mark.parametrize("env", ["toolapi", "db"])
def test_serving_prompts_equal_training_prompts(episodes, episode_tok, template_name, env):
    tok = episode_tok
    template = _templates(tok)[template_name]
    tokenizer = getattr(template, "tokenizer", tok)
    names = env_protocols(env)
    info = get_env(env)
    turns = 0
    for name in names:
        proto = get_protocol(name, template)
        assert name != "native" or proto.structured == (template_name == "hf-tools")
        for task, traj in episodes[env]:
            key = f"key:{task.id}"
            trained = proto.apply(traj, key)
            msgs, tools, rendered_as = training_view(trained, template)
            assert rendered_as == proto.name
            if tools is None:  # tools are stated in the text, from the first turn on
                assert all(t.name in msgs[0].content for t in traj.tools if t.name != traj.tags["final_tool"]) \
                    or name.startswith("agentinstruct")
            full = encode(trained, template, tokenizer).input_ids
            generated = [j for j, m in enumerate(msgs) if isinstance(m, AssistantMessage) and m.loss]
            expected = [prompt_ids(template, tokenizer, msgs[:j], tools) for j in generated]
            labels = encode(trained, template, tokenizer).labels
            for ids in expected:  # training shows exactly this before the turn, and trains what follows
                assert full[: len(ids)] == ids and labels[len(ids)] != -100
            engine = ScriptedEngine([_reply(template, msgs, tools, j) for j in generated])
            (ep,) = drive([play(info.make(), task, proto, key=key)], engine)
            served = [prompt_ids(template, tokenizer, p.messages, p.tools) for p in engine.prompts]
            assert served == expected, f"{name}/{template_name}/{task.id}: a serving prompt differs from training"
            assert ep.error is None and ep.verdict.success, (name, template_name, task.id, ep.verdict, ep.actions)
            assert _calls(ep.trajectory) == _calls(traj)
            assert all(a["kind"] != "unparseable" and not a["flags"] for a in ep.actions), ep.actions
            turns += len(served)
    assert turns > 100


def test_a_broken_renderer_is_caught(episodes, episode_tok, monkeypatch):
    tok = episode_tok
    """The parity check bites: a serving-side rendering that differs by one character fails it."""
    import agentflan.formats.tflan as tflan

    template = get_template("agentflan")
    task, traj = episodes["toolapi"][0]
    proto = get_protocol("tflan")
    msgs = proto.apply(traj, "k").messages
    generated = [j for j, m in enumerate(msgs) if isinstance(m, AssistantMessage) and m.loss]
    expected = [prompt_ids(template, tok, msgs[:j]) for j in generated]
    monkeypatch.setattr(tflan, "OBSERVATION", tuple(o.replace("returned", "gave") for o in tflan.OBSERVATION))
    engine = ScriptedEngine([_reply(template, msgs, None, j) for j in generated])
    drive([play(get_env("toolapi").make(), task, proto, key="k")], engine)
    served = [prompt_ids(template, tok, p.messages) for p in engine.prompts]
    assert served != expected


# ---- parsers on hand-made replies: every outcome ---------------------------------------------------------

def _traj(final_tool="Finish", tools=("get_x", "Finish")):
    from agentflan.schema import Source, ToolSpec, UserMessage

    return Trajectory(id="t", messages=[UserMessage(content="q")], source=Source(format="t"),
                      tools=[ToolSpec(name=n) for n in tools], tags={"final_tool": final_tool})


def _act(name, *texts, traj=None):
    gen = get_protocol(name).act(traj or _traj(), "k")
    prompt = next(gen)
    assert isinstance(prompt, Prompt)
    try:
        for t in texts:
            stop = "\nObservation:" if t.endswith("<OBS>") else None
            gen.send(Completion(text=t.removesuffix("<OBS>"), stop=stop))
    except StopIteration as s:
        return s.value
    raise AssertionError("the protocol wanted more turns")


@pytest.mark.parametrize(("name", "texts", "kind", "call", "flag"), [
    ("react", ['Thought: t\nAction: get_x\nAction Input: {"a": 1}'], "call", ("get_x", {"a": 1}), None),
    ("react", ['Thought: t\nAction: nope\nAction Input: {"a": 1}'], "call", ("nope", {"a": 1}), None),
    ("react", ['Thought: t\nAction: get_x\nAction Input: {"a": 1'], "unparseable", None, None),
    ("react", ["Just an answer without the format."], "unparseable", None, None),
    ("react", ['Thought: done\nAction: Finish\nAction Input: {"final_answer": "42"}'], "answer", None, None),
    ("react", ['Action: get_x\nAction Input: {"a": 1}\nObservation: {"made": "up"}'], "call", ("get_x", {"a": 1}),
     "extra_text"),
    ("react", ['Action: get_x\nAction Input: {"a": 1}<OBS>'], "call", ("get_x", {"a": 1}), "hallucinated_observation"),
    ("json", ['{"Thought": "t", "Action": "get_x", "Action Input": {"a": 1}}'], "call", ("get_x", {"a": 1}), None),
    ("json", ['{"Thought": "t", "Action": "get_x", "Action Input": {"a": '], "unparseable", None, None),
    ("json", ['{"Thought": "t"}'], "unparseable", None, None),
    ("json", ['{"Action": "Finish", "Action Input": {"final_answer": "42"}}'], "answer", None, None),
    ("native", ['<tool_call>\n{"name": "get_x", "arguments": {"a": 1}}\n</tool_call>'], "call", ("get_x", {"a": 1}),
     None),
    ("native", ['<tool_call>{"name": "get_x", "arguments": {oops}}</tool_call>'], "unparseable", None, None),
    ("native", ["42"], "answer", None, None),
    ("native", ['{"name": "Finish", "arguments": {"return_type": "give_answer", "final_answer": "42"}}'], "answer",
     None, None),
    ("tflan", ["I need x.", "I'll use `get_x`.", '```json\n{"a": 1}\n```'], "call", ("get_x", {"a": 1}), None),
    ("tflan", ["I need x.", "I'll use `nope`.", '```json\n{"a": 1}\n```'], "call", ("nope", {"a": 1}), "unknown_tool"),
    ("tflan", ["I need x.", "Hmm, maybe."], "unparseable", None, None),
    ("tflan", ["I need x.", "I'll use `get_x`.", "a = 1"], "unparseable", None, None),
    ("tflan", ["I know it.", "No tool is needed now; I can answer.", "42"], "answer", None, None),
    ("tflan", ["I need x.", "get_x fits.", '```json\n{"a": 1}\n```'], "call", ("get_x", {"a": 1}), None),
    ("tflan:inline", ['I need x.\n\nI\'ll use `get_x`.\n```json\n{"a": 1}\n```'], "call", ("get_x", {"a": 1}), None),
    ("tflan:inline", ["I know it.", "42"], "answer", None, None),
    ("tflan:inline", ["I'll use x.\n```json\n{oops\n```"], "unparseable", None, None),
    ("toolllama", ['Thought: t\nAction: Finish\nAction Input: {"return_type": "give_answer", "final_answer": "42"}'],
     "answer", None, None),
])
def test_replies_parse_to_every_outcome(name, texts, kind, call, flag):
    action = _act(name, *texts)
    assert action.kind == kind, action
    if call is not None:
        assert (action.calls[0].name, action.calls[0].arguments) == call
    if kind == "answer":
        assert action.answer == "42"
    if flag is not None:
        assert flag in action.flags
    assert action.texts == [t.removesuffix("<OBS>") for t in texts]


def test_agentbench_db_replies_follow_agentbench_rules():
    traj = _traj("answer", ("operation", "answer"))
    traj.tags["task"] = "db"
    ok = _act("agentinstruct:db", "I count them.\nAction: Operation\n```sql\nSELECT\nCOUNT(*) FROM t;\n```", traj=traj)
    assert ok.kind == "call" and ok.calls[0].arguments == {"sql": "SELECT COUNT(*) FROM t;"}
    assert _act("agentinstruct:db", 'Action: Answer\nFinal Answer: ["7"]', traj=traj).answer == '["7"]'
    assert _act("agentinstruct:db", "Action: Operation\nSELECT 1", traj=traj).kind == "unparseable"
    assert _act("agentinstruct:db", "The answer is 7.", traj=traj).kind == "unparseable"


def test_tool_call_text_parser():
    msg = parse_tool_call_text('I will look.\n<tool_call>\n{"name": "get_x", "arguments": {"a": "K"}}\n</tool_call>')
    assert msg.content == "I will look." and msg.tool_calls[0].arguments == {"a": "K"}
    bare = parse_tool_call_text('{"name": "add", "arguments": "{\\"a\\": 1, \\"b\\": 2}"}')
    assert bare.content == "" and bare.tool_calls[0].arguments == {"a": 1, "b": 2}
    assert parse_tool_call_text("<tool_call>{oops}</tool_call>").tool_calls[0].parse_error
    assert parse_tool_call_text("Just an answer.").tool_calls == []


def test_protocol_names_and_formats():
    from agentflan.errors import ConfigError

    assert get_protocol('react:{"action_key": "Tool", "input_key": "Args"}').spec == FormatSpec(
        action_key="Tool", input_key="Args")
    with pytest.raises(ConfigError, match="did you mean"):
        get_protocol("tflan:inlin")
    assert get_protocol("native", get_template("agentflan")).name == "react"  # no tool rendering: stated once


def test_text_templates_refuse_structured_messages(episodes):
    from agentflan.formats.templates import TemplateError

    _, traj = episodes["toolapi"][0]
    with pytest.raises(TemplateError, match="protocol"):
        AgentFlanTemplate().render(traj.messages)
    assert any(isinstance(m, ToolMessage) for m in traj.messages)


@pytest.mark.slow
@pytest.mark.parametrize("template_name", ["agentflan", "llama2", "hf"])
def test_parity_with_smollm2s_real_tokenizer(episodes, template_name):
    """The same contract with SmolLM2's byte-level BPE, which merges across the generation prompt's
    end when a whole text is tokenized (U+0D46 followed by `{`): segments are tokenized apart."""
    from transformers import AutoTokenizer

    from agentflan.training.models import ModelConfig, resolve

    tokenizer = AutoTokenizer.from_pretrained(resolve(ModelConfig(name_or_path="gguf:smollm2-135m-instruct")))
    template = get_template(template_name, tokenizer)
    for env in ("toolapi", "db"):
        info = get_env(env)
        for name in env_protocols(env):
            proto = get_protocol(name, template)
            for task, traj in episodes[env][:4]:
                trained = proto.apply(traj, "k")
                msgs, tools, _ = training_view(trained, template)
                enc = encode(trained, template, tokenizer)
                generated = [j for j, m in enumerate(msgs) if isinstance(m, AssistantMessage) and m.loss]
                expected = [prompt_ids(template, tokenizer, msgs[:j], tools) for j in generated]
                assert all(enc.input_ids[: len(ids)] == ids and enc.labels[len(ids)] != -100 for ids in expected)
                engine = ScriptedEngine([_reply(template, msgs, tools, j) for j in generated])
                (ep,) = drive([play(info.make(), task, proto, key="k")], engine)
                assert [prompt_ids(template, tokenizer, p.messages, p.tools) for p in engine.prompts] == expected
                assert ep.verdict.success, (name, task.id, ep.actions)


@pytest.mark.parametrize("template_name", ["agentflan", "llama2", "hf"])
def test_instruct_prompts_equal_training_prompts(episodes, episode_tok, template_name):
    tok = episode_tok
    """The single-step protocols, fixed and with drawn key names: the prompt a step-level evaluation
    shows before the call is what training showed, and the trained reply parses back to the call."""
    template = _templates(tok)[template_name]
    tokenizer = getattr(template, "tokenizer", tok)
    checked = 0
    for name in ("instruct:json", "instruct:string", "instruct:json:random", "instruct:string:random"):
        proto = get_protocol(name)
        for env in ("toolapi", "db"):
            for task, traj in episodes[env]:
                final = traj.tags.get("final_tool")
                for i, m in enumerate(traj.messages):
                    if not isinstance(m, AssistantMessage) or not m.tool_calls or m.tool_calls[0].name == final:
                        continue
                    key = f"key:{task.id}:{i}"
                    upto = traj.model_copy(update={"messages": traj.messages[: i + 1]})
                    trained = proto.apply(upto, key)
                    before = traj.model_copy(update={"messages": traj.messages[:i]})
                    prompt = proto.prompt(proto.render(before, key), before)
                    full = encode(trained, template, tokenizer)
                    ids = prompt_ids(template, tokenizer, prompt.messages, prompt.tools)
                    assert full.input_ids[: len(ids)] == ids and full.labels[len(ids)] != -100
                    action = proto.parse(trained.messages[-1].content, before, key)
                    assert action.kind == "call" and not action.flags
                    assert (action.calls[0].name, action.calls[0].arguments) == (m.tool_calls[0].name,
                                                                                 m.tool_calls[0].arguments)
                    checked += 1
    assert checked > 50
