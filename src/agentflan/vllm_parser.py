"""A vLLM tool-parser plugin: vLLM's OpenAI server reads a model's replies into `tool_calls` with
agentflan's own protocol parsers (the ReAct and JSON protocols and their `:random` variants, which
vLLM has no parser for).

    vllm serve out/run1/final --enable-auto-tool-choice \\
        --tool-parser-plugin "$(python -c 'import agentflan.vllm_parser as m; print(m.__file__)')" \\
        --tool-call-parser agentflan-react

Each registered name (`PARSERS`) reads a reply exactly as `agentflan serve` reads it: the request's
messages and tools become the same conversation (`serve.Server.conversation`: the final-answer
tool, the conversation key that picks a `:random` variant's phrasing), the protocol parses the
text, and the assistant message is built by `serve.Server.message` (content, calls with ids and
JSON-string arguments; a `Finish`-style call is the answer). Streaming: the protocol can read a
reply only when its call or answer is whole, so nothing is sent while it is incomplete; then the
call (its name and its whole arguments) or the answer is sent at once. A reply that is neither a
call nor a final tool's answer (plain text) is returned as content when not streaming, and is
not sent when streaming: vLLM gives a parser no end-of-stream call in which to flush it.

What this parser cannot do: make vLLM's prompt state the tools in the protocol's words. vLLM
renders the prompt with the model's chat template before any tool parser runs, and a ReAct/JSON
model's template (the agentflan or Llama-2 markup) does not show tools, so the protocol's system
prompt must come from the client (docs/serve.md, "The scale path"). T-FLAN cannot be a vLLM
parser at all: its harness plays elicit turns, several generations per action.

Importing this module needs vLLM (it subclasses vLLM's `ToolParser`); `import agentflan` never
imports it. `ReplyReader` holds the logic and needs no vLLM.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from agentflan.errors import ConfigError
from agentflan.formats.protocols import Action, Completion, TextProtocol, conversation_key, get_protocol

PARSERS = {"agentflan-react": "react", "agentflan-json": "json", "agentflan-react-random": "react:random",
           "agentflan-json-random": "json:random", "agentflan-toolllama": "toolllama"}
"""vLLM `--tool-call-parser` name -> agentflan protocol."""


@dataclass
class Reply:
    """What one reply says, as OpenAI's assistant message has it."""

    content: str | None
    calls: list[tuple[str, str, str]] = field(default_factory=list)
    """(id, name, arguments as a JSON string) per call."""
    kind: str = "answer"
    """The protocol's action kind: `call`, `answer` or `unparseable`."""


