"""Writers for chat formats: `openai`, `sharegpt` (LLaMA-Factory), `alpaca`, `agentflan` (release)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from agentflan.formats.openai import call_arguments, function_spec, openai_message, openai_tools, tool_call_dicts
from agentflan.formats.protocols import training_view
from agentflan.formats.templates import AgentFlanTemplate
from agentflan.io.writers.base import Unwritable, Writer
from agentflan.schema import AssistantMessage, SystemMessage, ToolMessage, Trajectory, UserMessage

__all__ = ["AgentFlanWriter", "AlpacaWriter", "OpenAIWriter", "ShareGPTWriter", "call_arguments", "function_specs",
           "tool_call_dicts"]


def function_specs(traj: Trajectory) -> list[dict[str, Any]]:
    """Tool specs as function objects; keys the source had beyond the schema are kept."""
    return [function_spec(t, extra=True) for t in traj.tools]


class OpenAIWriter(Writer):
    """OpenAI chat fine-tuning/eval records: `messages` (+`tool_calls`, role `tool`) and `tools`.

    Ready for TRL (`messages` + `tools` columns) and vLLM/OpenAI requests. An assistant message's
    `loss` is written as OpenAI's fine-tuning `weight` (0 or 1).
    """

    name: ClassVar[str] = "openai"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        for m in traj.messages:
            if m.metadata:
                self.report.lossy["message_metadata"] += 1
            if m.loss and not isinstance(m, AssistantMessage):
                self.report.lossy["loss_on_non_assistant"] += 1
        msgs = [openai_message(m, weight=isinstance(m, AssistantMessage)) for m in traj.messages]
        rec: dict[str, Any] = {"id": traj.id, "messages": msgs}
        if traj.tools:
            rec["tools"] = openai_tools(traj.tools, extra=True)
        return rec


class ShareGPTWriter(Writer):
    """LLaMA-Factory ShareGPT: `conversations` (human/gpt/function_call/observation), `system`, `tools`.

    LLaMA-Factory wants strictly alternating user-side and assistant-side turns and has no place
    for a thought before a function call or for per-message loss; what cannot be kept is counted
    in `lossy` (`thought_before_call`, `loss_flags`, `non_alternating`). Consecutive tool results
    (parallel calls) are merged into one observation, a JSON list, as LLaMA-Factory expects.
    """

    name: ClassVar[str] = "sharegpt"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        conv: list[dict[str, str]] = []
        system = None
        for i, m in enumerate(traj.messages):
            if isinstance(m, SystemMessage):
                if i == 0:
                    system = m.content
                else:
                    conv.append({"from": "system", "value": m.content})
            elif isinstance(m, UserMessage):
                conv.append({"from": "human", "value": m.content})
            elif isinstance(m, AssistantMessage):
                if not m.loss:
                    self.report.lossy["loss_flags"] += 1
                if m.tool_calls:
                    if m.content.strip():
                        self.report.lossy["thought_before_call"] += 1
                    calls = [{"name": c.name, "arguments": c.arguments} for c in m.tool_calls]
                    value = calls[0] if len(calls) == 1 else calls
                    conv.append({"from": "function_call", "value": json.dumps(value, ensure_ascii=False)})
                else:
                    conv.append({"from": "gpt", "value": m.content})
            elif isinstance(m, ToolMessage):
                if conv and conv[-1]["from"] == "observation":
                    prev = conv[-1]["value"]
                    items = json.loads(prev) if conv[-1].get("_merged") else [prev]
                    conv[-1] = {"from": "observation", "value": json.dumps([*items, m.content], ensure_ascii=False),
                                "_merged": "1"}
                else:
                    conv.append({"from": "observation", "value": m.content})
        for turn in conv:
            turn.pop("_merged", None)
        user_side = {"human", "observation"}
        if any((t["from"] in user_side) != (k % 2 == 0) for k, t in enumerate(conv) if t["from"] != "system"):
            self.report.lossy["non_alternating"] += 1
        rec: dict[str, Any] = {"id": traj.id, "conversations": conv}
        if system is not None:
            rec["system"] = system
        if traj.tools:
            rec["tools"] = json.dumps(function_specs(traj), ensure_ascii=False)
        return rec

    def dataset_info(self, path: Path) -> dict[str, Any]:
        return {path.name.split(".")[0]: {
            "file_name": str(path), "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system", "tools": "tools"},
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                     "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}}}


class AlpacaWriter(Writer):
    """Alpaca `instruction`/`input`/`output` (+`system`, `history`) for tool-free chat only."""

    name: ClassVar[str] = "alpaca"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        msgs = list(traj.messages)
        system = msgs.pop(0).content if msgs and isinstance(msgs[0], SystemMessage) else None
        if not msgs or len(msgs) % 2 or not all(
                isinstance(u, UserMessage) and isinstance(a, AssistantMessage) and not a.tool_calls
                for u, a in zip(msgs[::2], msgs[1::2], strict=True)):
            raise Unwritable("not_user_assistant_pairs", "alpaca holds only user/assistant pairs without tools")
        if traj.tools:
            self.report.lossy["tools_offered"] += 1
        pairs = [(u.content, a.content) for u, a in zip(msgs[::2], msgs[1::2], strict=True)]
        prompt, output = pairs[-1]
        instruction, extra = prompt, ""
        meta_i, meta_x = traj.metadata.get("instruction"), traj.metadata.get("input")
        if isinstance(meta_i, str) and isinstance(meta_x, str) and prompt == f"{meta_i}\n\n{meta_x}":
            instruction, extra = meta_i, meta_x
        rec: dict[str, Any] = {"instruction": instruction, "input": extra, "output": output}
        if system is not None:
            rec["system"] = system
        if len(pairs) > 1:
            rec["history"] = [list(p) for p in pairs[:-1]]
        return rec


class AgentFlanWriter(Writer):
    """The released Agent-FLAN record: `{"id", "conversation": [{"role", "content", "loss"}]}`.

    No tool role exists in the release: a structured trajectory is written as training shows it
    to the release's template (`protocols.training_view`: the `react` protocol, tools and format in
    the system prompt, calls as ReAct text, results as user turns). Trajectories that are already
    text (T-FLAN, ReAct renderings) are written as they are.
    """

    name: ClassVar[str] = "agentflan"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        conv: list[dict[str, Any]] = []
        messages, _, _ = training_view(traj, AgentFlanTemplate())
        for m in messages:
            role = "user" if m.role == "tool" else m.role
            conv.append({"role": role, "content": m.content, "loss": m.loss})
        return {"id": traj.id, "conversation": conv}
