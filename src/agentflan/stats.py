"""Dataset statistics: what a set of trajectories contains, overall and per source."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agentflan.schema import AssistantMessage, ToolMessage, Trajectory, check


def _dist(values: Counter[int]) -> dict[str, float]:
    """min / mean / median / p90 / max of the values counted in `values` (value -> occurrences)."""
    n = sum(values.values())
    if not n:
        return {"min": 0, "mean": 0.0, "median": 0.0, "p90": 0, "max": 0}
    keys = sorted(values)

    def nth(i: int) -> int:  # the i-th smallest value (0-based)
        for k in keys:
            i -= values[k]
            if i < 0:
                return k
        raise IndexError(i)  # pragma: no cover - i < n

    mid = n // 2
    median = nth(mid) if n % 2 else (nth(mid - 1) + nth(mid)) / 2
    # the same float as statistics.fmean of the values: their exact (integer) sum over n
    mean = float(sum(k * c for k, c in values.items())) / n
    return {"min": keys[0], "mean": round(mean, 2), "median": float(median),
            "p90": nth(min(n - 1, int(0.9 * n))), "max": keys[-1]}


@dataclass
class StatsAccumulator:
    """`compute_stats`, one trajectory at a time, mergeable: each worker of a build counts its shard
    and the shards are merged in order. Flat memory: lengths are kept as value -> count."""

    n: int = 0
    roles: Counter[str] = field(default_factory=Counter)
    capabilities: Counter[str] = field(default_factory=Counter)
    tags: Counter[str] = field(default_factory=Counter)
    tool_names: Counter[str] = field(default_factory=Counter)
    warnings: Counter[str] = field(default_factory=Counter)
    turns: Counter[int] = field(default_factory=Counter)
    chars: Counter[int] = field(default_factory=Counter)
    calls_per_traj: Counter[int] = field(default_factory=Counter)
    totals: Counter[str] = field(default_factory=Counter)
    """loss_turns, untrained_assistant, parse_errors, with_calls, with_tools."""
    per_source: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, traj: Trajectory) -> None:
        self.n += 1
        ps = self.per_source[f"{traj.source.dataset or traj.source.format}"]
        ps["records"] += 1
        ncalls = trained = results = chars = 0
        totals = self.totals
        for m in traj.messages:
            self.roles[m.role] += 1
            chars += len(m.content)
            if isinstance(m, AssistantMessage):
                if m.tool_calls:
                    ncalls += len(m.tool_calls)
                    self.tool_names.update(c.name for c in m.tool_calls)
                    totals["parse_errors"] += sum(c.parse_error is not None for c in m.tool_calls)
                if m.loss:
                    trained += 1
                    self.capabilities[m.capability or "unlabelled"] += 1
                else:
                    totals["untrained_assistant"] += 1
            elif isinstance(m, ToolMessage):
                results += 1
        totals["loss_turns"] += trained
        ps["messages"] += len(traj.messages)
        ps["tool_calls"] += ncalls
        ps["trained_turns"] += trained
        ps["tool_results"] += results
        totals["with_calls"] += ncalls > 0
        totals["with_tools"] += bool(traj.tools)
        self.calls_per_traj[ncalls] += 1
        self.turns[len(traj.messages)] += 1
        self.chars[chars] += 1
        self.tags.update(f"{k}={v}" for k, v in traj.tags.items())
        self.warnings.update(i.code for i in check(traj, allow_parse_errors=True))

    def merge(self, other: StatsAccumulator) -> None:
        """Add `other`'s counts (merge shards in stream order: ties in `top_tools` keep first-seen order)."""
        self.n += other.n
        for name in ("roles", "capabilities", "tags", "tool_names", "warnings", "turns", "chars",
                     "calls_per_traj", "totals"):
            getattr(self, name).update(getattr(other, name))
        for src, counts in other.per_source.items():
            self.per_source[src].update(counts)

    def to_state(self) -> dict[str, Any]:
        """A JSON-ready snapshot (`from_state` inverts it; integer keys become strings in JSON)."""
        return {"n": self.n, **{name: dict(getattr(self, name)) for name in _COUNTERS},
                "per_source": {k: dict(v) for k, v in self.per_source.items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> StatsAccumulator:
        acc = cls(n=state["n"])
        for name in _COUNTERS:
            cast = int if name in _INT_KEYED else str
            getattr(acc, name).update({cast(k): v for k, v in state[name].items()})
        for k, v in state["per_source"].items():
            acc.per_source[k].update(v)
        return acc

    def result(self) -> dict[str, Any]:
        t = self.totals
        return {
            "records": self.n,
            "messages": sum(self.roles.values()),
            "roles": dict(sorted(self.roles.items())),
            "turns_per_record": _dist(self.turns),
            "chars_per_record": _dist(self.chars),
            "tool_calls": sum(self.tool_names.values()),
            "tool_calls_per_record": _dist(self.calls_per_traj),
            "records_with_tool_calls": t["with_calls"],
            "records_offering_tools": t["with_tools"],
            "distinct_tools_called": len(self.tool_names),
            "top_tools": dict(self.tool_names.most_common(10)),
            "tool_call_parse_errors": t["parse_errors"],
            "loss_bearing_turns": t["loss_turns"],
            "untrained_assistant_turns": t["untrained_assistant"],
            "capabilities": dict(sorted(self.capabilities.items())),
            "tags": dict(sorted(self.tags.items())),
            "validation": dict(sorted(self.warnings.items())),
            "per_source": {k: dict(sorted(v.items())) for k, v in sorted(self.per_source.items())},
        }


_COUNTERS = ("roles", "capabilities", "tags", "tool_names", "warnings", "turns", "chars", "calls_per_traj", "totals")
_INT_KEYED = ("turns", "chars", "calls_per_traj")


def compute_stats(trajectories: Iterable[Trajectory]) -> dict[str, Any]:
    """Counts over `trajectories`; deterministic (sorted keys) and JSON-ready."""
    acc = StatsAccumulator()
    for traj in trajectories:
        acc.add(traj)
    return acc.result()
