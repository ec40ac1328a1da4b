"""Step-level tool use, T-Eval style: at each step of a gold trajectory, the model sees the history and
gives the next step; each step is scored per capability.

Items (`StepItem`) come from held-out gold trajectories: the scripted experts' episodes of both
environments' held-out splits (other tools, templates and seeds than training), or any file
agentflan reads (`--tasks FILE`, any reader; trajectories without tools are skipped and counted).
Each assistant turn of a trajectory is one item: its history (everything before it, observations
included) and the gold turn.

The model answers in a protocol (`Protocol.act` on the history): by default the JSON protocol
(`json`: one object with thought, action and action input) and the string protocol (`react`:
`Thought: / Action: / Action Input:`), T-Eval's two formats. `instruct:json` and
`instruct:string` (the next call only, without a thought) and the chat protocols work too;
protocols that state single calls skip the answer steps.

Dimensions, per step (no LLM judge):

* **instruct**: the reply parses in the stated protocol; `instruct_strict` also needs nothing
  around it (no `extra_text`, no self-written observation).
* **retrieve**: the right next move: the gold tool as the first call, or an answer where the gold
  step answers.
* **understand** (steps whose gold is a call): `args_exact`, the first call's arguments equal the
  gold arguments (numbers by value, `1 == 1.0`; booleans only equal booleans; strings exactly), and
  `args_f1`, the F1 of the (key, value) pairs.
* **reason** (steps with a gold thought, under protocols that ask for one): ROUGE-L F1 (longest
  common subsequence of lower-cased word tokens) between the model's thought and the gold
  thought. An unparseable reply scores 0 on every dimension.

Outcomes: `correct_call`, `wrong_tool`, `wrong_argument`, `extra_call` (more calls than the gold
step, or a call where the gold step answers), `no_call` / `refusal` (an answer where a call was
due; `refusal` when it declines), `correct_answer`, `unparseable`, `format_hallucination` (the
reply parses but carries extra text or writes the tool's result itself).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from agentflan.errors import ConfigError
from agentflan.eval.runlog import Exchange, single_record
from agentflan.eval.score import pct, rate
from agentflan.eval.suite import SingleActionSuite, SuiteRequest
from agentflan.formats.protocols import Action, Protocol
from agentflan.schema import AssistantMessage, Trajectory

SUITE = "steps"
DEFAULT_PROTOCOLS = ("json", "react")
THOUGHTLESS = frozenset({"instruct:json", "instruct:string", "tflan:nocot"})
DIMENSIONS = ("instruct", "retrieve", "understand", "reason")
_REFUSAL = re.compile(r"(?i)\b(?:can(?:'|no)?t|cannot|unable|not able|sorry)")


class StepItem(BaseModel):
    """One step of a gold trajectory: the history before it and the gold assistant turn."""

    model_config = ConfigDict(extra="forbid")

    id: str
    source: str
    index: int
    history: Trajectory
    gold: AssistantMessage

    @property
    def final_tool(self) -> str | None:
        return self.history.tags.get("final_tool")

    def gold_calls(self) -> list[Any]:
        return [c for c in self.gold.tool_calls if c.name != self.final_tool]

    def gold_trajectory(self) -> Trajectory:
        return self.history.model_copy(update={"messages": [*self.history.messages, self.gold]})


def expert_trajectories(n: int, seed: int = 0, split: str = "heldout") -> list[Trajectory]:
    """Expert episodes of every environment's `split`, alternating (Tool-API, DB, ...)."""
    from agentflan.envs import env_names, get_env
    from agentflan.envs.base import ExpertPolicy, run_episode

    per_env = []
    for name in env_names(ordered=True):
        info = get_env(name)
        eps = []
        for task in info.generate(n, split, seed):
            ep = run_episode(info.make(), task, ExpertPolicy(info.expert(task)))
            eps.append(ep.trajectory)
        per_env.append(eps)
    return [t for pair in zip(*per_env, strict=True) for t in pair]


def step_items(trajs: list[Trajectory], n: int, *, calls_only: bool = False) -> tuple[list[StepItem], Counter[str]]:
    """The first `n` steps of `trajs` (in order), and what was skipped, by reason."""
    items: list[StepItem] = []
    skipped: Counter[str] = Counter()
    for traj in trajs:
        if not traj.tools:
            skipped["no tools offered"] += 1
            continue
        final_tool = traj.tags.get("final_tool")
        for k, m in enumerate(traj.messages):
            if len(items) >= n:
                return items, skipped
            if not isinstance(m, AssistantMessage) or not m.loss:
                continue
            if calls_only and not [c for c in m.tool_calls if c.name != final_tool]:
                skipped["answer step (the protocol states calls only)"] += 1
                continue
            history = traj.model_copy(update={"messages": traj.messages[:k]})
            items.append(StepItem(id=f"{traj.id}#{k}", source=traj.source.dataset or traj.id, index=k,
                                  history=history, gold=m))
    return items, skipped


