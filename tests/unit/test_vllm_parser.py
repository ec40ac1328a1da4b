"""The vLLM tool-parser plugin (`agentflan.vllm_parser`): vLLM's server reads replies with
agentflan's protocol parsers. With vLLM installed the real `ToolParser`/`ToolParserManager` are
used; without it (CPU machines, CI) a test double with vLLM's field names stands in for them
(read from vLLM's `tool_parsers/abstract_tool_parser.py` and `hermes_tool_parser.py`)."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from types import SimpleNamespace
from typing import ClassVar

import pytest
from pydantic import BaseModel

from agentflan import vllm_parser
from agentflan.formats.protocols import conversation_key, get_protocol
from agentflan.schema import AssistantMessage
from agentflan.serve import Server

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather of a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
    {"type": "function", "function": {"name": "Finish", "description": "The final answer.", "parameters": {
        "type": "object", "properties": {"final_answer": {"type": "string"}}, "required": ["final_answer"]}}}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny in Paris."}]


def _double() -> dict[str, types.ModuleType]:
    """vLLM's parser API as plain classes with its field names (no vLLM needed)."""

    class FunctionCall(BaseModel):
        name: str
        arguments: str

    class ToolCall(BaseModel):
        id: str
        type: str = "function"
        function: FunctionCall

    class ExtractedToolCallInformation(BaseModel):
        tools_called: bool
        tool_calls: list[ToolCall]
        content: str | None = None

    class DeltaFunctionCall(BaseModel):
        name: str | None = None
        arguments: str | None = None

    class DeltaToolCall(BaseModel):
        id: str | None = None
        type: str | None = None
        index: int
        function: DeltaFunctionCall | None = None

    class DeltaMessage(BaseModel):
        content: str | None = None
        tool_calls: list[DeltaToolCall] = []

    class ToolParser:
        def __init__(self, tokenizer):
            self.prev_tool_call_arr: list[dict] = []
            self.current_tool_id = -1
            self.current_tool_name_sent = False
            self.streamed_args_for_tool: list[str] = []
            self.model_tokenizer = tokenizer

    class ToolParserManager:
        tool_parsers: ClassVar[dict[str, type]] = {}

        @classmethod
        def register_module(cls, name=None, force=True, module=None):
            names = [name] if isinstance(name, str) else name
            assert module is not None and issubclass(module, ToolParser)
            for n in names:
                cls.tool_parsers[n] = module
            return module

    modules = {n: types.ModuleType(n) for n in (
        "vllm", "vllm.tool_parsers", "vllm.tool_parsers.abstract_tool_parser", "vllm.entrypoints",
        "vllm.entrypoints.generate", "vllm.entrypoints.generate.base", "vllm.entrypoints.generate.base.protocol")}
    parsers, protocol = modules["vllm.tool_parsers.abstract_tool_parser"], modules["vllm.entrypoints.generate.base.protocol"]
    parsers.ToolParser, parsers.ToolParserManager = ToolParser, ToolParserManager  # type: ignore[attr-defined]
    for cls in (FunctionCall, ToolCall, ExtractedToolCallInformation, DeltaFunctionCall, DeltaToolCall, DeltaMessage):
        setattr(protocol, cls.__name__, cls)
    return modules


@pytest.fixture
def manager(monkeypatch):
    """vLLM's ToolParserManager after the plugin registered its parsers."""
    if not HAVE_VLLM:
        for name, module in _double().items():
            monkeypatch.setitem(sys.modules, name, module)
    vllm_parser.register()
    return vllm_parser._vllm()["ToolParserManager"]


def _replies(protocol: str) -> list[tuple[list[dict], str]]:
    """(request messages, what a model trained on `protocol` says next) for both assistant turns:
    the protocol's own rendering of the conversation."""
    traj = Server.conversation({"messages": MESSAGES, "tools": TOOLS})
    rendered = get_protocol(protocol).render(traj, conversation_key(traj))
    said = [m.content for m in rendered if isinstance(m, AssistantMessage)]
    assert len(said) == 2
    return [(MESSAGES[:1], said[0]), (MESSAGES[:3], said[1])]


def _stream(parser, text: str, request, size: int = 3):
    deltas = []
    for end in range(size, len(text) + size, size):
        prev, cur = text[: end - size], text[:end]
        d = parser.extract_tool_calls_streaming(prev, cur, cur[len(prev):], [], [], [], request)
        if d is not None:
            deltas.append(d)
    return deltas


