"""Tool calling with a trained (not scripted) model: a tiny model trained a few steps on a tiny
tool-calling dataset in the native protocol (a Hermes-style template that renders tools), served,
and asked through the `openai` client. The server's prompt ids equal `data tokenize`'s for the
same conversation (tools rendered exactly as in training), and what the model emits is parsed by
the protocol into `tool_calls` or content exactly as the protocol's own parser reads that text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="serving extras not installed (pip install 'agentflan[serve]')")
pytest.importorskip("torch", reason="training extras not installed")
pytest.importorskip("trl", reason="training extras not installed")
openai = pytest.importorskip("openai")

from agentflan.formats.protocols import Completion, conversation_key, get_protocol  # noqa: E402
from agentflan.training.models import tiny_model, tiny_tokenizer  # noqa: E402
from tests.unit.test_protocols import HERMES  # noqa: E402
from tests.unit.test_serve import served as served  # noqa: E402

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CITIES = ["Paris", "Rome", "Oslo", "Lima"]


def _conversation(city: str, k: int) -> dict:
    call = {"id": f"call_{k}", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
    return {"tools": TOOLS, "messages": [
        {"role": "user", "content": f"What is the weather in {city}?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": f"call_{k}", "content": "sunny"},
        {"role": "assistant", "content": f"It is sunny in {city}."}]}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One torch thread: on a busy shared machine spinning threads make a tiny model many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _base(root: Path, records: list[dict]) -> Path:
    """A tiny random model whose tokenizer has a Hermes-style template (it renders tools itself)."""
    from transformers import PreTrainedTokenizerFast

    texts = [json.dumps(r) for r in records] + ["<tools>", "</tools>", "<tool_call>", "</tool_call>",
                                                "<tool_response>", "</tool_response>"]
    base_tok = tiny_tokenizer(texts)
    tok = PreTrainedTokenizerFast(tokenizer_object=base_tok.backend_tokenizer, eos_token="<|im_end|>",
                                  pad_token="<pad>", bos_token="<s>")
    tok.chat_template = HERMES
    base = root / "base"
    tiny_model(len(tok)).save_pretrained(base)
    tok.save_pretrained(base)
    (base / "agentflan.json").write_text(json.dumps({"template": "hf", "protocols": {"native": 1}}))
    return base


def _data(root: Path, cities: list[str]) -> tuple[Path, list[dict]]:
    records = [_conversation(cities[k % len(cities)], k) for k in range(32)]
    data = root / "weather.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return data, records


@pytest.fixture(scope="module")
def untrained(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny random model's folder, the tool-calling data)."""
    root = tmp_path_factory.mktemp("untrained")
    data, records = _data(root, CITIES)
    return _base(root, records), data


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(the folder `agentflan train` wrote, the data): 100 steps on 32 conversations about one city
    (what a 64-wide, 2-layer model learns to say exactly in a minute or two on a CPU)."""
    from agentflan.training.sft import TrainRecipe, run

    root = tmp_path_factory.mktemp("trained")
    data, records = _data(root, ["Paris"])
    base = _base(root, records)
    run(TrainRecipe.model_validate({
        "name": "weather", "model": {"name_or_path": str(base)}, "output_dir": str(root / "run"),
        "data": {"paths": [str(data)], "format": "openai", "template": "hf", "max_length": 512, "cache": False},
        "trl": {"per_device_train_batch_size": 4, "learning_rate": 1e-2, "lr_scheduler_type": "constant",
                "use_cpu": True, "max_steps": 100, "logging_steps": 20, "report_to": []}}))
    return root / "run" / "final", data


def _tokenized(folder: Path, data: Path, out: Path) -> list[dict]:
    from click.testing import CliRunner

    from agentflan.cli.main import cli

    res = CliRunner().invoke(cli, ["data", "tokenize", str(data), "--from", "openai", "-o", str(out),
                                   "--tokenizer", str(folder), "--template", "hf"])
    assert res.exit_code == 0, res.output
    return [json.loads(line) for line in out.read_text().splitlines()]


def _trained_starts(labels: list[int]) -> list[int]:
    """Where each trained span (an assistant turn) begins."""
    return [i for i, x in enumerate(labels) if x != -100 and (i == 0 or labels[i - 1] == -100)]


def _check(folder: Path, data: Path, served, tmp_path: Path, cities: list[str], max_tokens: int,
           stream: bool) -> list[tuple[str, list]]:
    """Serve `folder`, ask it each city's two turns through the `openai` client, and check the prompt
    ids against `data tokenize` and the reply against the protocol's own parser; every action
    (kind, calls) in order."""
    from agentflan.models.engines import HFEngine

    engine = HFEngine(folder, batch_size=4, max_new_tokens=max_tokens, prefix_cache_gb=0)
    prompts: list[list[int]] = []
    real = engine.prompt_ids

    def recording(prompt):
        prompts.append(real(prompt))
        return prompts[-1]

    engine.prompt_ids = recording  # type: ignore[method-assign]
    url = served(engine, model_name="weather")
    server = served.servers[-1]
    assert server.protocol_name == "native"  # the template renders tools: no fallback to react
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
    rows = _tokenized(folder, data, tmp_path / "tokens.jsonl")
    proto = get_protocol("native", engine.template)
    seen = []
    for k, city in enumerate(cities):
        convo = _conversation(city, k)
        starts = _trained_starts(rows[k]["labels"])
        assert len(starts) == 2
        for turn, upto in ((0, 1), (1, 3)):  # the first request; then with the call and its result
            messages = convo["messages"][:upto]
            r = client.chat.completions.create(model="weather", messages=messages, tools=TOOLS, temperature=0)
            # the prompt the server built is, token for token, what training showed before that turn
            assert prompts[-1] == rows[k]["input_ids"][: starts[turn]], (city, turn)
            # what the model emitted, read by the protocol's own parser, is what the server returned
            raw = r.model_extra["agentflan"]["texts"]
            traj = server.conversation({"messages": messages, "tools": TOOLS})
            gen = proto.act(traj, conversation_key(traj))
            next(gen)
            with pytest.raises(StopIteration) as done:
                gen.send(Completion(text=raw[0]))
            action = done.value.value
            msg = r.choices[0].message
            assert r.model_extra["agentflan"]["action"] == action.kind
            if action.kind == "call":
                assert [(c.function.name, json.loads(c.function.arguments)) for c in msg.tool_calls] == \
                       [(c.name, c.arguments) for c in action.calls]
                assert r.choices[0].finish_reason == "tool_calls" and msg.tool_calls[0].id.startswith("call_")
            else:
                assert not msg.tool_calls
                assert msg.content == (action.answer if action.kind == "answer" else "\n".join(action.texts))
            seen.append((action.kind, [(c.name, c.arguments) for c in action.calls], msg.content))
            if stream:  # the same reply as deltas, assembled by the client's stream helper
                with client.chat.completions.stream(model="weather", messages=messages, tools=TOOLS,
                                                    temperature=0) as events:
                    for _ in events:
                        pass
                    final = events.get_final_completion().choices[0].message
                assert [(c.function.name, c.function.arguments) for c in final.tool_calls or []] == \
                       [(c.function.name, c.function.arguments) for c in msg.tool_calls or []]
                assert (final.content or None) == (msg.content or None)
    return seen


def test_served_prompts_equal_data_tokenize_and_replies_parse_as_the_protocol_reads_them(untrained, served,
                                                                                         tmp_path):
    """Fast (an untrained model: whatever it says is read consistently)."""
    folder, data = untrained
    seen = _check(folder, data, served, tmp_path, CITIES[:2], max_tokens=12, stream=False)
    assert len(seen) == 4


@pytest.mark.slow
def test_a_trained_model_calls_tools_through_the_server_as_it_was_trained(trained, served, tmp_path):
    """`agentflan train` a minute, serve, and the model calls the tool, then answers from its result."""
    folder, data = trained
    seen = _check(folder, data, served, tmp_path, ["Paris"], max_tokens=48, stream=True)
    assert seen[0][:2] == ("call", [("get_weather", {"city": "Paris"})]), seen
    assert seen[1][0] == "answer" and seen[1][2] == "It is sunny in Paris.", seen