def load_items(n: int, seed: int = 0, tasks_file: str | Path | None = None, *,
               calls_only: bool = False) -> tuple[list[StepItem], Counter[str]]:
    """Step items from the environments' held-out experts, or from a trajectory file."""
    if tasks_file is None:
        return step_items(expert_trajectories(n, seed), n, calls_only=calls_only)
    from agentflan.io import read

    if not Path(tasks_file).exists():
        raise ConfigError(f"{tasks_file} does not exist")
    trajs = list(read(str(tasks_file), on_error="raise"))  # a bad record is named, never dropped unseen
    items, skipped = step_items(trajs, n, calls_only=calls_only)
    if not items:
        raise ConfigError(f"{tasks_file}: no assistant step to evaluate ({dict(skipped) or 'no trajectories'})")
    return items, skipped


# ---- scoring ----------------------------------------------------------------------------------------------

def same_value(a: Any, b: Any) -> bool:
    """JSON values equal: numbers by value, booleans only to booleans, containers element-wise."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def args_f1(pred: dict[str, Any], gold: dict[str, Any]) -> float:
    """F1 of the (key, value) pairs of two argument objects (1.0 when both are empty)."""
    if not pred and not gold:
        return 1.0
    hit = sum(1 for k, v in pred.items() if k in gold and same_value(v, gold[k]))
    if not hit:
        return 0.0
    p, r = hit / len(pred), hit / len(gold)
    return 2 * p * r / (p + r)


def rouge_l(pred: str, gold: str) -> float:
    """ROUGE-L F1 of lower-cased word tokens (longest common subsequence).

    Examples:
        >>> rouge_l("I look up the book", "I look up the book"), rouge_l("", "x")
        (1.0, 0.0)
    """
    a, b = re.findall(r"\w+", pred.lower()), re.findall(r"\w+", gold.lower())
    if not a or not b:
        return 1.0 if not a and not b else 0.0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if not lcs:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return round(2 * p * r / (p + r), 4)


def judge(item: StepItem, protocol: str, action: Action | None, context_limit: bool = False) -> dict[str, Any]:
    """The scores of one step (see the module docstring)."""
    gold_calls = item.gold_calls()
    gold_kind = "call" if gold_calls else "answer"
    thought = item.gold.content.strip()
    wants_reason = bool(thought) and protocol not in THOUGHTLESS
    v: dict[str, Any] = {"gold": gold_kind, "instruct": False, "instruct_strict": False, "retrieve": False,
                         "args_exact": False if gold_calls else None, "args_f1": 0.0 if gold_calls else None,
                         "reason": 0.0 if wants_reason else None}
    if action is None or context_limit:
        v["outcome"] = "context_limit"
        return v
    if action.kind == "unparseable":
        v["outcome"] = "unparseable"
        return v
    v["instruct"] = True
    flagged = [f for f in action.flags if f in ("extra_text", "hallucinated_observation")]
    v["instruct_strict"] = not flagged
    if wants_reason:
        v["reason"] = rouge_l(action.thought, thought)
    calls = [c for c in action.calls if c.name != item.final_tool] if action.kind == "call" else []
    if gold_calls:
        gold = gold_calls[0]
        if calls:
            v["retrieve"] = calls[0].name == gold.name
            v["args_exact"] = same_value(calls[0].arguments, gold.arguments)
            v["args_f1"] = round(args_f1(calls[0].arguments, gold.arguments), 4)
            outcome = ("wrong_tool" if not v["retrieve"] else "wrong_argument" if not v["args_exact"]
                       else "extra_call" if len(calls) > len(gold_calls) else "correct_call")
        else:
            outcome = "refusal" if _REFUSAL.search(action.answer or "") else "no_call"
    else:
        v["retrieve"] = not calls
        outcome = "extra_call" if calls else "correct_answer"
    v["outcome"] = "format_hallucination" if flagged else outcome
    return v


def record(item: StepItem, protocol: str, agent: str, ex: Exchange) -> dict[str, Any]:
    verdict = None if ex.error is not None else judge(item, protocol, ex.action, ex.context_limit)
    return single_record(SUITE, protocol, agent, item.id, ex, source=item.source,
                         item=item.model_dump(mode="json"), verdict=verdict)


def rescore(rec: dict[str, Any], proto: Protocol) -> dict[str, Any] | None:
    """The scores of a logged step, from its completions replayed through the protocol."""
    from agentflan.eval.runlog import replay
    from agentflan.formats.protocols import conversation_key

    if rec.get("error") is not None:
        return None
    item = StepItem.model_validate(rec["item"])
    action = None if rec.get("context_limit") else replay(proto, item.history, conversation_key(item.history),
                                                           rec["completions"])
    return judge(item, rec["protocol"], action, bool(rec.get("context_limit")))


def mean(values: list[float]) -> dict[str, float | int]:
    """A mean with its standard error."""
    n = len(values)
    if not n:
        return {"n": 0, "mean": 0.0, "se": 0.0}
    m = sum(values) / n
    var = sum((x - m) ** 2 for x in values) / (n - 1) if n > 1 else 0.0
    return {"n": n, "mean": round(m, 4), "se": round(math.sqrt(var / n), 4)}


def outcomes(rec: dict[str, Any]) -> dict[tuple[str, str], float]:
    """A scored step's outcomes for paired comparisons: instruct and retrieve (0/1), understand
    (argument F1, steps with a gold call) and reason (ROUGE-L, steps with a gold thought)."""
    v = rec["verdict"]
    out = {("instruct", "all"): float(bool(v["instruct"])), ("retrieve", "all"): float(bool(v["retrieve"]))}
    if v.get("args_f1") is not None:
        out[("understand", "all")] = float(v["args_f1"])
    if v.get("reason") is not None:
        out[("reason", "all")] = float(v["reason"])
    return out


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's per-dimension scores (each over the steps it applies to)."""
    vs = [r["verdict"] for r in records if r.get("error") is None and r.get("verdict") is not None]
    calls = [v for v in vs if v["gold"] == "call"]
    reasons = [v["reason"] for v in vs if v["reason"] is not None]
    dims = {"instruct": rate(sum(v["instruct"] for v in vs), len(vs)),
            "instruct_strict": rate(sum(v["instruct_strict"] for v in vs), len(vs)),
            "retrieve": rate(sum(v["retrieve"] for v in vs), len(vs)),
            "understand_exact": rate(sum(bool(v["args_exact"]) for v in calls), len(calls)),
            "understand": mean([v["args_f1"] for v in calls]),
            "reason": mean(reasons)}
    parts = [dims["instruct"]["rate"], dims["retrieve"]["rate"]]
    parts += [dims[k]["mean"] for k in ("understand", "reason") if dims[k]["n"]]
    first = records[0] if records else {}
    by_source: dict[str, list[bool]] = {}
    for r in records:
        if r.get("verdict") is not None:
            by_source.setdefault(str(r.get("source", "?")).split(":")[-1], []).append(bool(r["verdict"]["retrieve"]))
    return {"suite": SUITE, "protocol": first.get("protocol"), "agent": first.get("agent"), "steps": len(records),
            "scored": len(vs), "errors": len(records) - len(vs), **dims,
            "overall": round(sum(parts) / len(parts), 4) if vs else 0.0,
            "retrieve_by_source": {k: rate(sum(v), len(v)) for k, v in sorted(by_source.items())},
            "outcomes": dict(sorted(Counter(v["outcome"] for v in vs).items())),
            "error_examples": sorted({str(r["error"])[:200] for r in records if r.get("error") is not None})[:3]}


