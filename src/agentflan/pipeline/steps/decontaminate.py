"""`decontaminate`: drop training records whose request overlaps an evaluation set.

The evaluation items are the requests of any file agentflan reads (`against`: benchmark queries or
trajectories in any reader's format, detected or named with `format`; Agent-H or BFCL files once
their readers exist, a plain JSONL of `{"query": ...}` through `toolbench_query`, ...) and the
held-out tasks of the executable environments (`envs`), generated exactly as `agentflan eval`
generates them (`env_tasks` of them, seed `env_seed`). A record's request is
`formats.neutral.request_of` (never a task's format instruction).

Overlap (ours, after GPT-3's 13-gram decontamination): both sides are normalized (lower case,
words of letters and digits); a record is contaminated when its request equals an evaluation
item, shares a word `ngram` with one, or, when one of the two is shorter than `ngram` (and has at
least `min_words` words), the shorter is contained in the longer. Every drop is counted with the
evaluation source it matched (`contaminated:<source>`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import Field, field_validator

from agentflan.formats.neutral import request_of
from agentflan.pipeline.base import Step, StepConfig, StepContext
from agentflan.schema import Trajectory


class DecontaminateConfig(StepConfig):
    against: list[str] = Field(default_factory=list)
    """Files, globs or folders of evaluation queries or trajectories (any readable format)."""
    format: str | None = None
    """Reader of the `against` files (detected when unset)."""
    envs: list[str] = Field(default_factory=list)
    """Environments whose held-out tasks are evaluation items (`toolapi`, `db`)."""
    env_tasks: int = Field(1000, gt=0)
    """Held-out tasks per environment (`agentflan eval -n N` plays the first N of them)."""
    env_seed: int = 0
    ngram: int = Field(13, ge=2)
    min_words: int = Field(4, ge=1)

    @field_validator("envs")
    @classmethod
    def _known_envs(cls, names: list[str]) -> list[str]:
        from agentflan.envs import ENVIRONMENTS

        return [ENVIRONMENTS.known(name) for name in names]


def words(text: str) -> tuple[str, ...]:
    """The normalized words of a text.

    Examples:
        >>> words("Who wrote 'The River'?")
        ('who', 'wrote', 'the', 'river')
    """
    return tuple(re.findall(r"[^\W_]+", text.lower()))


@dataclass
class EvalIndex:
    """Evaluation items by normalized whole text, word n-grams, and short items for containment."""

    ngram: int
    min_words: int
    tiny: dict[tuple[str, ...], str] = field(default_factory=dict)
    """Items under `min_words` words: matched whole only."""
    grams: dict[tuple[str, ...], str] = field(default_factory=dict)
    short: dict[tuple[str, ...], str] = field(default_factory=dict)
    """Items of `min_words` to `ngram - 1` words: found inside a longer request."""
    spans: dict[tuple[str, ...], str] = field(default_factory=dict)
    """Every run of `min_words` to `ngram - 1` words of an item: what a short request is looked up in
    (an item equal to a short request is one of its own runs)."""
    items: dict[str, int] = field(default_factory=dict)

    def add(self, text: str, source: str) -> None:
        w = words(text)
        if not w:
            return
        self.items[source] = self.items.get(source, 0) + 1
        if len(w) < self.min_words:
            self.tiny.setdefault(w, source)
        if len(w) >= self.ngram:
            for i in range(len(w) - self.ngram + 1):
                self.grams.setdefault(w[i:i + self.ngram], source)
        elif len(w) >= self.min_words:
            self.short.setdefault(w, source)
        for n in range(self.min_words, self.ngram):
            for i in range(len(w) - n + 1):
                self.spans.setdefault(w[i:i + n], source)

    def match(self, text: str) -> str | None:
        """The evaluation source `text` overlaps, or None."""
        w = words(text)
        if not w:
            return None
        if len(w) < self.min_words:
            return self.tiny.get(w)
        if len(w) < self.ngram and w in self.spans:  # the request inside (or equal to) an item
            return self.spans[w]
        for i in range(len(w) - self.ngram + 1):
            hit = self.grams.get(w[i:i + self.ngram])
            if hit is not None:
                return hit
        for n in {len(k) for k in self.short}:
            for i in range(len(w) - n + 1):
                hit = self.short.get(w[i:i + n])
                if hit is not None:
                    return hit
        return None


_INDEXES: dict[str, EvalIndex] = {}


def eval_index(cfg: DecontaminateConfig) -> EvalIndex:
    """The index of `cfg`'s evaluation items (built once per process)."""
    key = json.dumps(cfg.model_dump(mode="json"), sort_keys=True)
    if key in _INDEXES:
        return _INDEXES[key]
    index = EvalIndex(cfg.ngram, cfg.min_words)
    if cfg.against:
        from agentflan.io import make_reader

        reader = make_reader(cfg.against, cfg.format, on_error="raise")
        for traj in reader.read(cfg.against):
            query = request_of(traj)
            if query:
                index.add(query, traj.source.path or "against")
    for env in cfg.envs:
        from agentflan.envs import get_env  # the environments' own generators: the tasks `eval` plays

        for task in get_env(env).generate(cfg.env_tasks, "heldout", cfg.env_seed):
            index.add(task.query, f"env:{env}")
    _INDEXES[key] = index
    return index


class DecontaminateStep(Step[DecontaminateConfig]):
    name: ClassVar[str] = "decontaminate"
    Config = DecontaminateConfig
    parallel_safe: ClassVar[bool] = True

    def run(self, data: Iterable[Trajectory], ctx: StepContext) -> Iterator[Trajectory]:
        cfg = self.config
        index = eval_index(cfg)
        for traj in data:
            ctx.stats.inc("in")
            query = request_of(traj)
            hit = index.match(query) if query else None
            if hit is not None:
                ctx.stats.inc("dropped:contaminated")
                ctx.stats.inc(f"contaminated:{hit}")
                continue
            ctx.stats.inc("out")
            yield self.stamp(traj)

    def label(self) -> str:
        return "decontaminate"


def describe(cfg: DecontaminateConfig) -> dict[str, Any]:
    """Evaluation items per source (for the build report)."""
    return dict(sorted(eval_index(cfg).items.items()))
