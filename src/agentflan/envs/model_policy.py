"""Model-backed policies: any OpenAI-compatible chat endpoint with tool calling (vLLM, OpenAI,
`transformers serve`, ...) and a local transformers model.

`payload`, `parse` and `parse_text_reply` are pure functions (tested without a server or a model);
`ModelPolicy` sends requests with retries; `LocalModelPolicy` generates with the model's own chat
template, so a model trained by `agentflan train` plays with the template it was trained with.
"""

from __future__ import annotations

import json
import os
import re
import time
import urllib.error
import urllib.request
from typing import Any, ClassVar

from agentflan.envs.base import Policy
from agentflan.formats.react import parse_json_arguments
from agentflan.io.writers.chat import tool_call_dicts
from agentflan.schema import AssistantMessage, Message, ToolCall, ToolMessage, ToolSpec
from agentflan.training.models import check_local_model


def payload(model: str, messages: list[Message], tools: list[ToolSpec], temperature: float = 0.0,
            max_tokens: int = 512) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, AssistantMessage):
            msg: dict[str, Any] = {"role": "assistant", "content": m.content or None}
            if m.tool_calls:
                msg["tool_calls"] = tool_call_dicts(m.tool_calls)
            out.append(msg)
        elif isinstance(m, ToolMessage):
            out.append({"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content})
        else:
            out.append({"role": m.role, "content": m.content})
    body: dict[str, Any] = {"model": model, "messages": out, "temperature": temperature, "max_tokens": max_tokens}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                           "parameters": t.parameters}} for t in tools]
    return body


def parse(response: dict[str, Any]) -> AssistantMessage:
    """The assistant message of a chat-completions response; unparseable arguments are kept."""
    msg = response["choices"][0]["message"]
    calls = []
    for i, tc in enumerate(msg.get("tool_calls") or []):
        fn = tc.get("function", {})
        raw = fn.get("arguments", "{}")
        args, err = parse_json_arguments(raw) if isinstance(raw, str) else (raw, None)
        calls.append(ToolCall(id=tc.get("id") or f"call_m{i}", name=fn.get("name", ""), arguments=args,
                              raw=raw if isinstance(raw, str) else None, parse_error=err))
    return AssistantMessage(content=msg.get("content") or "", reasoning=msg.get("reasoning_content"), tool_calls=calls)


class ModelPolicy(Policy):
    name: ClassVar[str] = "model"

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", temperature: float = 0.0,
                 timeout_s: float = 120.0, retries: int = 3) -> None:
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.key = os.environ.get(api_key_env, "")
        self.temperature = temperature
        self.timeout_s = timeout_s
        self.retries = retries

    def act(self, messages: list[Message], tools: list[ToolSpec]) -> AssistantMessage:
        body = json.dumps(payload(self.model, messages, tools, self.temperature)).encode()
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        last = ""
        for attempt in range(self.retries + 1):
            try:
                req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return parse(json.loads(resp.read()))
            except (urllib.error.URLError, TimeoutError, ConnectionError, KeyError, json.JSONDecodeError) as e:
                last = f"{type(e).__name__}: {e}"
                time.sleep(min(2**attempt, 10))
        return AssistantMessage(content=f"(model request failed: {last})")


_TOOL_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)


def parse_text_reply(text: str) -> AssistantMessage:
    """Tool calls in a local model's text: `<tool_call>{json}</tool_call>` blocks (Qwen, SmolLM2,
    Hermes style), or the whole reply as one JSON object `{"name": ..., "arguments": ...}`;
    anything else is a plain answer. Malformed calls are kept with `parse_error`."""
    blocks = _TOOL_CALL.findall(text)
    if not blocks and text.strip().startswith("{"):
        blocks = [text.strip()]
    calls = []
    for i, block in enumerate(blocks):
        try:
            obj = json.loads(block)
        except json.JSONDecodeError as e:
            calls.append(ToolCall(id=f"call_l{i}", name="", raw=block, parse_error=f"invalid JSON: {e.msg}"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            args, err = parse_json_arguments(args)
        else:
            err = None
        calls.append(ToolCall(id=f"call_l{i}", name=obj["name"], arguments=args if isinstance(args, dict) else {},
                              raw=block, parse_error=err))
    content = _TOOL_CALL.sub("", text).strip() if calls else text.strip()
    if calls and content.startswith("{"):
        content = ""
    return AssistantMessage(content=content, tool_calls=calls)


class LocalModelPolicy(Policy):
    """A local transformers model: the tokenizer's chat template (tools passed through), greedy
    decoding, tool calls parsed from the text (`parse_text_reply`)."""

    name: ClassVar[str] = "local"

    def __init__(self, path: str, *, max_new_tokens: int = 256) -> None:
        check_local_model(path)
        from agentflan.errors import require

        require("transformers", "train")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path)
        self.model.eval()
        self.max_new_tokens = max_new_tokens

    def act(self, messages: list[Message], tools: list[ToolSpec]) -> AssistantMessage:
        import torch

        from agentflan.formats.templates import hf_messages, hf_tools

        ids = self.tokenizer.apply_chat_template(hf_messages(messages), tools=hf_tools(tools),
                                                 add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = self.model.generate(**ids, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        text = self.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return parse_text_reply(text)
