"""Negative samples against agent hallucination (Agent-FLAN's third fix).

Two cases that agent corpora lack (docs, section 4):

* `tools_not_needed` (case c): tools are offered but the query needs none of them. Built from
  general chat: the query and its answer are kept and the system prompt lists real tools taken
  from the agent data. Irrelevance is *checked*, not assumed: a tool is eligible only if no
  content word of the query (lower-cased, stop words removed, plural `s` stripped) occurs in the
  tool's name, description or parameter names.
* `no_tools_offered` (case b): the user asks for an action but no tool is offered. Queries come
  from agent trajectories; the response declines to act and helps otherwise. It comes from a
  teacher model behind an OpenAI-compatible endpoint when one is configured (a response that
  looks like a tool call is rejected and replaced by a template), otherwise from varied
  templates. Every sample records its origin (`response_origin`).

Candidates are chosen by hash (the `n` smallest hashes of (seed, id)), so memory stays bounded by
`n` and the tool pool, and the choice does not depend on input order.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agentflan.formats.tflan import tools_prompt
from agentflan.pipeline.base import SmallestN, StepStats, first_query, rng_for, unit
from agentflan.pipeline.teacher import Teacher, TeacherConfig, TeacherError
from agentflan.schema import AssistantMessage, Source, SystemMessage, ToolSpec, Trajectory, UserMessage

NegativeKind = Literal["tools_not_needed", "no_tools_offered"]

_STOP = frozenset(["a", "about", "above", "after", "again", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each", "few", "for", "from", "further", "get", "give", "had", "has", "have", "having", "he", "her", "here", "hers", "him", "his", "how", "i", "if", "in", "into", "is", "it", "its", "itself", "just", "me", "more", "most", "my", "no", "nor", "not", "now", "of", "off", "on", "once", "only", "or", "other", "our", "out", "over", "own", "please", "same", "she", "should", "so", "some", "such", "than", "that", "the", "their", "them", "then", "there", "these", "they", "this", "those", "through", "to", "too", "under", "until", "up", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "would", "you", "your", "yours", "tell", "show", "find", "make", "want", "need", "like", "know", "let", "help", "new", "one", "two", "also", "using", "use", "used"])
_TOOL_FIT_RE = re.compile(r"```json|\bAction( Input)?:|\"(name|arguments)\"\s*:|<tool_call>", re.IGNORECASE)

OPENINGS = (
    "I can't do that directly: I have no tools or live data available in this conversation.",
    "I'm not able to carry out that request myself, since no tools are available to me here.",
    "There is no tool available to me in this chat, so I can't perform that action or fetch live data.",
    "I don't have access to any tools or external services in this conversation, so I can't do this for you.",
    "Without tools or internet access in this chat, I can't complete that action myself.",
)
ALTERNATIVES = (
    "What I can do is explain how you could do it yourself, step by step.",
    "If you share the details you already have, I can help you work through them.",
    "I can, however, outline the steps and point out what information you would need.",
    "If it helps, I can describe which kind of service or website would answer this.",
    "I'm happy to help you plan it or draft what you need instead.",
)
TEACHER_SYSTEM = (
    "You are a helpful assistant without any tools, plugins, browsing or live data. The user asks for "
    "something that would need a tool. Do not pretend to call a tool and do not invent results. Say "
    "briefly that you cannot do it directly, then help as far as you can without tools. Answer in plain "
    "prose, without JSON or code blocks.")
CHAT_SYSTEM = "You are a helpful assistant. Call a tool only when the request needs it."


class NegativesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kinds: list[NegativeKind] = ["tools_not_needed", "no_tools_offered"]
    n: int | dict[NegativeKind, int] = Field(400)
    """Samples per kind (an int for every kind, or per kind)."""
    tools_per_prompt: tuple[int, int] = (2, 5)
    teacher: TeacherConfig | None = None

    def count(self, kind: NegativeKind) -> int:
        return self.n if isinstance(self.n, int) else self.n.get(kind, 0)


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


def _first_exchange(traj: Trajectory) -> tuple[str, str] | None:
    msgs = [m for m in traj.messages if not isinstance(m, SystemMessage)]
    if len(msgs) >= 2 and isinstance(msgs[0], UserMessage) and isinstance(msgs[1], AssistantMessage) \
            and not msgs[1].tool_calls and msgs[1].content.strip():
        return msgs[0].content, msgs[1].content
    return None


class LazyTrajectory:
    """A native JSON line, validated only if `build_negatives` needs it: candidates are chosen by the
    hash of their id, which is read from the line's start, so most records are never built."""

    __slots__ = ("id", "line")

    def __init__(self, line: str | bytes) -> None:
        from agentflan.io.writers.native import native_line_id

        self.line = line
        self.id = native_line_id(line)

    def load(self) -> Trajectory:
        return Trajectory.model_validate_json(self.line)

    def tools(self, known: dict[str, ToolSpec]) -> tuple[list[ToolSpec], str | None]:
        """The offered tools not in `known` (validated), and the terminal tool's name."""
        d = json.loads(self.line)
        specs = [ToolSpec.model_validate(t) for t in d.get("tools") or [] if t["name"] not in known]
        return specs, (d.get("tags") or {}).get("final_tool")


def _tools(traj: Trajectory | LazyTrajectory, known: dict[str, ToolSpec]) -> tuple[list[ToolSpec], str | None]:
    if isinstance(traj, LazyTrajectory):
        return traj.tools(known)
    return traj.tools, traj.tags.get("final_tool")


