"""Negative samples against agent hallucination (Agent-FLAN's third fix).

Three cases that agent corpora lack (docs, section 4):

* `tools_not_needed` (case c): tools are offered but the query needs none of them. Built from
  general chat: the query and its answer are kept, and real tools from the agent data are
  offered. Irrelevance is *checked*: a tool is eligible only if no content word of the query
  (lower-cased, stop words removed, plural `s` stripped) occurs in its name, description or
  parameter names, and a general-purpose retrieval tool (web or Wikipedia search, lookup, a
  question-answering service) is never offered with a query it could serve (any request for
  information; only creative or rewriting requests may sit beside one).
* `no_tools_offered` (case b): the user asks for an action and no tool is offered.
* `tools_insufficient` (the paper's own case): the user asks for an action and the tools offered
  are related to it but cannot do it: the source trajectory's own tools minus every tool it
  called and anything that looks like a substitute for one (`insufficient_tools`).

Requests come only from agent trajectories that call a tool, and only their *request*
(`formats.neutral.request_of`): never an AgentInstruct task's format instruction, never the
one-shot demonstration; AgentInstruct tasks whose requests are not action requests (KG questions
a model may know the answer to, ALFWorld and Mind2Web observations) are left out (`query_tasks`).

Replies to requests (b and the insufficient case) come from a teacher model behind an
OpenAI-compatible endpoint whenever one is configured (`teacher`, or `AGENTFLAN_TEACHER_BASE_URL`
and `AGENTFLAN_TEACHER_MODEL` with `teacher: auto`); a reply that looks like a tool call, or a
teacher that says the tools *can* serve the request, is not used. Offline, the reply declines the
action and then helps: it lays out the steps the user can take, built from the source
trajectory's own calls (the SQL to run, the service to ask and with what), never stating a value
that only a tool result could give. Every phrase it varies is `pick(pool, key, index)`.

System prompts are those of the positive data (each request keeps its own trajectory's,
protocol-neutral; chat queries get one drawn from the tool sources'), and samples with tools are
rendered by the protocols the positives are rendered with (`protocols`: T-FLAN, T-FLAN inline,
randomized ReAct and JSON), so that nothing but the situation tells a negative from a positive.

Counts are a share of the agent data (`share`, of the agent records of the build's other
outputs), or absolute (`n`). Candidates are chosen by hash (the smallest hashes of (seed, id)),
so memory stays bounded and the choice does not depend on input order.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agentflan.formats.finish import FINISH_SPEC, give_answer
from agentflan.formats.neutral import neutral_system, request_of
from agentflan.formats.protocols import get_protocol
from agentflan.formats.tflan import pick
from agentflan.pipeline.base import SmallestN, StepStats
from agentflan.pipeline.teacher import Teacher, TeacherConfig, TeacherError
from agentflan.schema import (
    AssistantMessage,
    Message,
    Source,
    SystemMessage,
    ToolCall,
    ToolSpec,
    Trajectory,
    UserMessage,
)
from agentflan.seeds import rng_for, unit

NegativeKind = Literal["tools_not_needed", "no_tools_offered", "tools_insufficient"]
KINDS: tuple[NegativeKind, ...] = ("tools_not_needed", "no_tools_offered", "tools_insufficient")

_STOP = frozenset(["a", "about", "above", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "get", "give", "had", "has", "have", "having", "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more", "most", "my", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "out", "over", "own", "please", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "tell", "show", "find", "make", "want", "need", "like", "know", "let", "help", "new", "one", "two", "also", "using", "use", "used"])
_TOOL_FIT_RE = re.compile(r"```json|\bAction( Input)?:|\"(name|arguments)\"\s*:|<tool_call>", re.IGNORECASE)
_GENERAL_WORDS = frozenset(["search", "lookup", "look", "query", "wiki", "wikipedia", "google", "bing", "web",
                            "internet", "browse", "browser", "knowledge", "encyclopedia", "ask", "chat", "gpt",
                            "chatgpt", "llm", "qa", "answer", "question"])
_GENERAL_TEXT = re.compile(r"\b(web|internet|wikipedia|google|bing|search engine|any question)\b", re.IGNORECASE)
_CREATIVE = re.compile(r"^\W*(write|compose|create|generate|rewrite|paraphrase|rephrase|edit|translate|summari[sz]e|"
                       r"classify|sort|arrange|correct|format|design|brainstorm|come up|invent|imagine|pretend|"
                       r"reverse|shorten|expand|turn|change|construct|develop|draft|produce|suggest a name)\b",
                       re.IGNORECASE)
CANNOT_JUDGE = "CAN_DO"
"""What the teacher answers when it finds that the offered tools can serve the request after all."""

# ---- phrases (ours; every one chosen by `pick(pool, key, index)`) ---------------------------------------------

DECLINE_NO_TOOLS = (
    "I can't carry this out myself: no tools are available to me in this conversation.",
    "I have no tools or live data here, so I can't do this directly.",
    "Nothing in this conversation lets me act on other systems, so I can't do this for you.",
    "I can't perform this from here, since I have no access to tools or data sources in this chat.",
    "This needs a tool I don't have in this conversation, so I can't do it myself.",
)
DECLINE_INSUFFICIENT = (
    "None of the tools I have can do this: the closest is {closest}, and it is not enough.",
    "The tools available here don't cover this request; the nearest one, {closest}, cannot do it.",
    "I can't do this with the tools offered: {closest} comes closest, but it does something else.",
    "This is beyond the tools I have here: {closest} is related, but it cannot do what you ask.",
)
HELP_INTRO = (
    "Here is how you can do it yourself:",
    "You can get it done this way:",
    "These steps would answer it:",
    "What you can do instead:",
    "Here is what it takes:",
)
HELP_CLOSE = (
    "Once you have the result, I can help you make sense of it.",
    "If you share what you get, I can take it from there.",
    "Send me the output and I'll help you with the rest.",
    "Tell me what it returns and I'll help you interpret it.",
)
NO_HELP = (
    "If you tell me more about what you need, I can help you plan it.",
    "I can still help you think it through or draft what you need.",
    "If it helps, I can explain how you could go about it.",
)
THOUGHT_NOT_NEEDED = (
    "This needs none of the listed tools; I can answer directly.",
    "No tool is needed for this: I can answer it myself.",
    "I can reply to this without any of the tools.",
    "None of the tools is relevant here, so I answer directly.",
)
THOUGHT_INSUFFICIENT = (
    "None of the offered tools can do what is asked, so I won't call one; I'll say so and help another way.",
    "The tools here don't cover this request. I'll explain that and help as far as I can without them.",
    "No available tool fits this request, so I answer without calling any.",
)
TEACHER_SYSTEM = (
    "You are a helpful assistant without any tools, plugins, browsing or live data. The user asks for "
    "something that would need a tool. Do not pretend to call a tool and do not invent results. Say "
    "briefly that you cannot do it directly, then help as far as you can without tools: answer the parts "
    "that need no tool, and explain how the user can do the rest. Answer in plain prose, without JSON.")
TEACHER_INSUFFICIENT = (
    "You are a helpful assistant. These are the only tools available, and you must not call any of them "
    "in this reply:\n{tools}\n\nIf one of these tools CAN in fact do what the user asks, reply with exactly "
    f"{CANNOT_JUDGE} and nothing else. Otherwise say briefly that the available tools cannot do it and why "
    "(name the closest tool and what it lacks), then help as far as you can without tools: answer the parts "
    "that need no tool, and explain how the user can do the rest. Do not invent results. Answer in plain "
    "prose, without JSON.")


class NegativesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kinds: list[NegativeKind] = list(KINDS)
    share: float | dict[NegativeKind, float] | None = Field(0.0226)
    """Negatives per agent record of the build's other (non-chat) outputs: a float split evenly over
    `kinds`, or one share per kind. The default is the release's: 761 negatives beside 33,681 agent
    records (2.26%)."""
    n: int | dict[NegativeKind, int] | None = None
    """Samples per kind instead of a share (an int for every kind, or per kind)."""
    tools_per_prompt: tuple[int, int] = (2, 5)
    protocols: dict[str, float] = Field(default_factory=lambda: {
        "tflan": 0.4, "tflan:inline": 0.2, "react:random": 0.2, "json:random": 0.2})
    """Protocols that render the samples offering tools, with their shares (the general-style T-FLAN
    chat and the ReAct-style prompts: Agent-H poses its queries in both)."""
    query_tasks: list[str] = ["os", "db", "webshop"]
    """AgentInstruct tasks whose requests are action requests (trajectories without a task tag are
    taken whenever they call a tool)."""
    teacher: TeacherConfig | Literal["auto"] | None = "auto"
    """The endpoint that writes the replies; `auto`: from the environment variables
    AGENTFLAN_TEACHER_BASE_URL and AGENTFLAN_TEACHER_MODEL when set (the build resolves it and
    records it in `resolved_recipe.yaml`), else offline replies."""

    @field_validator("protocols")
    @classmethod
    def _protocols(cls, v: dict[str, float]) -> dict[str, float]:
        for name, w in v.items():
            proto = get_protocol(name)
            if not proto.episodic or not proto.renders_negatives:
                raise ValueError(f"protocol {name!r} cannot render a negative sample (use tflan, tflan:inline, "
                                 "react[:random], json[:random] or native)")
            if w < 0:
                raise ValueError(f"protocol {name!r}: a share is >= 0")
        if not v or sum(v.values()) <= 0:
            raise ValueError("protocols: at least one protocol with a positive share")
        return v

    @model_validator(mode="after")
    def _counts(self) -> NegativesConfig:
        if self.n is not None:
            self.share = None
        if self.share is None and self.n is None:
            raise ValueError("give `share` (of the agent records) or `n` (per kind)")
        return self

    def count(self, kind: NegativeKind, agent_records: int = 0) -> int:
        """Samples of `kind` to make, given the agent records of the build."""
        if kind not in self.kinds:
            return 0
        if self.n is not None:
            return self.n if isinstance(self.n, int) else self.n.get(kind, 0)
        share = self.share if isinstance(self.share, dict) else {k: (self.share or 0.0) / len(self.kinds)
                                                                 for k in self.kinds}
        return round(share.get(kind, 0.0) * agent_records)

    def resolved_teacher(self) -> TeacherConfig | None:
        if isinstance(self.teacher, TeacherConfig) or self.teacher is None:
            return self.teacher
        return teacher_from_env()


def teacher_from_env() -> TeacherConfig | None:
    """The teacher the environment configures (AGENTFLAN_TEACHER_BASE_URL, AGENTFLAN_TEACHER_MODEL)."""
    url, model = os.environ.get("AGENTFLAN_TEACHER_BASE_URL"), os.environ.get("AGENTFLAN_TEACHER_MODEL")
    return TeacherConfig(base_url=url, model=model) if url and model else None


# ---- relevance checks -----------------------------------------------------------------------------------------

def content_words(text: str) -> set[str]:
    """Lower-cased words of 3+ letters, stop words removed, a plural `s` stripped.

    Examples:
        >>> sorted(content_words("Find the weather forecasts for Paris"))
        ['forecast', 'paris', 'weather']
    """
    words = set()
    for w in re.findall(r"[a-z][a-z0-9]+", _split_identifiers(text).lower()):
        if len(w) < 3 or w in _STOP:
            continue
        plural = w.endswith("s") and not w.endswith(("ss", "is", "us")) and len(w) > 3
        words.add(w[:-1] if plural else w)
    return words


def _split_identifiers(text: str) -> str:
    return re.sub(r"([a-z])([A-Z])", r"\1 \2", text).replace("_", " ")


def tool_words(tool: ToolSpec) -> set[str]:
    props = tool.parameters.get("properties") if isinstance(tool.parameters, dict) else None
    params = " ".join(props) if isinstance(props, dict) else ""
    return content_words(f"{tool.name} {tool.description} {params}")


def is_general_tool(tool: ToolSpec) -> bool:
    """A general-purpose retrieval tool (web or Wikipedia search, lookup, question answering), which
    could serve almost any request for information.

    Examples:
        >>> is_general_tool(ToolSpec(name="search", description="Search Wikipedia for an entity."))
        True
        >>> is_general_tool(ToolSpec(name="convert_length_for_unit_converter", description="Convert a length."))
        False
    """
    props = tool.parameters.get("properties") if isinstance(tool.parameters, dict) else None
    name_words = set(re.findall(r"[a-z]+", _split_identifiers(f"{tool.name} {' '.join(props or {})}").lower()))
    return bool(name_words & _GENERAL_WORDS) or bool(_GENERAL_TEXT.search(tool.description))


def asks_for_information(query: str) -> bool:
    """Anything but a creative or rewriting request (which a search tool cannot serve)."""
    return not _CREATIVE.match(query)


def could_serve(tool: ToolSpec, query: str, qwords: set[str] | None = None) -> bool:
    """Could `tool` serve `query`? (shares a content word with it, or is a general retrieval tool and
    the query asks for information)."""
    words = qwords if qwords is not None else content_words(query)
    return bool(tool_words(tool) & words) or (is_general_tool(tool) and asks_for_information(query))


def _group(name: str) -> str:
    """The service an API belongs to (ToolBench names APIs `<api>_for_<service>`)."""
    return name.rsplit("_for_", 1)[1] if "_for_" in name else ""


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def insufficient_tools(traj: Trajectory) -> tuple[list[ToolSpec], list[ToolSpec]]:
    """(related tools that cannot serve the request, the tools it called) of a trajectory.

    Related: of the same service as a called tool (`<api>_for_<service>`), or sharing a name word
    with one. Removed as possible substitutes: every called tool, and any tool whose name is close
    to a called tool's (word Jaccard >= 0.5: `search` and `search_v2`) or whose description nearly
    repeats one's (>= 0.7, ToolBench's "This is the subfunction for tool ..." left out).
    """
    final = traj.tags.get("final_tool")
    called_names = {c.name for m in traj.messages if isinstance(m, AssistantMessage) for c in m.tool_calls
                    if c.name != final}
    called = [t for t in traj.tools if t.name in called_names]
    if not called or len(called) < len(called_names):
        return [], called
    groups = {_group(t.name) for t in called} - {""}
    names = [content_words(t.name.rsplit("_for_", 1)[0]) for t in called]
    descs = [content_words(_service(t)[1]) for t in called]
    related = []
    for t in traj.tools:
        if t.name in called_names or t.name == final:
            continue
        own_name, own_desc = content_words(t.name.rsplit("_for_", 1)[0]), content_words(_service(t)[1])
        if any(_jaccard(own_name, n) >= 0.5 for n in names) or any(_jaccard(own_desc, d) >= 0.7 for d in descs):
            continue  # could stand in for a called tool
        if _group(t.name) in groups or any(own_name & n for n in names):
            related.append(t)
    return related, called


# ---- offline replies ----------------------------------------------------------------------------------------

def _service(tool: ToolSpec) -> tuple[str, str]:
    """(a name for the service, what it does) of a tool, from its name and description."""
    group = _group(tool.name)
    name = (group or tool.name).replace("_", " ").strip()
    desc = re.sub(r'^This is the subfunction for tool "[^"]*"(?:, you can use this tool)?[.:]?\s*', "",
                  tool.description.strip(), flags=re.IGNORECASE)
    desc = re.split(r"(?<=[.!?])\s", desc, maxsplit=1)[0].rstrip(".").strip()
    return name, (desc[:1].lower() + desc[1:]) if desc else ""


_CODE_ARGS = {"sql": "sql", "script": "bash", "code": "python", "command": "bash", "cmd": "bash"}


def describe_call(call: ToolCall, tool: ToolSpec | None, request: str) -> str | None:
    """One step of the plan a reply lays out: what to run or ask, with the request's own values.
    A value the request does not contain came from an earlier result: it is not stated (only a tool
    could know it)."""
    code = next(((k, v) for k, v in call.arguments.items() if k in _CODE_ARGS and isinstance(v, str)), None)
    if code is not None:
        lang = _CODE_ARGS[code[0]]
        what = "SQL statement" if lang == "sql" else "command"
        return f"run this {what}:\n```{lang}\n{code[1].strip()}\n```"
    low = request.lower()
    known: list[tuple[str, str]] = []
    unknown: list[tuple[str, str]] = []
    for k, v in call.arguments.items():
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
        shown = f'"{v}"' if isinstance(v, str) else text
        (known if text and text.lower() in low else unknown).append((k, shown))
    name, desc = _service(tool) if tool is not None else (call.name.replace("_", " "), "")
    args = ", ".join(f"{k} {v}" for k, v in known)
    step = f"ask a {name} service" + (f" ({desc})" if desc else "")
    if args:
        step += f" with {args}"
    if unknown:
        step += (" and " if args else " with ") + ", ".join(k.replace("_", " ") for k, _ in unknown) + \
            " taken from the previous result"
    return step


def offline_reply(kind: NegativeKind, traj: Trajectory, request: str, key: str,
                  offered: list[ToolSpec] | None = None) -> str:
    """A reply that declines the action and helps: the steps the user can take, from `traj`'s calls."""
    specs = {t.name: t for t in traj.tools}
    final = traj.tags.get("final_tool")
    steps: list[str] = []
    for m in traj.messages:
        if isinstance(m, AssistantMessage) and m.loss:
            for c in m.tool_calls:
                if c.name == final:
                    continue
                step = describe_call(c, specs.get(c.name), request)
                if step and step not in steps:
                    steps.append(step)
    if kind == "tools_insufficient" and offered:
        desc = _service(offered[0])[1]
        closest = f"`{offered[0].name}`" + (f" ({desc})" if desc else "")
        opening = pick(DECLINE_INSUFFICIENT, key, 0).format(closest=closest)
    else:
        opening = pick(DECLINE_NO_TOOLS, key, 0)
    if not steps:
        return f"{opening} {pick(NO_HELP, key, 1)}"
    body = "\n".join(f"{i}. {s[:1].upper()}{s[1:]}." if not s.endswith("```") else f"{i}. {s[:1].upper()}{s[1:]}"
                     for i, s in enumerate(steps[:5], 1))
    return f"{opening} {pick(HELP_INTRO, key, 1)}\n{body}\n{pick(HELP_CLOSE, key, 2)}"


