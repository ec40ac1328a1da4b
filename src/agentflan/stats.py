"""Dataset statistics: what a set of trajectories contains, overall and per source."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from agentflan.schema import AssistantMessage, ToolMessage, Trajectory, check


def _dist(values: list[int]) -> dict[str, float]:
    if not values:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p90": 0, "max": 0}
    s = sorted(values)
    return {"min": s[0], "mean": round(statistics.fmean(s), 2), "median": float(statistics.median(s)),
            "p90": s[min(len(s) - 1, int(0.9 * len(s)))], "max": s[-1]}


def compute_stats(trajectories: Iterable[Trajectory]) -> dict[str, Any]:
    """Counts over `trajectories`; deterministic (sorted keys) and JSON-ready."""
    n = 0
    roles: Counter[str] = Counter()
    capabilities: Counter[str] = Counter()
    tags: Counter[str] = Counter()
    tool_names: Counter[str] = Counter()
    warnings: Counter[str] = Counter()
    turns: list[int] = []
    chars: list[int] = []
    calls_per_traj: list[int] = []
    loss_turns = untrained_assistant = parse_errors = with_calls = with_tools = 0
    per_source: dict[str, Counter[str]] = defaultdict(Counter)
    for traj in trajectories:
        n += 1
        src = f"{traj.source.dataset or traj.source.format}"
        ps = per_source[src]
        ps["records"] += 1
        ncalls = 0
        for m in traj.messages:
            roles[m.role] += 1
            if isinstance(m, AssistantMessage):
                ncalls += len(m.tool_calls)
                tool_names.update(c.name for c in m.tool_calls)
                parse_errors += sum(c.parse_error is not None for c in m.tool_calls)
                if m.loss:
                    loss_turns += 1
                    capabilities[m.capability or "unlabelled"] += 1
                else:
                    untrained_assistant += 1
        ps["messages"] += len(traj.messages)
        ps["tool_calls"] += ncalls
        ps["trained_turns"] += sum(isinstance(m, AssistantMessage) and m.loss for m in traj.messages)
        ps["tool_results"] += sum(isinstance(m, ToolMessage) for m in traj.messages)
        with_calls += ncalls > 0
        with_tools += bool(traj.tools)
        calls_per_traj.append(ncalls)
        turns.append(len(traj.messages))
        chars.append(sum(len(m.content) for m in traj.messages))
        tags.update(f"{k}={v}" for k, v in traj.tags.items())
        warnings.update(i.code for i in check(traj, allow_parse_errors=True))
    return {
        "records": n,
        "messages": sum(roles.values()),
        "roles": dict(sorted(roles.items())),
        "turns_per_record": _dist(turns),
        "chars_per_record": _dist(chars),
        "tool_calls": sum(tool_names.values()),
        "tool_calls_per_record": _dist(calls_per_traj),
        "records_with_tool_calls": with_calls,
        "records_offering_tools": with_tools,
        "distinct_tools_called": len(tool_names),
        "top_tools": dict(tool_names.most_common(10)),
        "tool_call_parse_errors": parse_errors,
        "loss_bearing_turns": loss_turns,
        "untrained_assistant_turns": untrained_assistant,
        "capabilities": dict(sorted(capabilities.items())),
        "tags": dict(sorted(tags.items())),
        "validation": dict(sorted(warnings.items())),
        "per_source": {k: dict(sorted(v.items())) for k, v in sorted(per_source.items())},
    }
