"""ToolBench: DFS answer files and ToolLLaMA training JSON.

Answer files (`answer_generation`): the trajectory is the last entry of `train_messages`, which
is the successful path of the DFS search (the earlier entries are its prefixes). The search
`tree` and `compare_candidates` are not training data and are not read.

* Records with `valid_data: false` (no `train_messages`) are dropped as `toolbench_invalid`.
* Give-ups (`finish_type: give_up`, the path ends in `Finish(give_up_and_restart)`) are dropped as
  `toolbench_give_up` by default: they teach the model to quit. `include_give_up=True` keeps them,
  tagged `finish_type=give_up`.
* DFS retries: when a branch failed, ToolBench inserts a user turn "This is not the first time you
  try this task, all previous trails failed. ..." listing the failed actions, and the next thought
  refers to it. `dfs_retries="keep"` (default) keeps that turn as untrained user context (the
  following thoughts stay coherent) and tags the trajectory `dfs_retry=true`;
  `"strip"` removes the turn (what a model sees at inference) and `"drop"` drops the record.

ToolLLaMA training JSON (`conversations` from system/user/assistant/function, assistant text
`Thought:/Action:/Action Input:`): the tool list is taken from the system prompt's
"Specifically, you have access to the following APIs: [...]" and removed from the prompt text
(the `toolbench` writer puts it back).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from agentflan.errors import Drop, ParseError
from agentflan.formats.react import parse_json_arguments, parse_toolllama
from agentflan.io.base import (
    Reader,
    RecordContext,
    as_text,
    json_or_literal,
    parse_tools,
    require_key,
)
from agentflan.schema import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    Trajectory,
    UserMessage,
)

DFS_RETRY_MARKER = "This is not the first time you try this task"
API_LIST_MARKER = "Specifically, you have access to the following APIs:"
FINAL_TOOL = "Finish"


class ToolBenchReader(Reader):
    name: ClassVar[str] = "toolbench"

    def __init__(self, *, dfs_retries: Literal["keep", "strip", "drop"] = "keep",
                 include_give_up: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.dfs_retries = dfs_retries
        self.include_give_up = include_give_up

    def parse(self, record: Any, ctx: RecordContext) -> Trajectory:
        if isinstance(record, dict) and "answer_generation" in record:
            return self._parse_answer(record, ctx)
        if isinstance(record, dict) and "conversations" in record:
            return self._parse_toolllama(record, ctx)
        keys = ", ".join(sorted(record)) if isinstance(record, dict) else type(record).__name__
        raise ParseError(f"neither a ToolBench answer file nor ToolLLaMA JSON (keys: {keys})",
                         reason="missing_key", field="answer_generation")

    # -- answer files ---------------------------------------------------------------------------
    def _parse_answer(self, record: dict[str, Any], ctx: RecordContext) -> Trajectory:
        ag = require_key(record, "answer_generation", dict)
        if not ag.get("valid_data") or not ag.get("train_messages"):
            raise Drop("toolbench_invalid", "valid_data is false: the search produced no path")
        finish_type = str(ag.get("finish_type") or "")
        if finish_type == "give_up" and not self.include_give_up:
            raise Drop("toolbench_give_up")
        paths = require_key(ag, "train_messages", list, "answer_generation")
        raw_msgs = paths[-1]
        where = f"answer_generation.train_messages[{len(paths) - 1}]"
        if not isinstance(raw_msgs, list):
            raise ParseError("expected a list of messages", reason="wrong_type", field=where)
        messages: list[Message] = []
        pending: list[ToolCall] = []
        n_calls = 0
        retry = False
        for i, m in enumerate(raw_msgs):
            loc = f"{where}[{i}]"
            role = require_key(m, "role", str, loc)
            content = as_text(m.get("content"), f"{loc}.content")
            if role == "system":
                messages.append(SystemMessage(content=content))
            elif role == "user":
                if content.startswith(DFS_RETRY_MARKER):
                    retry = True
                    if self.dfs_retries == "drop":
                        raise Drop("toolbench_dfs_retry")
                    if self.dfs_retries == "strip":
                        continue
                messages.append(UserMessage(content=content))
            elif role == "assistant":
                calls = []
                fc = m.get("function_call")
                if fc is not None:
                    name = require_key(fc, "name", str, f"{loc}.function_call")
                    args_text = as_text(fc.get("arguments"), f"{loc}.function_call.arguments")
                    args, err = parse_json_arguments(args_text)
                    calls.append(ToolCall(id=f"call_{n_calls}", name=name, arguments=args,
                                          raw=args_text, parse_error=err))
                    n_calls += 1
                pending.extend(calls)
                messages.append(AssistantMessage(content=content, tool_calls=calls))
            elif role == "function":
                name = m.get("name")
                call = _take_pending(pending, name)
                messages.append(ToolMessage(content=content, name=name,
                                            tool_call_id=call.id if call else None))
            else:
                raise ParseError(f"unknown role {role!r} (expected system, user, assistant, function)",
                                 reason="unknown_role", field=f"{loc}.role")
        tags = {"final_tool": FINAL_TOOL}
        if finish_type:
            tags["finish_type"] = finish_type
        if retry:
            tags["dfs_retry"] = "true"
        parent = ctx.file_id().split("/")[0]
        if parent.endswith("_answer"):
            tags["group"] = parent[: -len("_answer")]
        meta = {k: ag[k] for k in ("query", "query_count", "total_tokens") if k in ag}
        return Trajectory(id=ctx.file_id(), messages=messages,
                          tools=parse_tools(ag.get("function"), "answer_generation.function"),
                          source=ctx.source(), lineage=[f"read:{self.name}"], tags=tags, metadata=meta)

    # -- ToolLLaMA JSON -------------------------------------------------------------------------
    def _parse_toolllama(self, record: dict[str, Any], ctx: RecordContext) -> Trajectory:
        convs = require_key(record, "conversations", list)
        messages: list[Message] = []
        pending: list[ToolCall] = []
        tools: list[Any] = []
        retry = False
        n_calls = 0
        for i, m in enumerate(convs):
            loc = f"conversations[{i}]"
            role = require_key(m, "from", str, loc)
            value = as_text(m.get("value"), f"{loc}.value")
            if role == "system":
                value, tools = _split_api_list(value, f"{loc}.value")
                messages.append(SystemMessage(content=value))
            elif role == "user":
                if value.startswith(DFS_RETRY_MARKER):
                    retry = True
                    if self.dfs_retries == "drop":
                        raise Drop("toolbench_dfs_retry")
                    if self.dfs_retries == "strip":
                        continue
                messages.append(UserMessage(content=value))
            elif role == "assistant":
                try:
                    step = parse_toolllama(value)
                except ParseError as e:
                    e.field = f"{loc}.value"
                    raise
                calls = []
                if step.name is not None:
                    calls.append(ToolCall(id=f"call_{n_calls}", name=step.name, arguments=step.arguments,
                                          raw=step.raw_arguments, parse_error=step.parse_error))
                    n_calls += 1
                pending.extend(calls)
                messages.append(AssistantMessage(content=step.thought, tool_calls=calls))
            elif role == "function":
                call = _take_pending(pending, None)
                messages.append(ToolMessage(content=value, name=call.name if call else None,
                                            tool_call_id=call.id if call else None))
            else:
                raise ParseError(f"unknown role {role!r} (expected system, user, assistant, function)",
                                 reason="unknown_role", field=f"{loc}.from")
        tags = {"final_tool": FINAL_TOOL}
        if retry:
            tags["dfs_retry"] = "true"
        rid = record.get("id")
        return Trajectory(id=str(rid) if rid is not None else ctx.default_id(), messages=messages,
                          tools=tools, source=ctx.source(str(rid) if rid is not None else None),
                          lineage=[f"read:{self.name}"], tags=tags)


def _take_pending(pending: list[ToolCall], name: str | None) -> ToolCall | None:
    """The oldest unanswered call (with that name, if given)."""
    for k, call in enumerate(pending):
        if name is None or call.name == name:
            return pending.pop(k)
    return pending.pop(0) if pending else None


def _split_api_list(system: str, where: str) -> tuple[str, list[Any]]:
    """Split ToolLLaMA's system prompt into its text and the API list it embeds."""
    at = system.find(API_LIST_MARKER)
    if at < 0:
        raise ParseError(f"system prompt has no tool list ({API_LIST_MARKER!r} not found)",
                         reason="bad_tools", field=where)
    text = system[at + len(API_LIST_MARKER):].strip()
    # ToolBench writes the list with Python's str()
    value = json_or_literal(text, "the API list in the system prompt", "bad_tools", where)
    head = system[:at]
    # the toolbench writer joins prompt and list with one newline; ToolBench itself with none
    return (head[:-1] if head.endswith("\n") else head), parse_tools(value, where)