# ---- building ------------------------------------------------------------------------------------------------

def _first_exchange(traj: Trajectory) -> tuple[str, str] | None:
    msgs = [m for m in traj.messages if not isinstance(m, SystemMessage)]
    if len(msgs) >= 2 and isinstance(msgs[0], UserMessage) and isinstance(msgs[1], AssistantMessage) \
            and not msgs[1].tool_calls and msgs[1].content.strip():
        return msgs[0].content, msgs[1].content
    return None


def _head(system: str | None) -> str | None:
    """A system prompt's first paragraph (a ToolBench prompt's list of services fits only its own tools)."""
    return system.split("\n", 1)[0].strip() or None if system else None


def action_request(traj: Trajectory, tasks: list[str]) -> str | None:
    """The request of a trajectory that needs a tool (None if it calls none, or its task's requests are
    not action requests)."""
    task = traj.tags.get("task")
    if task is not None and task not in tasks:
        return None
    final = traj.tags.get("final_tool")
    if not any(isinstance(m, AssistantMessage) and m.loss and any(c.name != final for c in m.tool_calls)
               for m in traj.messages):
        return None
    return request_of(traj)


def _source(traj: Trajectory) -> Source:
    return Source(format=traj.source.format, dataset=traj.source.dataset, path=traj.source.path,
                  line=traj.source.line, original_id=traj.id)


