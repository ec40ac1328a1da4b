"""Our exports loaded by the tools they are meant for: TRL's SFTTrainer, LLaMA-Factory's data loader.

The TRL tests run by default (TRL is in the `train` extra): the loss mask TRL applies is compared
with ours token by token. LLaMA-Factory is not a dependency: its test is `slow` and skips unless
`llamafactory` is importable (`make test-slow` installs it without its dependencies, see the
Makefile); its acceptance rules are also checked here without it, on every source.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trl", reason="training extras not installed (pip install 'agentflan[train]')")

from agentflan.envs.synth import synth
from agentflan.formats.protocols import training_texts
from agentflan.formats.templates import HFTemplate
from agentflan.io import WRITERS, read
from agentflan.io.writers.chat import USER_SIDE
from agentflan.schema import (
    AssistantMessage,
    Source,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Trajectory,
    UserMessage,
)
from agentflan.training.export import export_tokenized
from agentflan.training.masking import IGNORE, encode
from agentflan.training.models import tiny_model, tiny_tokenizer

# ChatML that knows tools, with `{% generation %}` around what an assistant turn says (what TRL's
# assistant_only_loss masks with), and prefix-preserving (what our HF template masks with).
TOOL_CHATML = (
    "{%- if tools %}<|im_start|>system\n{% if messages and messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] }}\n{% endif %}Tools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'system' and tools and loop.first %}"
    "{%- elif m['role'] == 'assistant' %}<|im_start|>assistant\n{% generation %}{{ m['content'] }}"
    "{%- for c in m.get('tool_calls') or [] %}<tool_call>{{ {'name': c['function']['name'], "
    "'arguments': c['function']['arguments']} | tojson }}</tool_call>{% endfor %}<|im_end|>{% endgeneration %}\n"
    "{%- else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def _agentbench_style() -> Trajectory:
    """An instruction, an untrained "OK." (as AgentBench and AgentInstruct present it), a call, an answer."""
    return Trajectory(id="ab-0", source=Source(format="native"), messages=[
        UserMessage(content="You operate a SQL database. Use operation(sql), then answer."),
        AssistantMessage(content="OK.", loss=False),
        UserMessage(content="How many rows does table T have?"),
        AssistantMessage(content="I count them.", tool_calls=[
            ToolCall(id="c0", name="operation", arguments={"sql": "SELECT COUNT(*) FROM T"})]),
        ToolMessage(content="[(3,)]", tool_call_id="c0", name="operation"),
        AssistantMessage(content="There are 3 rows.")])


@pytest.fixture(scope="module")
def peer_corpus(sample_data, tmp_path_factory):
    """A dozen trajectories of each tool-calling source, synthesized DB episodes and an AgentBench-style
    conversation with an untrained turn."""
    trajs = []
    for rel, fmt in [("llamafactory/glaive_toolcall_en_demo.json", "sharegpt"), ("fireact/hotpotqa_react.jsonl", "react"),
                     ("toolbench/answer", "toolbench"), ("llamafactory/reason_tool_use_demo_50.jsonl", "openai")]:
        trajs += list(read(str(sample_data / rel), fmt))[:12]
    out = tmp_path_factory.mktemp("synth")
    synth("db", 6, "train", out, seed=0)
    trajs += list(read(str(out / "db" / "train" / "agentinstruct.jsonl"), "agentinstruct"))
    return [*trajs, _agentbench_style()]


@pytest.fixture(scope="module")
def chatml_tok(peer_corpus):
    """A tiny tokenizer trained on the peer corpus, with a ChatML template for tools (TRL and LLaMA-Factory read it)."""
    tokenizer = tiny_tokenizer(training_texts(peer_corpus, limit=len(peer_corpus)))
    tokenizer.chat_template = TOOL_CHATML
    return tokenizer


def _trainer(dataset, chatml_tok, tmp_path, **config):
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=str(tmp_path / "run"), max_length=None, max_steps=2, per_device_train_batch_size=2,
                     report_to="none", use_cpu=True, save_strategy="no", logging_steps=1, **config)
    return SFTTrainer(model=tiny_model(len(chatml_tok)), args=args, train_dataset=dataset, processing_class=chatml_tok)


def _load_json(path):
    from datasets import load_dataset

    return load_dataset("json", data_files=str(path), split="train")


def test_trl_trains_the_hf_export_with_our_mask_wherever_every_assistant_turn_is_trained(peer_corpus, chatml_tok, tmp_path):
    path = tmp_path / "hf.jsonl"
    report = WRITERS.get("hf")().write(peer_corpus, path)
    assert report.written == len(peer_corpus) and not report.unwritable
    assert report.lossy["untrained_assistant_turns"] == 1  # the "OK." turn, which TRL cannot leave untrained
    trainer = _trainer(_load_json(path), chatml_tok, tmp_path, assistant_only_loss=True)
    ours = HFTemplate(chatml_tok)
    same = 0
    for traj, row in zip(peer_corpus, trainer.train_dataset, strict=True):
        enc = encode(traj, ours, chatml_tok)
        assert row["input_ids"] == enc.input_ids, traj.id  # arguments as objects: one rendering, no double encoding
        if all(m.loss for m in traj.messages if isinstance(m, AssistantMessage)):
            assert row["labels"] == enc.labels, traj.id
            same += 1
        else:  # TRL trains every assistant turn: exactly the untrained "OK." more than ours
            extra = [i for i, (a, b) in enumerate(zip(row["labels"], enc.labels, strict=True)) if a != b]
            assert extra and all(enc.labels[i] == IGNORE for i in extra)
            assert "OK." in chatml_tok.decode([row["input_ids"][i] for i in extra])
    assert same == len(peer_corpus) - 1
    assert trainer.train().training_loss > 0


def test_trl_uses_the_tokenized_export_labels_as_they_are(peer_corpus, chatml_tok, tmp_path):
    path = tmp_path / "chatml_tok.jsonl"
    ours = HFTemplate(chatml_tok)
    report = export_tokenized(peer_corpus, path, ours, chatml_tok)
    assert report.written == len(peer_corpus)
    trainer = _trainer(_load_json(path), chatml_tok, tmp_path)
    for traj, row in zip(peer_corpus, trainer.train_dataset, strict=True):
        assert row["labels"] == encode(traj, ours, chatml_tok).labels, traj.id
    # and the collator keeps them (padding with -100 only)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(peer_corpus) - 2, len(peer_corpus))])
    for b, traj in zip(batch["labels"].tolist(), peer_corpus[-2:], strict=True):
        want = encode(traj, ours, chatml_tok).labels
        assert b[: len(want)] == want and set(b[len(want):]) <= {IGNORE}
    assert trainer.train().training_loss > 0


def test_tokenized_export_counts_what_it_cannot_train(chatml_tok, tmp_path):
    untrained = Trajectory(id="u", source=Source(format="native"), messages=[
        UserMessage(content="hi"), AssistantMessage(content="hello", loss=False)])
    report = export_tokenized([untrained, _agentbench_style()], tmp_path / "t.jsonl", HFTemplate(chatml_tok), chatml_tok)
    assert (report.written, dict(report.unwritable)) == (1, {"no_trainable_tokens": 1})
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 1


# ---- LLaMA-Factory -------------------------------------------------------------------------------

def _llamafactory_accepts(rec: dict) -> str | None:
    """LLaMA-Factory's ShareGPT converter and supervised processor rules (read from its
    `data/converter.py`, `data/formatter.py` and `data/processor/supervised.py`): why a record would
    be skipped or crash, or None."""
    conv = rec["conversations"]
    for k, turn in enumerate(conv):
        if (turn["from"] in USER_SIDE) != (k % 2 == 0) or turn["from"] not in (*USER_SIDE, "gpt", "function_call"):
            return f"invalid role tag at turn {k}"
        if turn["from"] == "function_call":
            calls = json.loads(turn["value"])
            for c in calls if isinstance(calls, list) else [calls]:
                if not isinstance(c["arguments"], dict) or not c["name"]:
                    return "bad function call"
    if not conv or len(conv) % 2:
        return "invalid message count"
    for tool in json.loads(rec.get("tools") or "[]"):
        if not isinstance(tool["parameters"].get("properties"), dict):
            return "tool without parameters.properties"
    return None


def _edge_cases() -> list[Trajectory]:
    src = Source(format="native")
    call = lambda i, name="f": ToolCall(id=f"c{i}", name=name, arguments={"x": i})  # noqa: E731
    return [
        Trajectory(id="parallel", source=src, messages=[
            UserMessage(content="q"), AssistantMessage(tool_calls=[call(0), call(1)]),
            ToolMessage(content="r0", tool_call_id="c0"), ToolMessage(content="r1", tool_call_id="c1"),
            AssistantMessage(content="done")]),
        Trajectory(id="two-users-then-thought-then-call", source=src, messages=[
            SystemMessage(content="s"), UserMessage(content="a"), UserMessage(content="b"),
            AssistantMessage(content="thinking"), AssistantMessage(tool_calls=[call(0)]),
            ToolMessage(content="r", tool_call_id="c0"), UserMessage(content="retry note"),
            AssistantMessage(tool_calls=[call(1)]), ToolMessage(content="r", tool_call_id="c1")]),
        Trajectory(id="assistant-first", source=src, messages=[AssistantMessage(content="hi"), UserMessage(content="x")]),
        Trajectory(id="no-assistant", source=src, messages=[SystemMessage(content="s"), UserMessage(content="x")]),
        Trajectory(id="system-inside", source=src, messages=[
            UserMessage(content="x"), SystemMessage(content="s"), AssistantMessage(content="y")]),
        Trajectory(id="unparsed", source=src, messages=[UserMessage(content="x"), AssistantMessage(tool_calls=[
            ToolCall(id="c", name="f", raw="{oops", parse_error="invalid JSON")])]),
        Trajectory(id="text-after-call", source=src, messages=[
            UserMessage(content="x"), AssistantMessage(tool_calls=[call(0)]), AssistantMessage(content="y")]),
    ]


def test_sharegpt_records_follow_llamafactory_rules_or_are_counted(peer_corpus, tmp_path):
    writer = WRITERS.get("sharegpt")()
    report = writer.write([*peer_corpus, *_edge_cases()], tmp_path / "lf.json")
    recs = json.loads((tmp_path / "lf.json").read_text())
    assert [r["id"] for r in recs if _llamafactory_accepts(r)] == []
    assert report.written == len(recs) == len(peer_corpus) + 2
    assert dict(report.unwritable) == {"assistant_first": 1, "call_without_result": 1, "no_assistant_turn": 1,
                                       "system_inside_conversation": 1, "unparsed_tool_call": 1}
    unwritten = WRITERS.get("sharegpt")()
    unwritten.write([t for t in _edge_cases() if t.id == "assistant-first"], tmp_path / "none.json")
    assert unwritten.report.lossy == {}  # what a record would have lost is not counted when it is not written
    by_id = {r["id"]: r for r in recs}
    parallel = by_id["parallel"]["conversations"]
    assert json.loads(parallel[1]["value"]) == [{"name": "f", "arguments": {"x": 0}}, {"name": "f", "arguments": {"x": 1}}]
    assert json.loads(parallel[2]["value"]) == ["r0", "r1"]
    merged = by_id["two-users-then-thought-then-call"]
    assert [t["from"] for t in merged["conversations"]] == ["human", "function_call", "observation", "function_call"]
    assert merged["conversations"][0]["value"] == "a\n\nb" and merged["system"] == "s"
    assert "system" not in by_id["parallel"] and "tools" not in by_id["parallel"]
    info = writer.dataset_info(tmp_path / "lf.json")
    assert info is not None and info["lf"]["columns"] == {"messages": "conversations", "system": "system",
                                                          "tools": "tools"}
    assert info["lf"]["file_name"] == str((tmp_path / "lf.json").resolve())


@pytest.mark.slow
def test_llamafactory_loads_every_written_record(peer_corpus, chatml_tok, tmp_path):
    """LLaMA-Factory's own `get_dataset` (0.9.5): every record we write survives its converter and
    its supervised preprocessing, mixed files (with and without system/tools) included."""
    import importlib.machinery
    import importlib.util
    import os
    import sys
    import types

    if importlib.util.find_spec("llamafactory") is None:
        pytest.skip("llamafactory not installed (make test-slow installs it: pip install --no-deps llamafactory "
                    "omegaconf)")
    os.environ["DISABLE_VERSION_CHECK"] = "1"  # it pins older transformers/datasets/trl; its data path works with ours
    if importlib.util.find_spec("torchaudio") is None:  # imported by its multimodal plugin, unused for text
        stub = types.ModuleType("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", None)
        sys.modules["torchaudio"] = stub
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from transformers import AutoTokenizer

    from agentflan.cli.data import _merge_dataset_info

    chatml_tok.save_pretrained(tmp_path / "chatml_tok")
    info_file = tmp_path / "lf" / "dataset_info.json"
    groups = {"mixed": peer_corpus, "edge": _edge_cases()}
    written = {}
    for name, trajs in groups.items():
        writer = WRITERS.get("sharegpt")()
        out = tmp_path / "data" / f"{name}.json"
        written[name] = writer.write(trajs, out).written
        entry = writer.dataset_info(out)
        assert entry is not None
        _merge_dataset_info(info_file, entry)
    for name in groups:
        model_args, data_args, training_args, *_ = get_train_args({
            "stage": "sft", "model_name_or_path": str(tmp_path / "chatml_tok"), "dataset": name,
            "dataset_dir": str(info_file.parent), "template": "qwen", "output_dir": str(tmp_path / "out"),
            "do_train": True, "cutoff_len": 1_000_000, "overwrite_cache": True, "report_to": "none"})
        lf_tok = AutoTokenizer.from_pretrained(tmp_path / "chatml_tok")
        template = get_template_and_fix_tokenizer(lf_tok, data_args)
        ds = get_dataset(template, model_args, data_args, training_args, stage="sft", tokenizer=lf_tok)["train_dataset"]
        assert len(ds) == written[name], name
        assert all(any(label != IGNORE for label in row["labels"]) for row in ds)


@pytest.fixture(scope="module")
def agent_flan_build(sample_data, tmp_path_factory):
    """An `agent-flan` build written in native and hf: T-FLAN, ReAct and instruct text that a
    protocol rendered (tools stated in the system text) beside structured chat with tools."""
    from agentflan.pipeline.build import build
    from agentflan.pipeline.recipe import load_recipe

    out = tmp_path_factory.mktemp("agent-flan-hf")
    recipe, resolved = load_recipe("agent-flan", [f"vars.data_dir={sample_data}", "vars.react_sources=[]",
                                                  "write=[native,hf]", "report=false",
                                                  "sources.toolbench.options.limit=40"])
    build(recipe, resolved, out)
    return out


def test_trl_tokenizes_an_agent_flan_hf_export_as_data_tokenize_does(agent_flan_build, tmp_path):
    """The hf export through TRL's chat-template path gives the token ids of `agentflan data
    tokenize` on the same build: the tools a protocol stated in the system text are not rendered
    again from a `tools` column."""
    from agentflan.formats.protocols import rendered_protocol

    native = list(read(str(agent_flan_build / "native" / "train.jsonl"), "native"))
    rows = [json.loads(line) for line in (agent_flan_build / "hf" / "train.jsonl").read_text().splitlines()]
    rendered = [t for t in native if rendered_protocol(t) not in (None, "native") and t.tools]
    assert len(rendered) >= 5 and any("tools" in r for r in rows)  # both kinds are in the build
    tok = tiny_tokenizer(training_texts(native, limit=len(native)))
    tok.chat_template = TOOL_CHATML
    tokenized = tmp_path / "tok.jsonl"
    export_tokenized(native, tokenized, HFTemplate(tok), tok)  # what `agentflan data tokenize` writes
    ours = [json.loads(line)["input_ids"] for line in tokenized.read_text().splitlines()]
    trainer = _trainer(_load_json(agent_flan_build / "hf" / "train.jsonl"), tok, tmp_path)
    assert len(trainer.train_dataset) == len(ours) == len(native)
    for traj, row, ids in zip(native, trainer.train_dataset, ours, strict=True):
        assert row["input_ids"] == ids, traj.id
    assert all("tools" not in r for t, r in zip(native, rows, strict=True) if t in rendered)
