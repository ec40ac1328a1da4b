"""Training loss per capability: labels per token travel with the labels, and the logged losses add
up to the training loss (the paper's Figure 3)."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch", reason="training extras not installed (pip install 'agentflan[train]')")

from agentflan.formats.protocols import training_texts, training_view  # noqa: E402
from agentflan.formats.templates import get_template  # noqa: E402
from agentflan.formats.tflan import align  # noqa: E402
from agentflan.io import read  # noqa: E402
from agentflan.schema import AssistantMessage  # noqa: E402
from agentflan.training.capability_loss import NAMES, UNLABELLED, token_capabilities  # noqa: E402
from agentflan.training.masking import IGNORE, NoTrainableTokens, encode  # noqa: E402
from agentflan.training.models import tiny_tokenizer  # noqa: E402
from agentflan.training.packing import pack  # noqa: E402
from tests.helpers import FIXTURE_DATA  # noqa: E402


def _aligned_corpus(data):
    """Agent trajectories aligned (every assistant turn labelled with its capability), a few raw
    ReAct ones and some general chat."""
    react = list(read(str(data / "fireact/hotpotqa_react.jsonl"), "react"))[:30]
    tools = list(read(str(data / "toolbench/answer/*/*.json"), "toolbench"))
    chat = list(read(str(data / "llamafactory/alpaca_en_demo.json"), "alpaca"))[:10]
    aligned = [align(t, f"k{i}") for i, t in enumerate([*react, *tools])]
    return [*aligned, *react[:5], *chat]


@pytest.fixture(scope="module")
def aligned_corpus(sample_data):
    return _aligned_corpus(sample_data)


@pytest.fixture(scope="module")
def aligned_tok(aligned_corpus):
    """A tiny tokenizer trained on the aligned corpus as training renders it."""
    return tiny_tokenizer(training_texts(aligned_corpus, limit=len(aligned_corpus)))


@pytest.mark.parametrize("name", ["agentflan", "llama2", "hf"])
def test_every_trained_token_carries_its_turns_capability(aligned_corpus, aligned_tok, name):
    corpus, tok = aligned_corpus, aligned_tok
    template = get_template(name, tok)
    checked = 0
    for t in corpus:
        try:
            enc = encode(t, template, tok)
        except NoTrainableTokens:
            continue
        messages = training_view(t, template)[0]
        caps, ok = token_capabilities(enc.labels, messages)
        assert ok and len(caps) == len(enc.labels)
        assert all((c == 0) == (label == IGNORE) for c, label in zip(caps, enc.labels, strict=True))
        trained = [m for m in messages if isinstance(m, AssistantMessage) and m.loss]
        ids: dict[int, list[int]] = {}
        for tid, c in zip(enc.input_ids, caps, strict=True):
            if c:
                ids.setdefault(c, []).append(tid)
        by_id = {c: tok.decode(v) for c, v in ids.items()}
        for m in trained:  # each turn's text sits under its own capability
            cap = NAMES.index(m.capability) if m.capability else UNLABELLED
            assert m.content.strip()[:30].replace(" ", "") in by_id[cap].replace(" ", ""), (m.capability, m.content)
        checked += 1
    assert checked > 30


def test_a_mismatch_is_unlabelled_not_guessed():
    msgs = [AssistantMessage(content="a", capability="reasoning")]
    caps, ok = token_capabilities([IGNORE, 5, 6, IGNORE, 7], msgs)  # two runs, one trained turn
    assert not ok and caps == [0, UNLABELLED, UNLABELLED, 0, UNLABELLED]
    caps, ok = token_capabilities([IGNORE, 5, IGNORE], msgs)
    assert ok and caps == [0, NAMES.index("reasoning"), 0]


def test_packing_and_the_collator_carry_the_column():
    from agentflan.training.collator import BlockCausalCollator

    samples = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "capabilities": [0, 1, 2]},
               {"input_ids": [4, 5], "labels": [-100, 5], "capabilities": [0, 3]}]
    rows, _ = pack(samples, 8)
    (row,) = rows
    assert row["capabilities"] == [0, 1, 2, 0, 3] and len(row["capabilities"]) == len(row["labels"])
    batch = BlockCausalCollator(0)([row, {**samples[1], "seq_lengths": [2]}])
    assert batch["capabilities"].tolist() == [[0, 1, 2, 0, 3], [0, 3, 0, 0, 0]]


def _recipe(tmp_path, data, **kw):
    from agentflan.training.sft import TrainRecipe

    return TrainRecipe.model_validate({
        "name": "t", "model": {"name_or_path": "tiny"}, "output_dir": str(tmp_path / "run"), **kw,
        "data": {"paths": [str(data)], "template": "agentflan", "max_length": 256},
        "trl": {"per_device_train_batch_size": 4, "learning_rate": 3e-3, "use_cpu": True, "logging_steps": 1,
                "max_steps": 3, "save_strategy": "no", "report_to": "none", "disable_tqdm": True}})


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """The fixtures' aligned corpus as a file for the training runs (the fixtures only: the real
    samples would double the minutes and add nothing to losses adding up)."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(t.to_json_dict()) + "\n" for t in _aligned_corpus(FIXTURE_DATA)))
    return path


def test_losses_per_capability_add_up_to_the_training_loss(tmp_path, data_file):
    from trl import SFTConfig, SFTTrainer

    from agentflan.training.capability_loss import with_capability_loss
    from agentflan.training.collator import BlockCausalCollator
    from agentflan.training.models import load_model
    from agentflan.training.sft import prepare

    recipe = _recipe(tmp_path, data_file)
    tokenizer, rows, stats = prepare(recipe)
    assert stats["capabilities_unmatched"] == 0 and all("capabilities" in r for r in rows)
    from datasets import Dataset

    trainer = with_capability_loss(SFTTrainer)(
        model=load_model(recipe.model, tokenizer), processing_class=tokenizer,
        args=SFTConfig(output_dir=str(tmp_path / "x"), report_to="none", use_cpu=True, per_device_train_batch_size=4,
                       dataset_kwargs={"skip_prepare_dataset": True}, remove_unused_columns=False),
        train_dataset=Dataset.from_list(rows), data_collator=BlockCausalCollator(tokenizer.pad_token_id))
    batch = BlockCausalCollator(tokenizer.pad_token_id)(rows[:4])
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, dict(batch)).item()
    sums, counts = trainer._cap_sum, trainer._cap_count
    assert counts[0] == 0 and counts.sum() == (batch["labels"][:, 1:] != IGNORE).sum()
    assert float(sums.sum() / counts.sum()) == pytest.approx(loss, rel=1e-4)
    assert sum(counts[i] > 0 for i in range(1, len(NAMES))) >= 3  # several capabilities in one batch


def test_training_logs_and_plots_the_loss_of_each_capability(tmp_path, data_file):
    from agentflan.training.sft import run

    m = run(_recipe(tmp_path, data_file))
    steps = [h for h in m["log_history"] if "loss" in h]
    assert len(steps) == 3 and all("loss_reasoning" in h and "loss_retrieval" in h for h in steps)
    assert (tmp_path / "run" / "loss_by_capability.png").exists()
    off = run(_recipe(tmp_path / "off", data_file, capability_loss=False))
    assert not any(k.startswith("loss_") for h in off["log_history"] for k in h)
    assert [h["loss"] for h in off["log_history"] if "loss" in h] == pytest.approx([h["loss"] for h in steps])