@pytest.mark.parametrize(("name", "protocol"), sorted(vllm_parser.PARSERS.items()))
def test_plugin_reads_replies_as_agentflan_serve_does(manager, name, protocol):
    parser = manager.tool_parsers[name](None) if name in manager.tool_parsers else manager.get_tool_parser(name)(None)
    (first, call_text), (second, answer_text) = _replies(protocol)
    request = SimpleNamespace(messages=first, tools=TOOLS)
    got = parser.extract_tool_calls(call_text, request)
    assert got.tools_called and [(c.function.name, json.loads(c.function.arguments)) for c in got.tool_calls] == \
        [("get_weather", {"city": "Paris"})]
    assert got.tool_calls[0].id.startswith("call_") and got.tool_calls[0].type == "function"
    answer = parser.extract_tool_calls(answer_text, SimpleNamespace(messages=second, tools=TOOLS))
    assert not answer.tools_called and answer.content == "It is sunny in Paris."
    # streamed: nothing until the call is whole, then its name and arguments at once
    streamer = type(parser)(None)
    deltas = _stream(streamer, call_text, request)
    assert len(deltas) == 1 and deltas[0].content == got.content
    (call,) = deltas[0].tool_calls
    assert (call.index, call.type, call.function.name, json.loads(call.function.arguments)) == \
        (0, "function", "get_weather", {"city": "Paris"})
    # what vLLM's server checks when the stream ends: every argument was streamed
    assert json.dumps(streamer.prev_tool_call_arr[0]["arguments"], ensure_ascii=False) == \
        streamer.streamed_args_for_tool[0]
    answered = _stream(type(parser)(None), answer_text, SimpleNamespace(messages=second, tools=TOOLS))
    if answer_text.rstrip().endswith("}"):  # the answer is the final tool's call: sent once it is whole
        assert [(d.content, d.tool_calls) for d in answered] == [("It is sunny in Paris.", [])]
    else:  # plain text (ToolLLaMA's rendering of an answer without its Finish call): not streamed
        assert answered == []
    # unreadable text stays content (as agentflan serve returns it); streamed, it is never sent whole
    junk = parser.extract_tool_calls("no protocol here", request)
    assert not junk.tools_called and junk.content == "no protocol here"
    assert _stream(type(parser)(None), "no protocol here", request) == []


def test_tflan_cannot_be_a_vllm_parser():
    from agentflan.errors import ConfigError

    with pytest.raises(ConfigError, match="several generations"):
        vllm_parser.ReplyReader("tflan")


def _folder(tmp_path, template: str, protocols: dict, chat_template: str | None = None):
    from agentflan.training.models import tiny_tokenizer

    tok = tiny_tokenizer(["hello world", "<tool_call>"])
    if chat_template is not None:
        tok.chat_template = chat_template
    folder = tmp_path / template
    tok.save_pretrained(folder)
    (folder / "agentflan.json").write_text(json.dumps({"template": template, "protocols": protocols}))
    return folder


def test_serve_engine_vllm_command_and_refusals(tmp_path):
    pytest.importorskip("transformers")
    from click.testing import CliRunner

    from agentflan.cli.main import cli
    from agentflan.cli.serve import vllm_command
    from agentflan.errors import ConfigError
    from tests.unit.test_protocols import HERMES

    kw = {"host": "0.0.0.0", "port": 8001, "protocol": None, "model_names": ("agent", "alias"),
          "api_keys": ("k1",), "batch_size": 8, "max_new_tokens": 256, "dtype": "bfloat16", "tool_parser": None}
    native = _folder(tmp_path, "hf", {"native": 3}, HERMES)
    cmd = vllm_command(native, **kw)
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    text = " ".join(cmd)
    for part in (f"--model {native}", "--port 8001", "--max-num-seqs 8", "--enable-auto-tool-choice",
                 "--tool-call-parser hermes", "--served-model-name agent alias", "--api-key k1",
                 '--override-generation-config {"max_new_tokens": 256}'):
        assert part in text, part
    assert "--tool-call-parser llama3_json" in " ".join(vllm_command(native, **{**kw, "tool_parser": "llama3_json"}))
    react = _folder(tmp_path, "agentflan", {"react": 3})
    with pytest.raises(ConfigError, match=r"'react'.*does not state the tools"):
        vllm_command(react, **kw)
    with pytest.raises(ConfigError, match="elicit turns"):
        vllm_command(react, **{**kw, "protocol": "tflan"})
    with pytest.raises(ConfigError, match="one API key"):
        vllm_command(native, **{**kw, "api_keys": ("a", "b")})
    runner = CliRunner()
    res = runner.invoke(cli, ["serve", str(native), "--engine", "vllm", "--max-queue", "3"])
    assert res.exit_code == 4 and "--max-queue" in res.output, res.output
    res = runner.invoke(cli, ["serve", str(native), "--vllm-tool-parser", "hermes"])
    assert res.exit_code == 2, res.output
    if not HAVE_VLLM:
        res = runner.invoke(cli, ["serve", str(native), "--engine", "vllm"])
        assert res.exit_code == 4 and "needs vLLM" in res.output and "Traceback" not in res.output, res.output
