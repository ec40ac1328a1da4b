"""Structural validation of a trajectory: every problem at once, not just the first.

Errors make a record unusable for training or evaluation (readers quarantine it); warnings are
counted in statistics but the record is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from agentflan.schema.trajectory import AssistantMessage, ToolMessage, Trajectory


@dataclass(frozen=True)
class Issue:
    """One problem found in a trajectory."""

    code: str
    message: str
    index: int | None = None
    """Message index the problem is at, if it is at one."""
    field: str | None = None
    level: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = f"messages[{self.index}]" if self.index is not None else "trajectory"
        if self.field:
            where += f".{self.field}"
        return f"{where}: {self.message} [{self.code}]"


def check(traj: Trajectory, *, allow_parse_errors: bool = False, nesting: bool = True) -> list[Issue]:
    """Return every structural problem of `traj`.

    Args:
        traj: The trajectory to check.
        allow_parse_errors: Report tool calls that failed to parse as warnings, not errors
            (for hallucination data, where a malformed call is the point).
        nesting: Check that free-form values nest at most `MAX_DEPTH` levels (a reader skips it for
            a record whose text has too few brackets to nest that deep).
    """
    issues: list[Issue] = []
    msgs = traj.messages
    # roles, not isinstance chains: this runs on every record read, built and reported
    roles = [m.role for m in msgs]
    if roles and roles[0] != "system":  # most conversations: no generator to make
        first_turn: int | None = 0
    else:
        first_turn = next((i for i, r in enumerate(roles) if r != "system"), None)
    if first_turn is None:
        issues.append(Issue("empty", "conversation has no user, assistant or tool message"))
        return issues

    declared: set[str] | None = None
    pending: dict[str, str] = {}  # call id -> tool name, calls still waiting for a result
    seen_ids: set[str] = set()
    if roles[first_turn] != "user":
        issues.append(
            Issue("first_turn_not_user", f"first turn is {roles[first_turn]!r}, not 'user'",
                  first_turn, "role", "warning")
        )

    last = len(msgs) - 1
    for i, m in enumerate(msgs):
        role = roles[i]
        if role == "assistant":
            assert isinstance(m, AssistantMessage)
            calls = m.tool_calls
            if not calls and not m.content.strip() and not (m.reasoning or "").strip():
                issues.append(Issue("empty_assistant", "assistant message has no text and no tool call",
                                    i, "content"))
            for j, call in enumerate(calls):
                if call.id in seen_ids:
                    issues.append(Issue("duplicate_call_id", f"tool call id {call.id!r} used twice", i,
                                        f"tool_calls[{j}].id"))
                seen_ids.add(call.id)
                pending[call.id] = call.name
                if call.parse_error is not None:
                    issues.append(Issue("tool_call_parse_error",
                                        f"tool call could not be parsed: {call.parse_error}", i,
                                        f"tool_calls[{j}].arguments",
                                        "warning" if allow_parse_errors else "error"))
                if declared is None:
                    declared = traj.tool_names()
                if call.name not in declared:
                    offered = ", ".join(sorted(declared)) or "no tools declared"
                    issues.append(Issue("undeclared_tool",
                                        f"call to tool {call.name!r}, which was not offered ({offered})",
                                        i, f"tool_calls[{j}].name"))
            continue
        if role == "system" and i != 0:
            issues.append(Issue("system_not_first", "system message after the first position", i,
                                "role", "warning"))
        if m.loss:
            issues.append(Issue("loss_on_non_assistant", f"loss=true on a {role} message", i,
                                "loss", "warning"))
        if role == "tool":
            assert isinstance(m, ToolMessage)
            if m.tool_call_id is None:
                if not pending:
                    issues.append(Issue("orphan_tool_result", "tool result without a preceding call",
                                        i, "tool_call_id"))
                else:
                    pending.pop(next(iter(pending)))
            elif m.tool_call_id in pending:
                pending.pop(m.tool_call_id)
            else:
                issues.append(Issue("orphan_tool_result",
                                    f"tool result for unknown or already answered call {m.tool_call_id!r}",
                                    i, "tool_call_id"))
        elif role == "user" and pending and i < last:
            # A user turn while calls are unanswered: the results never came back.
            issues.append(Issue("unanswered_call", f"{len(pending)} tool call(s) left without a result",
                                i, None, "warning"))
            pending.clear()

    if pending:
        final_tool = traj.tags.get("final_tool")
        pending.pop(next((k for k, v in pending.items() if v == final_tool), ""), None)
        if pending and roles[-1] != "assistant":
            issues.append(Issue("unanswered_call", f"{len(pending)} tool call(s) left without a result",
                                None, None, "warning"))
    for name, value in traj.tags.items():
        if not name:
            issues.append(Issue("bad_tag", f"empty tag name (value {value!r})", None, "tags"))
    if nesting:
        issues += _depth_issues(traj)
    return issues


MAX_DEPTH = 200
"""How deep a free-form value (metadata, tool arguments and parameters) may nest. pydantic refuses to
serialize Any values nested more than about 255 levels, so a deeper one could be read but never
written: it is an error here, where readers quarantine it (`too_deep`)."""


def _depth_issues(traj: Trajectory) -> list[Issue]:
    roots = _free_form(traj)
    if not _deeper_than(roots, MAX_DEPTH):  # one pass over every value: the common, fast case
        return []
    found: list[Issue] = []  # rare: say where
    if _deeper_than([traj.metadata], MAX_DEPTH):
        found.append(Issue("too_deep", f"metadata nests deeper than {MAX_DEPTH} levels", None, "metadata"))
    for k, tool in enumerate(traj.tools):
        if _deeper_than([tool.parameters, tool.metadata], MAX_DEPTH):
            found.append(Issue("too_deep", f"tool {tool.name!r} nests deeper than {MAX_DEPTH} levels", None,
                               f"tools[{k}]"))
    for i, m in enumerate(traj.messages):
        values = [m.metadata, *(c.arguments for c in m.tool_calls)] if isinstance(m, AssistantMessage) else [m.metadata]
        if _deeper_than(values, MAX_DEPTH):
            found.append(Issue("too_deep", f"a value nests deeper than {MAX_DEPTH} levels", i, "metadata"))
    return found


def _free_form(traj: Trajectory) -> list[object]:
    """The values of a trajectory that the schema does not shape (non-empty ones only)."""
    roots: list[object] = [traj.metadata] if traj.metadata else []
    for tool in traj.tools:
        roots += [v for v in (tool.parameters, tool.metadata) if v]
    for m in traj.messages:
        if m.metadata:
            roots.append(m.metadata)
        if isinstance(m, AssistantMessage):
            roots += [c.arguments for c in m.tool_calls if c.arguments]
    return roots


def _deeper_than(values: Sequence[object], limit: int) -> bool:
    """Whether dicts and lists in `values` nest more than `limit` levels (iterative: no recursion).

    Examples:
        >>> _deeper_than([{"a": [[1]]}], 2), _deeper_than([{"a": [[1]]}], 3)
        (True, False)
    """
    stack = [(v, 1) for v in values if v]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        for c in (v.values() if type(v) is dict else v):  # type: ignore[attr-defined]
            if c and type(c) in (dict, list):  # scalars and empty containers add no depth below them
                stack.append((c, depth + 1))
    return False


def errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.level == "error"]