def build_negatives(chat: Iterable[Trajectory | LazyTrajectory], tool_sources: Iterable[Trajectory | LazyTrajectory],
                    queries: Iterable[Trajectory | LazyTrajectory], config: NegativesConfig, seed: int,
                    stats: StepStats, cache_dir: Path | None = None) -> Iterator[Trajectory]:
    """Yield negative samples of the configured kinds; count everything in `stats`.

    Args:
        chat: General chat, for `tools_not_needed` (its first exchange is kept).
        tool_sources: Agent data whose offered tools form the pool of real tools.
        queries: Agent data whose requests need a tool, for `no_tools_offered`.
    """
    n_nt = config.count("tools_not_needed") if "tools_not_needed" in config.kinds else 0
    n_no = config.count("no_tools_offered") if "no_tools_offered" in config.kinds else 0
    pool: dict[str, ToolSpec] = {}
    for traj in tool_sources:
        stats.inc("tool_sources_in")
        specs, final = _tools(traj, pool)
        for t in specs:
            if t.name != final:
                pool.setdefault(t.name, t)
    requests: SmallestN[Trajectory] = SmallestN(n_no)
    for item in queries:
        stats.inc("queries_in")
        key = unit(seed, "negatives:query", item.id)
        if isinstance(item, LazyTrajectory):  # decided by the id's hash before the record is built
            if not requests.admits(key, item.id):
                continue
            item = item.load()
        if n_no and first_query(item):
            requests.offer(key, item.id, item)
    chats: SmallestN[Trajectory] = SmallestN(n_nt * 3)  # spare candidates for queries that no pooled tool avoids
    for item in chat:
        stats.inc("chat_in")
        key = unit(seed, "negatives:chat", item.id)
        if isinstance(item, LazyTrajectory):
            if not chats.admits(key, item.id):
                continue
            item = item.load()
        if n_nt and not item.tools and _first_exchange(item):
            chats.offer(key, item.id, item)
    stats.inc("tool_pool", len(pool))
    tools = sorted(pool.values(), key=lambda t: t.name)
    words = {t.name: tool_words(t) for t in tools}

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
        chosen = [t for t in order if not (words[t.name] & qwords)][:k]
        if len(chosen) < min(k, config.tools_per_prompt[0]) or not chosen:
            stats.inc("dropped:no_irrelevant_tools")
            continue
        made += 1
        stats.inc("made:tools_not_needed")
        stats.inc("origin:tools_not_needed:source")
        yield Trajectory(
            id=f"neg-tnn-{traj.id}", tools=chosen, lineage=[*traj.lineage, "negatives:tools_not_needed"],
            source=Source(format=traj.source.format, dataset=traj.source.dataset, path=traj.source.path,
                          line=traj.source.line, original_id=traj.id),
            tags={"negative_kind": "tools_not_needed", "response_origin": "source"},
            metadata={"parent": traj.id, "irrelevance_check": "lexical: no query content word in tool text"},
            messages=[SystemMessage(content=f"{CHAT_SYSTEM}\n\n{tools_prompt(chosen)}"), UserMessage(content=query),
                      AssistantMessage(content=answer, capability="reasoning")])
    if made < n_nt:
        stats.inc("shortfall:tools_not_needed", n_nt - made)

    picked = requests.items()
    texts = [q for q in (first_query(t) for t in picked) if q]
    responses: list[tuple[str, str]] = []
    teacher = Teacher(config.teacher, cache_dir / "teacher.jsonl" if cache_dir else None) if config.teacher else None
    if teacher is not None:
        results = teacher.complete_many([[{"role": "system", "content": TEACHER_SYSTEM},
                                          {"role": "user", "content": q}] for q in texts])
        stats.inc("teacher_requests", teacher.requests)
        stats.inc("teacher_cache_hits", teacher.cache_hits)
    for i, traj in enumerate(picked):
        rng = rng_for(seed, "negatives:template", traj.id)
        origin = "template"
        text = f"{rng.choice(OPENINGS)} {rng.choice(ALTERNATIVES)}"
        if teacher is not None:
            got = results[i]
            if isinstance(got, TeacherError):
                stats.inc("teacher_failed")
            elif not got.strip() or _TOOL_FIT_RE.search(got):
                stats.inc("teacher_rejected")
            else:
                text, origin = got.strip(), f"teacher:{config.teacher.model}"  # type: ignore[union-attr]
        responses.append((text, origin))
    origins: Counter[str] = Counter()
    for traj, _query, (text, origin) in zip(picked, texts, responses, strict=True):
        origins[origin] += 1
        yield Trajectory(
            id=f"neg-nto-{traj.id}", lineage=[*traj.lineage, "negatives:no_tools_offered"],
            source=Source(format=traj.source.format, dataset=traj.source.dataset, path=traj.source.path,
                          line=traj.source.line, original_id=traj.id),
            tags={"negative_kind": "no_tools_offered", "response_origin": origin.split(":")[0]},
            metadata={"parent": traj.id, "response_origin": origin},
            messages=[UserMessage(content=_query), AssistantMessage(content=text, capability="reasoning")])
    stats.inc("made:no_tools_offered", len(picked))
    for origin, n in origins.items():
        stats.inc(f"origin:no_tools_offered:{origin}", n)
    if len(picked) < n_no:
        stats.inc("shortfall:no_tools_offered", n_no - len(picked))