class _Renderer:
    """Renders a structured negative through a protocol drawn by hash from `config.protocols`."""

    def __init__(self, config: NegativesConfig, seed: int) -> None:
        self.seed = seed
        names = sorted(config.protocols)
        total = sum(config.protocols.values())
        self.cuts: list[tuple[float, str]] = []
        acc = 0.0
        for name in names:
            acc += config.protocols[name] / total
            self.cuts.append((acc, name))
        self.protocols = {name: get_protocol(name) for name in names}

    def __call__(self, traj: Trajectory, stats: StepStats) -> Trajectory:
        u = unit(self.seed, "negatives:protocol", traj.id)
        name = next((n for cut, n in self.cuts if u < cut), self.cuts[-1][1])
        key = f"{self.seed}:{traj.id}"
        out = self.protocols[name].apply(traj, key)
        stats.inc(f"protocol:{out.tags['protocol']}")
        return out


def _with_tools(traj_id: str, parent: Trajectory, kind: NegativeKind, system: str | None, query: str,
                tools: list[ToolSpec], thought: str, answer: str, origin: str, meta: dict[str, Any]) -> Trajectory:
    msgs: list[Message] = [SystemMessage(content=system)] if system else []
    msgs += [UserMessage(content=query), AssistantMessage(content=thought, tool_calls=[give_answer(answer)])]
    return Trajectory(id=traj_id, tools=[*tools, FINISH_SPEC], messages=msgs, source=_source(parent),
                      lineage=[*parent.lineage, f"negatives:{kind}"],
                      tags={"negative_kind": kind, "response_origin": origin.split(":")[0], "final_tool": FINISH_SPEC.name},
                      metadata={"parent": parent.id, "response_origin": origin, **meta})


