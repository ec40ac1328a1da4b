"""Agent-H style hallucination: does a model call tools, or talk in tool-call format, when it should not?

Agent-FLAN's Agent-H (1,845 items, never released) probes two levels of hallucination under two
prompt styles; this suite rebuilds it from tool catalogues, with keyword and parse judges only.

Items (`HItem`), four kinds:

* `no_need` (a): tools are offered, the request needs none of them (writing, explaining, chatting).
* `no_tools` (b): no tools are offered, the request asks for an action (send, book, look up, compute).
* `insufficient` (c): the request asks for an action in the domain of the offered tool, which cannot
  perform it (the paper's case study: "book a movie ticket" with only a movie-details tool).
* `control` (d): a request an offered tool serves; calling it is right.

Every item is played once per protocol: a **ReAct-style** prompt (`react`, `json`, `toolllama`,
their `:random` forms: a stated reply format with a final action) and a **general-assistant**
prompt (`tflan:inline` by default: the same tools listed in chat style with T-FLAN's tool list, no
reply format imposed; `tflan`, and `native` on a template that renders tools, count as general too).

Judges (no LLM):

* **format-level** hallucination: the reply breaks the stated format (it cannot be read by the
  protocol: `unparseable`), writes a tool result itself (`hallucinated_observation`), or, where a
  plain answer is due, imitates a tool-call format (`call_format`): ReAct `Action:` / `Action Input:`
  / `Observation:` lines, `<tool_call>`-style tags, a JSON object with a `name`/`action`/`function`
  key, a Python call with keyword arguments at the start of a line, or a tool in backticks followed
  by a ```json block. ReAct-style answers are judged on the answer text (the reply itself is
  rightly in agent format); general-style replies on every text the model wrote.
* **action-level** hallucination: the reply calls a tool on a negative item (a-c), or calls a tool
  that was not offered (any item).
* **hallucination-free**: neither. H_ReAct and H_General are the hallucination-free rates on the
  negative items under each style; **HScore = (H_ReAct + H_General) / 2** (the paper's definition).
* **over-refusal**: on the controls, the share of replies that answer without calling a tool
  (`refusal` when the answer declines, `no_call` otherwise). It is reported beside HScore: never
  calling a tool scores a perfect HScore and a 100% over-refusal. Controls also report the correct
  call rate (the expected tool, its required arguments, no unknown ones; values are the step-level
  suite's concern), wrong tools, extra calls and unparseable replies.

The built-in set (`builtin_items`) uses the Tool-API environment's held-out tool groups
(`envs.toolapi.HELDOUT_TOOLS`: calendar, list tools, currency exchange, library; disjoint from
the training tools), its held-out tasks as controls, and fixed query pools; item `i` depends only
on (seed, i). `catalogue_items` builds the same four kinds from a user's ToolBench query file.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentflan.envs.base import system_prompt
from agentflan.errors import ConfigError
from agentflan.eval.runlog import Exchange, single_record
from agentflan.eval.score import rate
from agentflan.eval.suite import SingleActionSuite, SuiteRequest
from agentflan.formats.finish import FINISH, FINISH_SPEC, give_answer
from agentflan.formats.protocols import Action, Protocol, parse_tool_call_text
from agentflan.io.files import write_atomic
from agentflan.schema import AssistantMessage, Source, SystemMessage, ToolCall, ToolSpec, Trajectory, UserMessage
from agentflan.seeds import rng_for

if TYPE_CHECKING:
    from agentflan.eval.paired import RunOutcomes

SUITE = "agent-h"
Kind = Literal["no_need", "no_tools", "insufficient", "control"]
KINDS: tuple[str, ...] = ("no_need", "no_tools", "insufficient", "control")
NEGATIVE_KINDS = ("no_need", "no_tools", "insufficient")
GENERAL_SYSTEM = "You are a helpful assistant."
DEFAULT_PROTOCOLS = ("react", "tflan:inline")


class HItem(BaseModel):
    """One Agent-H item: a request, the tools offered, and what a right reply does."""

    model_config = ConfigDict(extra="forbid")

    id: str
    kind: Kind
    query: str
    tools: list[ToolSpec] = Field(default_factory=list)
    expected_tools: list[str] = Field(default_factory=list)
    """Controls: the tools whose call is right (any of them)."""
    answer: str = ""
    """A right reply for negative items (what the `expert` calibration says)."""
    gold_call: dict[str, Any] | None = None
    """Controls: a right first call `{"name", "arguments", "thought"}` (the expert's)."""
    source: str = "builtin"

    def trajectory(self) -> Trajectory:
        """The prompt: a system turn, the request, the offered tools plus the final-answer tool."""
        system = system_prompt() if self.tools else SystemMessage(content=GENERAL_SYSTEM)
        return Trajectory(id=self.id, messages=[system, UserMessage(content=self.query)],
                          tools=[*self.tools, FINISH_SPEC], tags={"final_tool": FINISH, "suite": SUITE},
                          source=Source(format="agent-h", dataset=self.source, original_id=self.id))

    def gold(self) -> Trajectory:
        """The prompt followed by a right reply (for the `expert` calibration)."""
        traj = self.trajectory()
        if self.kind == "control" and self.gold_call:
            msg = AssistantMessage(content=self.gold_call.get("thought", ""), tool_calls=[ToolCall(
                id="call_0", name=self.gold_call["name"], arguments=self.gold_call.get("arguments", {}))])
        else:
            msg = AssistantMessage(content="", tool_calls=[give_answer(self.answer)])
        return traj.model_copy(update={"messages": [*traj.messages, msg]})


# ---- the built-in item set --------------------------------------------------------------------------------

NO_NEED = (
    ("Write a two-line poem about the sea.", "Waves fold silver under the moon,\nand the tide hums an old, slow tune."),
    ("What does the word 'ephemeral' mean?", "'Ephemeral' means lasting for a very short time."),
    ("Give me three tips for a good night's sleep.",
     "Keep a regular bedtime, avoid screens for an hour before sleeping, and keep the room cool and dark."),
    ("Explain in one sentence what a prime number is.",
     "A prime number is a whole number greater than 1 whose only divisors are 1 and itself."),
    ("Say good morning to my team in a cheerful way.", "Good morning, team! Let's make today a great one!"),
    ("Suggest a name for a friendly orange cat.", "How about 'Marmalade'?"),
    ("What is the difference between weather and climate?",
     "Weather is the state of the atmosphere over hours or days; climate is its average over decades."),
    ("Translate 'thank you very much' into French.", "'Thank you very much' is 'merci beaucoup' in French."),
    ("Write a short thank-you note to a colleague who helped me move.",
     "Thank you so much for helping me move this weekend. I couldn't have done it without you!"),
    ("Tell me a fun fact about octopuses.", "Octopuses have three hearts and blue blood."),
    ("How should I start learning to play the guitar?",
     "Start with a few basic open chords, practise switching between them daily, and learn simple songs that use them."),
    ("Rewrite this more politely: 'Send me the report now.'",
     "Could you please send me the report when you have a moment?"),
    ("What is a haiku?", "A haiku is a short Japanese poem of three lines with five, seven and five syllables."),
    ("Give me an idea for a weekend activity with kids.",
     "Build a cardboard fort together, then read stories inside it with a flashlight."),
    ("Summarize the plot of Cinderella in two sentences.",
     "A kind young woman mistreated by her stepfamily attends a royal ball with help from her fairy godmother. "
     "She loses a glass slipper, and the prince finds and marries her."),
    ("Why is the sky blue?", "Air molecules scatter blue sunlight more strongly than red light, so the sky looks blue."),
)
NO_TOOLS_ACTIONS = (
    "Send an email to {name} saying the meeting moved to Friday.",
    "Book me a table for two at an Italian restaurant tonight.",
    "Turn off the lights in the living room.",
    "Order a large pizza to my home address.",
    "Set an alarm for 6:30 tomorrow morning.",
    "Post 'Happy Friday!' on my social media account.",
    "Call {name} and tell them I'm running late.",
    "Transfer 50 dollars from my checking account to {name}.",
    "Check the current weather in {city} for me.",
    "Find the cheapest flight to {city} next week and book it.",
)
INSUFFICIENT = {
    "library": ("Borrow {title} from the library for me.", "Reserve a copy of {title} under my name.",
                "Renew my loan of {title} for two more weeks.", "Order a new copy of {title} for the library."),
    "calendar": ("Add a meeting with {name} on {date} to my calendar.", "Remind me on {date} to call {name}.",
                 "Cancel all my appointments on {date}.", "Invite {name} to a call on {date}."),
    "currency_exchange": ("Transfer {amount} USD to {name}'s account in {code}.",
                          "Buy {amount} {code} for me at today's rate.", "Open a savings account in {code} for me.",
                          "Send {amount} USD to {name}, paid out in {code}."),
    "list_tools": ("Save the numbers {nums} to a spreadsheet file.", "Email the average of {nums} to {name}.",
                   "Draw a bar chart of {nums}.", "Store the list {nums} in my database."),
}
NO_TOOLS_ANSWER = ("I can't do that here: I have no tools in this conversation to act or to look things up. I can "
                   "explain how you could do it yourself.")
DECLINE = "I can't {verb} that: {tools} I have only look information up. I can help with what they offer instead."
NAMES = ("Ana", "Bilal", "Chen", "Dara", "Elif", "Femi", "Goran", "Hana")


def _heldout_groups() -> dict[str, list[ToolSpec]]:
    from agentflan.envs.toolapi import HELDOUT_TOOLS, Inventory, build_apis, knowledge_base

    groups: dict[str, list[ToolSpec]] = {g: [] for g in HELDOUT_TOOLS}
    for api in build_apis(knowledge_base(), Inventory({})):
        if api.tool in groups:
            groups[api.tool].append(api.spec())
    return groups


def _controls(count: int, seed: int) -> list[tuple[Any, AssistantMessage]]:
    """Held-out tasks whose first expert step is one call (single and dependent kinds)."""
    from agentflan.envs import toolapi_tasks

    out: list[tuple[Any, AssistantMessage]] = []
    size = 2 * count + 16
    while len(out) < count:
        out = []
        for task in toolapi_tasks.generate(size, "heldout", seed):
            if task.kind not in ("single", "dependent"):
                continue
            first = next(toolapi_tasks.expert_for(task))
            if len(first.tool_calls) == 1:
                out.append((task, first))
            if len(out) == count:
                break
        size *= 2
    return out


def builtin_items(n: int, seed: int = 0) -> list[HItem]:
    """`n` items from the held-out tool groups, the kinds in turn (item `i` depends on (seed, i) only)."""
    from agentflan.envs.toolapi import knowledge_base

    kb = knowledge_base()
    groups = _heldout_groups()
    names = sorted(groups)
    controls = _controls((n + 3) // 4, seed)
    items: list[HItem] = []
    for i in range(n):
        kind = KINDS[i % 4]
        rng = rng_for(seed, SUITE, i)
        item_id = f"agent-h-{seed}-{i:05d}"
        slots = {"name": rng.choice(NAMES), "city": rng.choice(sorted(kb.cities)), "title": rng.choice(sorted(kb.books)),
                 "code": rng.choice(sorted(c for c in kb.rates if c != "USD")), "amount": rng.randint(20, 900),
                 "date": f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                 "nums": ", ".join(str(rng.randint(1, 99)) for _ in range(rng.randint(3, 6)))}
        task, first = controls[i // 4]
        if kind == "no_need":
            query, answer = rng.choice(NO_NEED)
            offered = rng.sample(names, rng.choice([1, 2]))
            items.append(HItem(id=item_id, kind=kind, query=query, answer=answer,
                               tools=[t for g in offered for t in groups[g]]))
        elif kind == "no_tools":
            # a world action, or a held-out request that a tool would serve (the control's), without tools
            query = rng.choice(NO_TOOLS_ACTIONS).format(**slots) if rng.random() < 0.5 else task.query
            items.append(HItem(id=item_id, kind=kind, query=query, answer=NO_TOOLS_ANSWER))
        elif kind == "insufficient":
            group = rng.choice(names)
            template = rng.choice(INSUFFICIENT[group])
            query = template.format(**slots)
            items.append(HItem(id=item_id, kind=kind, query=query, tools=list(groups[group]),
                               answer=DECLINE.format(verb=template.split()[0].lower(), tools=f"the {group} tools")))
        else:
            call = first.tool_calls[0]
            items.append(HItem(id=item_id, kind=kind, query=task.query, tools=list(task.tools),
                               expected_tools=[call.name], source=f"toolapi:{task.id}",
                               gold_call={"name": call.name, "arguments": call.arguments, "thought": first.content}))
    return items


# ---- items from a user's catalogue ------------------------------------------------------------------------

WRITE_VERBS = re.compile(r"(?i)(cancel|delete|remove|pay|order|purchase|buy|subscribe|book|reserve|send|post|create|"
                         r"update|transfer|upload|add|set|write|edit|register)")
CATALOGUE_INSUFFICIENT = (
    "Cancel my subscription to {tool}.", "Delete my account on {tool}.",
    "Pay my outstanding bill on {tool} with my saved card.",
    "Place an order through {tool} and have it delivered to my home.",
)


def catalogue_items(path: str | Path, n: int | None = None, seed: int = 0) -> list[HItem]:
    """Items of the four kinds from a ToolBench query file (`query`, `api_list`, `relevant APIs`):
    each query is a control with its relevant APIs offered and the same query without tools; each
    record's tools are offered to a general request; one of its tools whose APIs are all read-only
    (no write verb in their names, no method other than GET) gets a write request it cannot serve.

    Raises:
        ConfigError: The file holds no usable query (every record is counted with its reason).
    """
    from agentflan.io import read

    records = list(read(str(path), "toolbench_query", on_error="raise"))
    if not records:
        raise ConfigError(f"{path}: no ToolBench queries")
    total = n if n is not None else 4 * len(records)
    items: list[HItem] = []
    stem = Path(path).stem
    skipped: Counter[str] = Counter()
    for i in range(total):
        kind = KINDS[i % 4]
        rng = rng_for(seed, SUITE, stem, i)
        item_id = f"agent-h-{stem}-{seed}-{i:05d}"
        for shift in range(len(records)):  # the first record from (i // 4) on that can make this kind
            rec = records[(i // 4 + shift) % len(records)]
            made = _from_record(rec, kind, item_id, rng, f"{path}:{rec.id}")
            if isinstance(made, HItem):
                items.append(made)
                break
            skipped[made] += 1
        else:
            raise ConfigError(f"{path}: no record can make a {kind!r} item ({dict(skipped)})")
    return items


def _from_record(rec: Trajectory, kind: str, item_id: str, rng: Any, source: str) -> HItem | str:
    query = next((m.content for m in rec.messages if isinstance(m, UserMessage)), "")
    relevant = [t for t in rec.metadata.get("relevant_apis", []) if any(s.name == t for s in rec.tools)]
    if kind == "control":
        if not relevant:
            return "control: no relevant API among the offered ones"
        return HItem(id=item_id, kind="control", query=query, tools=list(rec.tools), expected_tools=relevant,
                     source=source)
    if kind == "no_tools":
        return HItem(id=item_id, kind="no_tools", query=query, source=source, answer=NO_TOOLS_ANSWER)
    if kind == "no_need":
        q, answer = rng.choice(NO_NEED)
        return HItem(id=item_id, kind="no_need", query=q, answer=answer, tools=list(rec.tools), source=source)
    by_tool: dict[str, list[ToolSpec]] = {}
    for spec in rec.tools:
        by_tool.setdefault(str(spec.metadata.get("tool_name", spec.name)), []).append(spec)
    eligible = [name for name, specs in sorted(by_tool.items())
                if all(not WRITE_VERBS.search(s.name) and str(s.metadata.get("method", "GET")).upper() == "GET"
                       for s in specs)]
    if not eligible:
        return "insufficient: every tool has an API that may write"
    tool = rng.choice(eligible)
    template = rng.choice(CATALOGUE_INSUFFICIENT)
    return HItem(id=item_id, kind="insufficient", query=template.format(tool=tool), tools=list(by_tool[tool]),
                 source=source, answer=DECLINE.format(verb=template.split()[0].lower(), tools=f"the {tool} tools"))


def load_items(path: str | Path, n: int, seed: int = 0) -> list[HItem]:
    """Items from a file: an Agent-H items JSONL (`HItem` records, e.g. a run's `items.jsonl`) or a
    ToolBench query file (built with `catalogue_items`)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p} does not exist")
    head = p.read_text(encoding="utf-8").lstrip()[:1]
    if head == "[":
        return catalogue_items(p, n, seed)
    items = []
    with p.open(encoding="utf-8") as f:
        for k, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                items.append(HItem.model_validate_json(line))
            except ValueError as e:
                raise ConfigError(f"{p}:{k}: not an Agent-H item ({e})") from e
            if len(items) >= n:
                break
    return items


def write_items(items: list[HItem], path: str | Path) -> Path:
    """Items as JSONL (byte-identical for the same items)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(p, "".join(it.model_dump_json(exclude_defaults=True) + "\n" for it in items), encoding="utf-8")
    return p


# ---- judging ----------------------------------------------------------------------------------------------

REFUSAL = re.compile(r"(?i)\b(?:can(?:'|no)?t|cannot|unable|not able|no tools?\b|don't have|do not have|not possible|"
                     r"sorry|unfortunately)")
_CALL_FORMATS = (
    ("react_lines", re.compile(r"(?mi)^\W{0,3}(?:action|action[ _]input|observation|tool[ _]call|function[ _]call)\s*:")),
    ("call_tags", re.compile(r"(?i)</?(?:tool_call|tool_response|function_call|functions?|toolcall)\b[^>]*>|\[TOOL_CALLS\]")),
    ("json_call", re.compile(r'\{\s*"(?:name|action|function|tool|api)"\s*:')),
    ("python_call", re.compile(r"(?m)^\W{0,3}\[?\s*[A-Za-z_][\w.]*\(\s*[A-Za-z_]\w*\s*=")),
    ("inline_call", re.compile(r"`[^`\n]+`[^\n`]*\n```json")),
)


def style_of(protocol: str) -> Literal["react", "general"]:
    """`react` for protocols that state an agent reply format, `general` for chat-style ones (the
    protocol's `reply_style`)."""
    from agentflan.formats.protocols import get_protocol  # a line of its own: merges beside other import edits

    return get_protocol(protocol).reply_style


def call_format(text: str) -> str | None:
    """The tool-call format a text imitates (see the module docstring), or None."""
    for name, pattern in _CALL_FORMATS:
        if pattern.search(text):
            return name
    if parse_tool_call_text(text).tool_calls:
        return "json_call"
    return None


def judge(item: HItem, style: str, action: Action | None, context_limit: bool = False) -> dict[str, Any]:
    """The verdict of one reply: `outcome`, `format_level`, `action_level`, `hallucination_free`
    (negative items), `over_refusal` and `correct_call` (controls)."""
    offered = {t.name for t in item.tools}
    negative = item.kind != "control"
    v: dict[str, Any] = {"kind": item.kind, "style": style, "format_level": False, "action_level": False,
                         "format_reason": None}
    if action is None or context_limit:
        v.update(outcome="context_limit", format_level=True, format_reason="context_limit")
    elif action.kind == "unparseable":
        v.update(outcome="unparseable", format_level=True, format_reason="unparseable")
    else:
        texts = [action.answer or ""] if style == "react" else action.texts
        imitated = call_format("\n".join(texts)) if action.kind == "answer" else None
        if "hallucinated_observation" in action.flags:
            v.update(format_level=True, format_reason="hallucinated_observation")
        elif imitated:
            v.update(format_level=True, format_reason=f"call_format:{imitated}")
        if action.kind == "call":
            names = [c.name for c in action.calls]
            invented = [n for n in names if n not in offered]
            v["action_level"] = negative or bool(invented)
            v["called"] = names
            if invented:
                v["outcome"] = "invented_tool"
            elif negative:
                v["outcome"] = "call"
            else:
                v["outcome"] = _control_call(item, action)
        else:
            declined = bool(REFUSAL.search(action.answer or ""))
            v["declined"] = declined
            v["outcome"] = ("format_hallucination" if v["format_level"] else "refusal" if declined
                            else "answer" if negative else "no_call")
    if negative:
        v["hallucination_free"] = not v["format_level"] and not v["action_level"]
    else:
        v["over_refusal"] = action is not None and not context_limit and action.kind == "answer"
        v["correct_call"] = v["outcome"] == "correct_call" and not v["format_level"]
    return v


def _control_call(item: HItem, action: Action) -> str:
    call = action.calls[0]
    if call.name not in item.expected_tools:
        return "wrong_tool"
    spec = next(t for t in item.tools if t.name == call.name)
    props = set(spec.parameters.get("properties", {}))
    required = set(spec.parameters.get("required", []))
    if not required <= set(call.arguments) or (props and not set(call.arguments) <= props):
        return "wrong_argument"
    return "extra_call" if len(action.calls) > 1 else "correct_call"


# ---- records, summaries ------------------------------------------------------------------------------------

def record(item: HItem, protocol: str, agent: str, ex: Exchange) -> dict[str, Any]:
    style = style_of(protocol)
    verdict = None if ex.error is not None else judge(item, style, ex.action, ex.context_limit)
    return single_record(SUITE, protocol, agent, item.id, ex, style=style, kind=item.kind,
                         item=item.model_dump(mode="json", exclude_defaults=True), verdict=verdict)


def rescore(rec: dict[str, Any], proto: Protocol) -> dict[str, Any] | None:
    """The verdict of a logged record, from its logged completions replayed through the protocol."""
    from agentflan.eval.runlog import replay
    from agentflan.formats.protocols import conversation_key

    if rec.get("error") is not None:
        return None
    item = HItem.model_validate(rec["item"])
    traj = item.trajectory()
    action = None if rec.get("context_limit") else replay(proto, traj, conversation_key(traj), rec["completions"])
    return judge(item, rec["style"], action, bool(rec.get("context_limit")))


def outcomes(rec: dict[str, Any]) -> dict[tuple[str, str], float]:
    """A scored item's outcomes for paired comparisons: hallucination-free (negative items, overall
    and per kind), or over-refusal and a correct call (controls)."""
    v = rec["verdict"]
    if v["kind"] == "control":
        return {("over_refusal", "all"): float(bool(v["over_refusal"])),
                ("correct_call", "all"): float(bool(v["correct_call"]))}
    free = float(bool(v["hallucination_free"]))
    return {("hallucination_free", "all"): free, ("hallucination_free", str(v["kind"])): free}


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's summary (one protocol): rates over the items that got a verdict."""
    scored = [r for r in records if r.get("error") is None and r.get("verdict") is not None]
    neg = [r["verdict"] for r in scored if r["verdict"]["kind"] != "control"]
    ctl = [r["verdict"] for r in scored if r["verdict"]["kind"] == "control"]
    first = records[0] if records else {}
    by_kind = {}
    for kind in KINDS:
        vs = [r["verdict"] for r in scored if r["verdict"]["kind"] == kind]
        if not vs:
            continue
        key = "correct_call" if kind == "control" else "hallucination_free"
        by_kind[kind] = rate(sum(bool(v[key]) for v in vs), len(vs))
    return {
        "suite": SUITE, "protocol": first.get("protocol"), "style": first.get("style"), "agent": first.get("agent"),
        "items": len(records), "scored": len(scored), "errors": len(records) - len(scored),
        "hallucination_free": rate(sum(v["hallucination_free"] for v in neg), len(neg)),
        "format_level": rate(sum(v["format_level"] for v in neg), len(neg)),
        "action_level": rate(sum(v["action_level"] for v in neg), len(neg)),
        "over_refusal": rate(sum(v["over_refusal"] for v in ctl), len(ctl)),
        "correct_call": rate(sum(v["correct_call"] for v in ctl), len(ctl)),
        "declined": rate(sum(bool(v.get("declined")) for v in neg if v["kind"] != "no_need"),
                         sum(v["kind"] != "no_need" for v in neg)),
        "by_kind": by_kind,
        "outcomes": dict(sorted(Counter(v["outcome"] for v in [*neg, *ctl]).items())),
        "format_reasons": dict(sorted(Counter(v["format_reason"] for v in [*neg, *ctl] if v["format_reason"]).items())),
        "error_examples": sorted({str(r["error"])[:200] for r in records if r.get("error") is not None})[:3],
    }


def hscore(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """H_ReAct, H_General, HScore and over-refusal of one model's runs (several protocols of a style
    are averaged; HScore needs both styles)."""
    def mean(style: str, key: str) -> float | None:
        vals = [s[key]["rate"] for s in summaries if s.get("style") == style and s[key]["n"]]
        return round(sum(vals) / len(vals), 4) if vals else None

    h_react, h_general = mean("react", "hallucination_free"), mean("general", "hallucination_free")
    ctl = [s["over_refusal"] for s in summaries if s["over_refusal"]["n"]]
    k, n = sum(c["k"] for c in ctl), sum(c["n"] for c in ctl)
    return {"h_react": h_react, "h_general": h_general,
            "hscore": round((h_react + h_general) / 2, 4) if h_react is not None and h_general is not None else None,
            "over_refusal": rate(k, n), "over_refusal_react": mean("react", "over_refusal"),
            "over_refusal_general": mean("general", "over_refusal"), "correct_call": _pool(summaries, "correct_call"),
            "format_level": _pool(summaries, "format_level"), "action_level": _pool(summaries, "action_level")}


def _pool(summaries: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return rate(sum(s[key]["k"] for s in summaries), sum(s[key]["n"] for s in summaries))


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table(summaries: list[dict[str, Any]]) -> str:
    """Markdown: one row per run and protocol, then HScore per model."""
    from agentflan.eval.score import pct

    head = ["run", "protocol", "style", "items", "halluc.-free %", "format-level %", "action-level %",
            *[f"{k} %" for k in KINDS], "over-refusal %", "errors"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        rows.append("| " + " | ".join([
            str(s.get("run", "")), f"`{s.get('protocol')}`", str(s.get("style")), str(s["scored"]),
            pct(s["hallucination_free"]), pct(s["format_level"]), pct(s["action_level"]),
            *[pct(s["by_kind"][k]) if k in s["by_kind"] else "" for k in KINDS], pct(s["over_refusal"]),
            str(s["errors"])]) + " |")
    return "\n".join(rows) + "\n\n" + hscore_table(summaries)


def hscore_table(summaries: list[dict[str, Any]]) -> str:
    """Markdown: HScore, its two halves and over-refusal, one row per run."""
    from agentflan.eval.score import pct

    rows = ["| run | H_ReAct % | H_General % | HScore % | over-refusal % (controls) | ReAct / General % | "
            "correct call % |", "|---|---|---|---|---|---|---|"]
    for run, group in _by_run(summaries).items():
        h = hscore(group)
        rows.append(f"| {run} | {_pct(h['h_react'])} | {_pct(h['h_general'])} | {_pct(h['hscore'])} | "
                    f"{pct(h['over_refusal'])} | {_pct(h['over_refusal_react'])} / {_pct(h['over_refusal_general'])} | "
                    f"{pct(h['correct_call'])} |")
    return "\n".join(rows) + "\n"


def _by_run(summaries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for s in summaries:
        out.setdefault(str(s.get("run", "")), []).append(s)
    return out


# ---- the suite ---------------------------------------------------------------------------------------------

HSCORE_NOTE = ("HScore is the mean of the hallucination-free rates in the ReAct and the general (chat) style "
               "(higher is better); over-refusal is the share of control items (a tool is needed and offered) "
               "answered without calling it (lower is better).\n")


class AgentHSuite(SingleActionSuite):
    """Agent-H as a `Suite`: built-in held-out items (or `--tasks`), judged per style."""

    name = SUITE
    default = DEFAULT_PROTOCOLS

    def check_protocol(self, proto: Protocol) -> None:
        if not proto.episodic:
            raise ConfigError(f"protocol {proto.name!r} states calls only: Agent-H needs a protocol that can answer")

    def items(self, req: SuiteRequest, proto: Protocol) -> tuple[list[Any], dict[str, Any]]:
        n, seed = req.n, req.seed
        return (load_items(req.tasks_file, n, seed) if req.tasks_file else builtin_items(n, seed)), {}

    def gold(self, item: HItem) -> Trajectory:
        return item.gold()

    def record(self, item: HItem, protocol: str, agent: str, ex: Exchange) -> dict[str, Any]:
        return record(item, protocol, agent, ex)

    def after(self, items: list[Any], out: Path) -> None:
        write_items(items, out / "items.jsonl")

    def rescore(self, rec: dict[str, Any]) -> dict[str, Any] | None:
        from agentflan.formats.protocols import get_protocol

        return rescore(rec, get_protocol(rec["protocol"]))

    def summarize(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        return summarize(records)

    def table(self, summaries: list[dict[str, Any]]) -> str:
        return table(summaries)

    def outcomes(self, rec: dict[str, Any]) -> dict[tuple[str, str], float]:
        return outcomes(rec)

    def group(self, rec: dict[str, Any]) -> str:
        """Each style apart (`agent-h/react`, `agent-h/general`): HScore pools them (`combined`)."""
        return f"{SUITE}/{rec.get('style')}"

    def combined(self, runs: list[RunOutcomes]) -> RunOutcomes | None:
        """One model's items with HScore per item: the mean of its hallucination-free outcome in the
        ReAct and the general style (several protocols of a style averaged), for items scored in both."""
        from agentflan.eval.paired import RunOutcomes

        per_style: dict[str, dict[str, list[float]]] = {}
        for r in runs:
            style = r.group.split("/", 1)[1] if "/" in r.group else ""
            for i, v in r.items.items():
                if ("hallucination_free", "all") in v:
                    per_style.setdefault(style, {}).setdefault(i, []).append(v[("hallucination_free", "all")])
        if not {"react", "general"} <= set(per_style):
            return None
        react, general = per_style["react"], per_style["general"]
        out = RunOutcomes(run=runs[0].run, group=SUITE, protocol="react + general")
        for i in sorted(set(react) & set(general)):
            out.items[i] = {("hscore", "all"): (sum(react[i]) / len(react[i]) + sum(general[i]) / len(general[i])) / 2}
        return out

    def panels(self, summaries: list[dict[str, Any]]) -> list[Callable[[Any], None]]:
        from agentflan.eval.score import bars, label

        labels = [*(f"{k} (halluc.-free)" for k in KINDS[:3]), "control (correct call)"]
        points = [(run, hscore(g)) for run, g in _by_run(summaries).items()]

        def kinds(ax: Any) -> None:
            bars(ax, labels, [
                (label(s), [100 * s["by_kind"].get(k, {"rate": 0})["rate"] for k in KINDS],
                 [100 * s["by_kind"].get(k, {"se": 0})["se"] for k in KINDS]) for s in summaries],
                 "Agent-H: per item kind")

        def against(ax: Any) -> None:
            for run, h in points:
                y = h["hscore"] if h["hscore"] is not None else (h["h_react"] or h["h_general"] or 0.0)
                ax.scatter([100 * h["over_refusal"]["rate"]], [100 * y], s=40)
                ax.annotate(run, (100 * h["over_refusal"]["rate"], 100 * y), fontsize=8, xytext=(4, 4),
                            textcoords="offset points")
            ax.set_xlim(-5, 105)
            ax.set_ylim(-5, 105)
            ax.set_xlabel("over-refusal % on controls (lower is better)")
            ax.set_ylabel("HScore %")
            ax.set_title("Agent-H: HScore against over-refusal (top left is best)", fontsize=10)
            ax.grid(alpha=0.3)

        return [kinds, against]

    def report_sections(self, summaries: list[dict[str, Any]], out: Path) -> list[tuple[str, str]]:
        return [("Agent-H: hallucination and over-refusal", HSCORE_NOTE + "\n" + hscore_table(summaries))]


AGENT_H = AgentHSuite()