class ReplyReader:
    """One protocol's reading of replies, for vLLM (no vLLM needed here).

    Args:
        protocol: An agentflan protocol that parses one generation (`PARSERS`' values).

    Raises:
        ConfigError: A protocol that is not a single-generation text protocol (T-FLAN).
    """

    def __init__(self, protocol: str) -> None:
        proto = get_protocol(protocol)
        if not isinstance(proto, TextProtocol):
            raise ConfigError(f"protocol {protocol!r} takes several generations per action; it cannot be read by "
                              "a vLLM tool parser (serve it with `agentflan serve`)")
        self.protocol = proto
        self.sent = False
        """Streaming: the reply's call or answer has been sent."""

    def read(self, text: str, messages: Any, tools: Any) -> Reply:
        """The reply `text` to the conversation `messages` (OpenAI messages) offering `tools`."""
        from agentflan.serve import HTTPError, Job, Server

        try:
            traj = Server.conversation({"messages": _plain(messages), "tools": _plain(tools) or []})
        except HTTPError:  # vLLM accepted a conversation agentflan cannot read: the text stays content
            return Reply(content=text, kind="unparseable")
        act = self.protocol.act(traj, conversation_key(traj))  # as the server plays it: one generation
        next(act)
        try:
            act.send(Completion(text=text))
            raise ConfigError(f"protocol {self.protocol.name!r} asked for a second generation")  # pragma: no cover
        except StopIteration as done:
            action: Action = done.value
        message, _ = Server.message(action, Job(traj=traj, proto=self.protocol, max_tokens=1,
                                                explicit_max_tokens=False))
        calls = [(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or []]
        return Reply(content=message.get("content"), calls=calls, kind=action.kind)

    def read_streaming(self, current_text: str, messages: Any, tools: Any) -> Reply | None:
        """The reply once it can be read whole (a call or an answer), sent once; None before (or after).

        A reply is read only when its text ends a JSON object (every call and final answer of these
        protocols ends with its arguments' object): a prefix such as `Action: Finish` without its
        input would otherwise read as an empty answer."""
        if self.sent or not current_text.rstrip().endswith("}"):
            return None
        reply = self.read(current_text, messages, tools)
        if reply.kind == "unparseable":
            return None
        self.sent = True
        return reply


def _plain(value: Any) -> Any:
    """vLLM's request fields (pydantic models, typed dicts) as plain JSON values."""
    if value is None:
        return None
    if hasattr(value, "model_dump"):
        return value.model_dump(exclude_none=True)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _vllm() -> dict[str, Any]:
    """vLLM's parser API, wherever this vLLM version keeps it (0.11 and earlier:
    `vllm.entrypoints.openai.{tool_parsers,protocol}`; later: `vllm.tool_parsers` and
    `vllm.entrypoints.generate.base.protocol`)."""
    import importlib

    def first(*paths: str) -> Any:
        for path in paths[:-1]:
            try:
                return importlib.import_module(path)
            except ImportError:
                continue
        return importlib.import_module(paths[-1])

    parsers = first("vllm.tool_parsers.abstract_tool_parser", "vllm.entrypoints.openai.tool_parsers")
    protocol = first("vllm.entrypoints.generate.base.protocol", "vllm.entrypoints.openai.chat_completion.protocol",
                     "vllm.entrypoints.openai.protocol")
    names = ("DeltaFunctionCall", "DeltaMessage", "DeltaToolCall", "ExtractedToolCallInformation", "FunctionCall",
             "ToolCall")
    return {"ToolParser": parsers.ToolParser, "ToolParserManager": parsers.ToolParserManager,
            **{n: getattr(protocol, n) for n in names}}


def _parser_class(name: str, protocol: str, api: dict[str, Any]) -> type:
    base: type = api["ToolParser"]

    def __init__(self: Any, tokenizer: Any, *args: Any, **kwargs: Any) -> None:
        api["ToolParser"].__init__(self, tokenizer, *args, **kwargs)
        self.reader = ReplyReader(protocol)

    def extract_tool_calls(self: Any, model_output: str, request: Any) -> Any:
        reply = self.reader.read(model_output, request.messages, getattr(request, "tools", None))
        calls = [api["ToolCall"](id=cid, type="function", function=api["FunctionCall"](name=fn, arguments=args))
                 for cid, fn, args in reply.calls]
        return api["ExtractedToolCallInformation"](tools_called=bool(calls), tool_calls=calls, content=reply.content)

    def extract_tool_calls_streaming(self: Any, previous_text: str, current_text: str, delta_text: str,
                                     previous_token_ids: Sequence[int], current_token_ids: Sequence[int],
                                     delta_token_ids: Sequence[int], request: Any) -> Any:
        reply = self.reader.read_streaming(current_text, request.messages, getattr(request, "tools", None))
        if reply is None:
            return None
        deltas = []
        for k, (cid, fn, args) in enumerate(reply.calls):
            # vLLM's server compares json.dumps(prev_tool_call_arr[k]["arguments"], ensure_ascii=False) with
            # what was streamed when the reply ends and sends the difference: send exactly that string
            try:
                value: Any = json.loads(args)
                args = json.dumps(value, ensure_ascii=False)
            except ValueError:  # arguments that never parsed go as they are
                value = args
            self.prev_tool_call_arr.append({"name": fn, "arguments": value})
            self.streamed_args_for_tool.append(args)
            deltas.append(api["DeltaToolCall"](index=k, id=cid, type="function",
                                               function=api["DeltaFunctionCall"](name=fn, arguments=args)))
        self.current_tool_id = len(reply.calls) - 1
        return api["DeltaMessage"](content=reply.content, tool_calls=deltas)

    doc = f"Reads replies with agentflan's `{protocol}` protocol (`--tool-call-parser {name}`)."
    return type(f"Agentflan{uuid.uuid5(uuid.NAMESPACE_DNS, name).hex[:8]}ToolParser", (base,),
                {"__init__": __init__, "extract_tool_calls": extract_tool_calls,
                 "extract_tool_calls_streaming": extract_tool_calls_streaming, "__doc__": doc,
                 "protocol": protocol})


def register() -> dict[str, type]:
    """Register every parser of `PARSERS` with vLLM's `ToolParserManager`; the classes by name."""
    api = _vllm()
    classes = {}
    for name, protocol in PARSERS.items():
        classes[name] = _parser_class(name, protocol, api)
        api["ToolParserManager"].register_module(name=name, module=classes[name])
    return classes


def _register_with_vllm() -> None:
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:  # without vLLM there is nothing to register with
        register()


_register_with_vllm()  # vLLM imports this file by path (`--tool-parser-plugin`): registering is its purpose
