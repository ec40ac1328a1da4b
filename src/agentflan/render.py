"""Human-readable rendering of one trajectory, with the trained spans visibly marked.

Plain text marks trained text as `⟦...⟧`; the rich version highlights it in green. Both show tool
calls, tool results, the offered tools and the provenance.
"""

from __future__ import annotations

import json
from typing import Any

from agentflan.schema import AssistantMessage, ToolMessage, Trajectory

TRAIN_OPEN, TRAIN_CLOSE = "⟦", "⟧"


def _call_text(m: AssistantMessage) -> list[str]:
    out = []
    for c in m.tool_calls:
        args = json.dumps(c.arguments, ensure_ascii=False)
        err = f"  !! parse error: {c.parse_error} (raw: {c.raw!r})" if c.parse_error else ""
        out.append(f"-> {c.name}({args}) [id={c.id}]{err}")
    return out


def _header(traj: Trajectory) -> list[str]:
    src = traj.source
    where = f"{src.path}:{src.line}" if src.line else (src.path or "-")
    lines = [f"id: {traj.id}", f"source: {src.format} ({src.dataset}) {where}"]
    if traj.tags:
        lines.append("tags: " + ", ".join(f"{k}={v}" for k, v in sorted(traj.tags.items())))
    if traj.tools:
        lines.append(f"tools ({len(traj.tools)}): " + ", ".join(t.name for t in traj.tools))
    if traj.lineage:
        lines.append("lineage: " + " > ".join(traj.lineage))
    return lines


def render_text(traj: Trajectory, *, max_chars: int | None = 2000) -> str:
    """Plain-text rendering; trained assistant text is wrapped in ⟦ ⟧."""
    lines = _header(traj)
    lines.append(f"legend: {TRAIN_OPEN}trained{TRAIN_CLOSE}, everything else is context (loss off)")
    for i, m in enumerate(traj.messages):
        label: str = m.role
        if isinstance(m, ToolMessage):
            label = f"tool {m.name or '?'} (for {m.tool_call_id or '?'})"
        if isinstance(m, AssistantMessage) and m.capability:
            label += f" [{m.capability}]"
        lines.append(f"--- [{i}] {label}")
        body = [_clip(m.content, max_chars)] if m.content else []
        if isinstance(m, AssistantMessage):
            if m.reasoning:
                body.insert(0, "(reasoning) " + _clip(m.reasoning, max_chars))
            body += _call_text(m)
        text = "\n".join(body)
        if m.loss and text:
            text = f"{TRAIN_OPEN}{text}{TRAIN_CLOSE}"
        lines.append(text)
    return "\n".join(lines)


def render_rich(traj: Trajectory, *, max_chars: int | None = 2000) -> Any:
    """A rich renderable: trained text in green, context dim."""
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = [Text("\n".join(_header(traj)), style="bold")]
    parts.append(Text.assemble(("legend: ", "dim"), ("trained", "bold green"), (" / context", "dim")))
    for i, m in enumerate(traj.messages):
        label: str = m.role if not isinstance(m, ToolMessage) else f"tool {m.name or '?'}"
        if isinstance(m, AssistantMessage) and m.capability:
            label += f" [{m.capability}]"
        parts.append(Text(f"--- [{i}] {label}", style="cyan"))
        style = "green" if m.loss else "dim"
        if m.content:
            parts.append(Text(_clip(m.content, max_chars), style=style))
        if isinstance(m, AssistantMessage):
            for line in _call_text(m):
                parts.append(Text(line, style="bold green" if m.loss else "dim"))
    return Group(*parts)


def _clip(text: str, max_chars: int | None) -> str:
    if max_chars is None or len(text) <= max_chars:
        return text
    return text[:max_chars] + f" ... [{len(text) - max_chars} more chars]"