def build_negatives(chat: Iterable[Trajectory], tool_sources: Iterable[Trajectory], queries: Iterable[Trajectory],
                    config: NegativesConfig, seed: int, stats: StepStats,
                    cache_dir: Path | None = None, agent_records: int = 0) -> Iterator[Trajectory]:
    """Yield negative samples of the configured kinds; count everything in `stats`.

    Args:
        chat: General chat, for `tools_not_needed` (its first exchange is kept).
        tool_sources: Agent data whose offered tools form the pool of real tools, and whose system
            prompts the chat queries get.
        queries: Agent data whose requests need a tool, for `no_tools_offered` and `tools_insufficient`.
        agent_records: Agent records of the build, which `config.share` is a share of.
    """
    n_nt = config.count("tools_not_needed", agent_records)
    n_no = config.count("no_tools_offered", agent_records)
    n_in = config.count("tools_insufficient", agent_records)
    for kind, n in (("tools_not_needed", n_nt), ("no_tools_offered", n_no), ("tools_insufficient", n_in)):
        stats.inc(f"requested:{kind}", n)
    render = _Renderer(config, seed)
    pool: dict[str, ToolSpec] = {}
    heads: set[str] = set()
    for traj in tool_sources:
        stats.inc("tool_sources_in")
        for t in traj.tools:
            if t.name != traj.tags.get("final_tool"):
                pool.setdefault(t.name, t)
        head = _head(neutral_system(traj))
        if head:
            heads.add(head)
    no_tools: SmallestN[Trajectory] = SmallestN(n_no)
    insufficient: SmallestN[Trajectory] = SmallestN(n_in * 3)  # spares for requests without a related tool left
    for traj in queries:
        stats.inc("queries_in")
        if not (n_no or n_in):
            continue
        if action_request(traj, config.query_tasks) is None:
            stats.inc("queries_skipped:not_an_action_request")
            continue
        no_tools.offer(unit(seed, "negatives:query", traj.id), traj.id, traj)
        insufficient.offer(unit(seed, "negatives:insufficient", traj.id), traj.id, traj)
    chats: SmallestN[Trajectory] = SmallestN(n_nt * 3)  # spare candidates for queries that no pooled tool avoids
    for traj in chat:
        stats.inc("chat_in")
        if n_nt and not traj.tools and _first_exchange(traj):
            chats.offer(unit(seed, "negatives:chat", traj.id), traj.id, traj)
    stats.inc("tool_pool", len(pool))
    tools = sorted(pool.values(), key=lambda t: t.name)
    words = {t.name: tool_words(t) for t in tools}
    head_pool = sorted(heads)

    made = 0
    for traj in chats.items():
        if made >= n_nt:
            break
        exchange = _first_exchange(traj)
        assert exchange is not None
        query, answer = exchange
        rng = rng_for(seed, "negatives:tools", traj.id)
        qwords = content_words(query)
        k = rng.randint(*config.tools_per_prompt)
        order = rng.sample(tools, len(tools))
        chosen: list[ToolSpec] = []
        general = 0
        for t in order:
            if len(chosen) >= k:
                break
            if words[t.name] & qwords:
                continue
            if is_general_tool(t) and asks_for_information(query):
                general += 1
                continue
            chosen.append(t)
        if general:
            stats.inc("rejected_general_tools", general)
        if len(chosen) < min(k, config.tools_per_prompt[0]) or not chosen:
            stats.inc("dropped:no_irrelevant_tools")
            continue
        made += 1
        key = f"{seed}:neg-tnn-{traj.id}"
        system = pick(head_pool, key, 0) if head_pool else None
        structured = _with_tools(
            f"neg-tnn-{traj.id}", traj, "tools_not_needed", system, query, chosen,
            pick(THOUGHT_NOT_NEEDED, key, 1), answer, "source",
            {"irrelevance_check": "no query content word in the tool text; no general retrieval tool "
                                  "beside a request for information"})
        stats.inc("made:tools_not_needed")
        stats.inc("origin:tools_not_needed:source")
        yield render(structured, stats)
    if made < n_nt:
        stats.inc("shortfall:tools_not_needed", n_nt - made)

    teacher_cfg = config.resolved_teacher()
    teacher = Teacher(teacher_cfg, cache_dir / "teacher.jsonl" if cache_dir else None) if teacher_cfg else None
    origins: Counter[str] = Counter()

    # no tools offered: the request, the source's system prompt, a reply that declines and helps
    picked = no_tools.items()
    requests = [action_request(t, config.query_tasks) or "" for t in picked]
    replies = _replies(teacher, [[SystemMessage(content=TEACHER_SYSTEM), UserMessage(content=q)]
                                 for q in requests], stats)
    for traj, query, got in zip(picked, requests, replies, strict=True):
        tid = f"neg-nto-{traj.id}"
        key = f"{seed}:{tid}"
        text, origin = _choose(got, teacher_cfg, stats) or (offline_reply("no_tools_offered", traj, query, key),
                                                             "template")
        origins[f"no_tools_offered:{origin}"] += 1
        system = neutral_system(traj)
        msgs: list[Message] = [SystemMessage(content=_head(system) or "")] if _head(system) else []
        yield Trajectory(
            id=tid, lineage=[*traj.lineage, "negatives:no_tools_offered"], source=_source(traj),
            tags={"negative_kind": "no_tools_offered", "response_origin": origin.split(":")[0]},
            metadata={"parent": traj.id, "response_origin": origin},
            messages=[*msgs, UserMessage(content=query), AssistantMessage(content=text, capability="reasoning")])
    stats.inc("made:no_tools_offered", len(picked))
    if len(picked) < n_no:
        stats.inc("shortfall:no_tools_offered", n_no - len(picked))

    # related but insufficient tools
    cands: list[tuple[Trajectory, str, list[ToolSpec]]] = []
    for traj in insufficient.items():
        if len(cands) >= n_in:
            break
        related, _called = insufficient_tools(traj)
        if not related:
            stats.inc("skipped:no_related_tool")
            continue
        cands.append((traj, action_request(traj, config.query_tasks) or "", related[:config.tools_per_prompt[1]]))
    listing = [TEACHER_INSUFFICIENT.format(tools="\n".join(f"- {t.name}: {t.description.strip()}" for t in offered))
               for _, _, offered in cands]
    replies = _replies(teacher, [[SystemMessage(content=s), UserMessage(content=q)]
                                 for s, (_, q, _) in zip(listing, cands, strict=True)], stats)
    made_in = 0
    for (traj, query, offered), got in zip(cands, replies, strict=True):
        if isinstance(got, str) and got.strip() == CANNOT_JUDGE:
            stats.inc("dropped:teacher_says_serviceable")
            continue
        tid = f"neg-tin-{traj.id}"
        key = f"{seed}:{tid}"
        text, origin = _choose(got, teacher_cfg, stats) or (
            offline_reply("tools_insufficient", traj, query, key, offered), "template")
        origins[f"tools_insufficient:{origin}"] += 1
        made_in += 1
        structured = _with_tools(
            tid, traj, "tools_insufficient", _head(neutral_system(traj)), query, offered,
            pick(THOUGHT_INSUFFICIENT, key, 1), text, origin,
            {"removed_tools": sorted(t.name for t in traj.tools if t not in offered and t.name != traj.tags.get(
                "final_tool")), "insufficiency_check": "the source's own related tools, minus every called tool "
                                                       "and anything close to one"})
        yield render(structured, stats)
    stats.inc("made:tools_insufficient", made_in)
    if made_in < n_in:
        stats.inc("shortfall:tools_insufficient", n_in - made_in)
    for origin, n in origins.items():
        stats.inc(f"origin:{origin}", n)
    if teacher is not None:
        stats.inc("teacher_requests", teacher.requests)
        stats.inc("teacher_cache_hits", teacher.cache_hits)


def _replies(teacher: Teacher | None, batch: list[list[Message]], stats: StepStats) -> list[str | TeacherError | None]:
    if teacher is None or not batch:
        return [None] * len(batch)
    return list(teacher.complete_many(batch))


def _choose(got: str | TeacherError | None, cfg: TeacherConfig | None, stats: StepStats) -> tuple[str, str] | None:
    """The teacher's reply and its origin, or None when there is none to use (counted)."""
    if got is None or cfg is None:
        return None
    if isinstance(got, TeacherError):
        stats.inc("teacher_failed")
        return None
    if not got.strip() or _TOOL_FIT_RE.search(got) or got.strip() == CANNOT_JUDGE:
        stats.inc("teacher_rejected")
        return None
    return got.strip(), f"teacher:{cfg.model}"
