"""Writers for chat formats: `openai`, `sharegpt` (LLaMA-Factory), `alpaca`, `agentflan` (release)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

from agentflan.formats.openai import call_arguments, function_spec, openai_message, openai_tools, tool_call_dicts
from agentflan.formats.protocols import rendered_protocol, training_view
from agentflan.formats.templates import AgentFlanTemplate, hf_messages, hf_tools
from agentflan.io.writers.base import Unwritable, Writer
from agentflan.schema import AssistantMessage, SystemMessage, ToolMessage, Trajectory, UserMessage

__all__ = ["AgentFlanWriter", "AlpacaWriter", "OpenAIWriter", "ShareGPTWriter", "call_arguments", "function_specs",
           "tool_call_dicts"]


def function_specs(traj: Trajectory, object_parameters: bool = False) -> list[dict[str, Any]]:
    """Tool specs as function objects; keys the source had beyond the schema are kept.

    With `object_parameters`, a spec without `properties` gets an empty one (the same schema):
    LLaMA-Factory's default tool prompt reads `parameters.properties` of every tool.
    """
    specs = [function_spec(t, extra=True) for t in traj.tools]
    if object_parameters:
        for spec in specs:
            if "properties" not in spec["parameters"]:
                spec["parameters"] = {"type": "object", **spec["parameters"], "properties": {}}
    return specs


class OpenAIWriter(Writer):
    """OpenAI chat fine-tuning/eval records: `messages` (+`tool_calls`, role `tool`) and `tools`.

    True to OpenAI's fine-tuning format: tool-call `arguments` are JSON strings and an assistant
    message's `loss` is its `weight` (0 or 1). Hugging Face chat templates (TRL) expect argument
    objects and ignore `weight`: write `hf` for them.
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


USER_SIDE = ("human", "observation")
"""LLaMA-Factory's user-side tags (even turns); `gpt` and `function_call` are the assistant side (odd turns)."""


class ShareGPTWriter(Writer):
    """LLaMA-Factory ShareGPT: `conversations` (human/gpt/function_call/observation), `system`, `tools`.

    Every record written is one LLaMA-Factory's converter accepts (its rules, in `data/converter.py`:
    turns alternate user side (human, observation) and assistant side (gpt, function_call), starting
    with the user side and ending with the assistant side; a function_call holds JSON). To get there:

    * consecutive turns of one side are merged: tool results of parallel calls into one observation
      holding a JSON list, as LLaMA-Factory's own readers expect; other runs joined by a blank line
      (`lossy: merged_turns`); several calls in a row without results become one parallel call
      (`lossy: merged_calls`); text before a call is dropped (`lossy: thought_before_call`);
    * user-side turns after the last assistant turn (e.g. FireAct's "Episode finished" observation)
      are dropped: nothing after the last assistant turn is trained (`lossy: trailing_turns_dropped`);
    * what cannot be made valid is `unwritable` with a reason: a system message inside the
      conversation, an assistant turn first, no assistant turn, a call that never parsed, text
      after a call that has no result.

    Per-message loss has no place (LLaMA-Factory trains every assistant turn, or only the last with
    `mask_history`): untrained assistant turns are counted `lossy: loss_flags`. `system` and
    `tools` are written only when the record has them; the `dataset_info` entry names the columns
    that some record had.
    """

    name: ClassVar[str] = "sharegpt"

    def __init__(self) -> None:
        super().__init__()
        self.columns: set[str] = set()
        """Optional columns (`system`, `tools`) that at least one written record has."""

    def record(self, traj: Trajectory) -> dict[str, Any]:
        turns: list[tuple[str, Any]] = []
        system = None
        lossy: Counter[str] = Counter()  # counted only if the record is written
        for i, m in enumerate(traj.messages):
            if isinstance(m, SystemMessage):
                if i:
                    raise Unwritable("system_inside_conversation",
                                     f"message {i}: LLaMA-Factory takes a system prompt only before the conversation")
                system = m.content
            elif isinstance(m, UserMessage):
                turns.append(("human", m.content))
            elif isinstance(m, AssistantMessage):
                if not m.loss:
                    lossy["loss_flags"] += 1
                if m.reasoning:
                    lossy["reasoning"] += 1
                if m.tool_calls:
                    if any(c.parse_error is not None for c in m.tool_calls):
                        raise Unwritable("unparsed_tool_call", f"message {i}: a tool call whose arguments never parsed")
                    if m.content.strip():
                        lossy["thought_before_call"] += 1
                    turns.append(("function_call", [{"name": c.name, "arguments": c.arguments} for c in m.tool_calls]))
                else:
                    turns.append(("gpt", m.content))
            elif isinstance(m, ToolMessage):
                turns.append(("observation", m.content))
        conv = [_merge(group, lossy) for group in _runs(turns)]
        while conv and conv[-1]["from"] in USER_SIDE:
            conv.pop()
            lossy["trailing_turns_dropped"] += 1
        if not conv:
            raise Unwritable("no_assistant_turn", "LLaMA-Factory needs a final assistant turn")
        if conv[0]["from"] not in USER_SIDE:
            raise Unwritable("assistant_first", "LLaMA-Factory needs a user turn before the first assistant turn")
        self.report.lossy.update(lossy)
        rec: dict[str, Any] = {"id": traj.id, "conversations": conv}
        if system is not None:
            rec["system"] = system
            self.columns.add("system")
        if traj.tools:
            rec["tools"] = json.dumps(function_specs(traj, object_parameters=True), ensure_ascii=False)
            self.columns.add("tools")
        return rec

    def dataset_info(self, path: Path) -> dict[str, Any] | None:
        """The `dataset_info.json` entry for `path`, named after the file, with an absolute `file_name`
        (LLaMA-Factory joins `file_name` to its `dataset_dir`, which keeps an absolute path as is)."""
        if path.name.lower().endswith((".gz", ".zst")):
            return None  # LLaMA-Factory reads .json/.jsonl/.parquet/... only, never compressed files
        columns = {"messages": "conversations", **{c: c for c in sorted(self.columns)}}
        return {path.name.split(".")[0]: {
            "file_name": str(path.resolve()), "formatting": "sharegpt", "columns": columns,
            "tags": {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                     "observation_tag": "observation", "function_tag": "function_call"}}}