def _m(x: dict[str, Any]) -> str:
    return f"{100 * x['mean']:.1f} ± {100 * x['se']:.1f}" if x["n"] else "-"


def table(summaries: list[dict[str, Any]]) -> str:
    """Markdown: one row per run and protocol, one column per dimension."""
    head = ["run", "protocol", "steps", "instruct %", "strict %", "retrieve %", "args exact %", "args F1 %",
            "reason ROUGE-L %", "overall %", "errors"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        rows.append("| " + " | ".join([
            str(s.get("run", "")), f"`{s.get('protocol')}`", str(s["scored"]), pct(s["instruct"]),
            pct(s["instruct_strict"]), pct(s["retrieve"]), pct(s["understand_exact"]), _m(s["understand"]),
            _m(s["reason"]), f"{100 * s['overall']:.1f}", str(s["errors"])]) + " |")
    return "\n".join(rows) + "\n"


class StepsSuite(SingleActionSuite):
    """The step-level suite as a `Suite`: one step of a held-out expert trajectory per item."""

    name = SUITE
    default = DEFAULT_PROTOCOLS

    def items(self, req: SuiteRequest, proto: Protocol) -> tuple[list[Any], dict[str, Any]]:
        items, skipped = load_items(req.n, req.seed, req.tasks_file, calls_only=not proto.episodic)
        return items, {"skipped": dict(skipped)}

    def prompt(self, item: StepItem) -> Trajectory:
        return item.history

    def gold(self, item: StepItem) -> Trajectory:
        return item.gold_trajectory()

    def record(self, item: StepItem, protocol: str, agent: str, ex: Exchange) -> dict[str, Any]:
        return record(item, protocol, agent, ex)

    def rescore(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        from agentflan.formats.protocols import get_protocol

        return rescore(rec, get_protocol(rec["protocol"]))

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize(records)

    def table(self, summaries: list[dict[str, Any]]) -> str:
        return table(summaries)

    def outcomes(self, rec: dict[str, Any]) -> dict[tuple[str, str], float]:
        return outcomes(rec)

    def panels(self, summaries: list[dict[str, Any]]) -> list[Callable[[Any], None]]:
        from agentflan.eval.score import bars, label

        dims = [("instruct", "rate"), ("retrieve", "rate"), ("understand", "mean"), ("reason", "mean")]
        return [lambda ax: bars(ax, [d for d, _ in dims], [
            (label(s), [100 * s[d][k] for d, k in dims], [100 * s[d]["se"] for d, _ in dims]) for s in summaries],
            "Step-level (T-Eval style): per capability")]


STEPS = StepsSuite()
