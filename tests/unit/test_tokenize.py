"""Batch tokenization with loss masks, parallel and cached preparation of training rows."""

from __future__ import annotations

import json
import random
import threading

import pytest

pytest.importorskip("transformers", reason="training extras not installed (pip install 'agentflan[train]')")

from agentflan.formats.templates import get_template
from agentflan.io import read
from agentflan.training import prepared
from agentflan.training.masking import IGNORE, NoTrainableTokens, encode, encode_segments_batch, render
from agentflan.training.models import tiny_tokenizer


def reference(segments, tok, max_length=None, add_bos=False):
    """The definition, plainly: each non-empty segment tokenized on its own by the tokenizer's
    call, concatenated; a token is trained when its segment is."""
    ids, labels = [], []
    for text, trained in segments:
        if text:
            piece = list(tok(text, add_special_tokens=False)["input_ids"])
            ids += piece
            labels += piece if trained else [IGNORE] * len(piece)
    if add_bos:
        ids, labels = [tok.bos_token_id, *ids], [IGNORE, *labels]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return (ids, labels) if any(x != IGNORE for x in labels) else None


@pytest.fixture(scope="module")
def data(sample_data):
    trajs = list(read(str(sample_data / "fireact/hotpotqa_react.jsonl"), "react"))[:60]
    trajs += list(read(str(sample_data / "llamafactory/glaive_toolcall_en_demo.json"), "sharegpt"))[:60]
    return trajs


@pytest.fixture(scope="module")
def data_tok(data):
    """A tiny tokenizer trained on the raw message texts of `data` (not on their training rendering)."""
    return tiny_tokenizer([m.content for t in data for m in t.messages])


@pytest.mark.parametrize("name", ["agentflan", "llama2", "hf"])
@pytest.mark.parametrize("max_length", [None, 40])
def test_batch_encoding_equals_each_segment_tokenized_on_its_own(data, data_tok, name, max_length):
    template = get_template(name, data_tok)
    batch = [render(t, template)[0] for t in data]
    for t, segments, got in zip(data, batch, encode_segments_batch(batch, data_tok, max_length=max_length,
                                                                   add_bos=template.add_bos), strict=True):
        ref = reference(segments, data_tok, max_length, template.add_bos)
        if ref is None:
            assert isinstance(got, NoTrainableTokens)
            with pytest.raises(NoTrainableTokens):
                encode(t, template, data_tok, max_length=max_length)
        else:
            assert not isinstance(got, NoTrainableTokens) and (got.input_ids, got.labels) == ref
            one = encode(t, template, data_tok, max_length=max_length)  # one sample: the same
            assert (one.input_ids, one.labels, one.truncated) == (got.input_ids, got.labels, got.truncated)


def test_segments_of_any_shape(data_tok):
    rng = random.Random(0)
    pieces = ["a", "", " ", "hello", "\u0d3f", "</s>", "wor", "ld", "\n", "ß", "🙂", "x y"]
    batch = [[("".join(rng.choice(pieces) for _ in range(rng.randint(0, 3))), rng.random() < 0.4)
              for _ in range(rng.randint(1, 8))] for _ in range(500)]
    for segments, got in zip(batch, encode_segments_batch(batch, data_tok, add_bos=True), strict=True):
        ref = reference(segments, data_tok, add_bos=True)
        assert (None if isinstance(got, NoTrainableTokens) else (got.input_ids, got.labels)) == ref, segments


def test_a_tokenizer_configured_to_truncate_takes_its_own_call(data, data_tok):
    """The Rust core is used directly only when the tokenizer's own call would do the same."""
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(tokenizer_object=data_tok.backend_tokenizer.__class__.from_str(
        data_tok.backend_tokenizer.to_str()), bos_token="<s>", eos_token="</s>")
    other.backend_tokenizer.enable_truncation(8)  # its own call turns that off
    template = get_template("agentflan")
    batch = [render(t, template)[0] for t in data[:10]]
    got = encode_segments_batch(batch, other)
    assert [(g.input_ids, g.labels) for g in got] == [reference(s, other) for s in batch]
    assert max(len(g.input_ids) for g in got) > 8


def _recipe(path, tmp_path, **data):
    from agentflan.training.sft import TrainRecipe

    return TrainRecipe.model_validate({
        "name": "t", "model": {"name_or_path": "tiny"}, "output_dir": str(tmp_path / "run"),
        "data": {"paths": [str(path)], "template": "agentflan", "max_length": 128, **data},
        "trl": {"per_device_train_batch_size": 2}})


@pytest.fixture
def corpus_file(data, tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(t.to_json_dict()) + "\n" for t in data))
    return path


def test_rows_are_cached_by_fingerprint(corpus_file, data, tmp_path):
    from agentflan.training.sft import prepare

    _, rows, stats = prepare(_recipe(corpus_file, tmp_path))
    assert stats["cache"] == "miss" and stats["trajectories"] == len(data) and rows
    _, again, stats2 = prepare(_recipe(corpus_file, tmp_path))
    assert stats2["cache"] == "hit" and again == rows
    assert {k: v for k, v in stats2.items() if k != "cache"} == {k: v for k, v in stats.items() if k != "cache"}
    assert prepare(_recipe(corpus_file, tmp_path, max_length=64))[2]["cache"] == "miss"  # other data section
    assert prepare(_recipe(corpus_file, tmp_path, packing=False))[2]["cache"] == "miss"
    _, unpacked, _ = prepare(_recipe(corpus_file, tmp_path, packing=False))
    assert len(unpacked) == stats["samples"] and all("seq_lengths" not in r for r in unpacked)
    corpus_file.write_text(corpus_file.read_text() + corpus_file.read_text().splitlines(keepends=True)[0])  # other data
    assert prepare(_recipe(corpus_file, tmp_path))[2]["cache"] == "miss"
    assert prepare(_recipe(corpus_file, tmp_path, cache=False))[2]["cache"] == "off"


def test_worker_processes_give_the_same_rows(corpus_file, tmp_path, monkeypatch):
    from agentflan.training.sft import prepare

    monkeypatch.setattr(prepared, "BATCH", 16)  # several tasks per worker
    one = prepare(_recipe(corpus_file, tmp_path, num_proc=1, cache=False))[1]
    two = prepare(_recipe(corpus_file, tmp_path, num_proc=2, cache=False))[1]
    assert one == two


def test_concurrent_runs_tokenize_once(corpus_file, tmp_path):
    """Ranks of one run (here threads) wait on the key's lock: one tokenizes, the others load."""
    from agentflan.training.sft import prepare

    tok = tiny_tokenizer(["warm the tokenizer cache first"])
    results: list[str] = []

    def rank() -> None:
        results.append(prepare(_recipe(corpus_file, tmp_path, max_length=100), tok)[2]["cache"])

    threads = [threading.Thread(target=rank) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["hit", "hit", "miss"]