def _merge(group: list[tuple[str, Any]], lossy: Counter[str]) -> dict[str, str]:
    """One turn from a run of turns of one side."""
    tags = [tag for tag, _ in group]
    if tags[0] in USER_SIDE:
        if len(group) == 1:
            return {"from": tags[0], "value": group[0][1]}
        if set(tags) == {"observation"}:  # results of parallel calls
            return {"from": "observation", "value": json.dumps([v for _, v in group], ensure_ascii=False)}
        lossy["merged_turns"] += 1
        return {"from": tags[0], "value": "\n\n".join(v for _, v in group)}
    if "function_call" not in tags:
        if len(group) > 1:
            lossy["merged_turns"] += 1
        return {"from": "gpt", "value": "\n\n".join(v for _, v in group)}
    first_call = tags.index("function_call")
    if "gpt" in tags[first_call:]:
        raise Unwritable("call_without_result", "an assistant answer follows a tool call that has no result")
    thoughts = sum(bool(v.strip()) for _, v in group[:first_call])
    if thoughts:
        lossy["thought_before_call"] += thoughts
    calls = [c for _, v in group[first_call:] for c in v]
    if len(group) - first_call > 1:
        lossy["merged_calls"] += 1
    return {"from": "function_call", "value": json.dumps(calls[0] if len(calls) == 1 else calls, ensure_ascii=False)}


def _runs(turns: list[tuple[str, Any]]) -> list[list[tuple[str, Any]]]:
    """Consecutive turns grouped by side (user side: human, observation; assistant side: the rest)."""
    runs: list[list[tuple[str, Any]]] = []
    for turn in turns:
        if runs and (runs[-1][0][0] in USER_SIDE) == (turn[0] in USER_SIDE):
            runs[-1].append(turn)
        else:
            runs.append([turn])
    return runs


class HFChatWriter(Writer):
    """Hugging Face conversational records: `messages` and `tools` as `apply_chat_template` takes them.

    A record whose text a protocol rendered already (`protocols.rendered_protocol`: T-FLAN, ReAct,
    instruct turns) has no `tools` column: its system text states the tools, and training shows
    it to the template without them (`protocols.training_view`), as `agentflan data tokenize` does.

    Tool-call `arguments` are objects (not JSON strings as in OpenAI's format), so chat templates
    render them once; this is the form TRL's `SFTTrainer` and axolotl's `chat_template` datasets
    load. Every message carries `train` (its loss flag): axolotl honours it with
    `message_field_training: train`; TRL does not (with `assistant_only_loss` it trains every
    assistant turn), so untrained assistant turns are counted `lossy: untrained_assistant_turns`;
    for exact per-message loss in TRL use `agentflan data tokenize` (pre-tokenized `input_ids` and
    `labels`, which TRL uses as they are). Load with `datasets` >= 5: older versions turn the
    differently-keyed argument objects of different rows into one struct, adding null arguments.
    """

    name: ClassVar[str] = "hf"

    def record(self, traj: Trajectory) -> dict[str, Any]:
        msgs = hf_messages(traj.messages)
        lossy: Counter[str] = Counter()
        for d, m in zip(msgs, traj.messages, strict=True):
            d["train"] = m.loss
            if m.metadata:
                lossy["message_metadata"] += 1
            if isinstance(m, AssistantMessage):
                if m.reasoning is not None:
                    lossy["reasoning"] += 1
                if not m.loss:
                    lossy["untrained_assistant_turns"] += 1
                if any(c.parse_error is not None for c in m.tool_calls):
                    raise Unwritable("unparsed_tool_call", "a tool call whose arguments never parsed has no object form")
        self.report.lossy.update(lossy)
        rec: dict[str, Any] = {"id": traj.id, "messages": msgs}
        # text a protocol rendered (T-FLAN, ReAct, instruct) states its tools in its own system
        # text: a `tools` column would make the chat template render them a second time
        rendered = rendered_protocol(traj)
        tools = hf_tools(traj.tools) if rendered in (None, "native") else []
        if tools:
            rec["tools"] = tools
        return rec


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
