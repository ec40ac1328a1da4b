"""Episode sources: where an RL recipe's training episodes come from, and how each is judged.

A source gives training episodes (`episodes(n, seed, protocol)`), each an `Episode`: a key (the
GRPO prompt), `play(template, max_turns)`, the episode generator (prompts out, completions in: the
interface `models.driver.drive` drives), and `outcome(result)`, its verdict once it ended. Sources
are found by name (`episode_source`):

* every environment of `agentflan.envs` (`EnvSource`): the first `n` tasks of its `train` split,
  played by `envs.base.play`, judged by the environment's verdict;
* the sources registered in `SOURCES`, which a third party extends like any registry: built in,
  `bfcl-multi` (`BFCLMultiSource`): BFCL's multi-turn entries played on BFCL's own backends
  (`eval.bfcl_multi.play`), judged by BFCL's multi-turn checker (`eval.bfcl_multi.judge`).

BFCL has no training split: its entries are its test set. `bfcl-multi` trains on the entries of
`multi_turn_base` from index `eval.bfcl_multi.RL_TRAIN_FROM` (100) on (`multi_turn_base_100` ...; BFCL v4 has
200), and `agentflan eval bfcl-multi` draws the *first* entries of each category, so an eval of up
to 400 entries (100 per category) plays none of them; a larger eval, or one of the base question
file past entry 100, does and says so (a warning; `eval.bfcl_multi.is_rl_train`). Only
`multi_turn_base` is used: `miss_func` adds tools mid-episode (the prompt of a text protocol
changes before the point where it was sampled, so a rollout cannot be token-exact), `miss_param`
and `long_context` are kept whole for eval.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from agentflan.errors import ConfigError
from agentflan.formats.protocols import Completion, Prompt
from agentflan.options import did_you_mean
from agentflan.registry import Registry


@dataclass
class Outcome:
    """How an episode ended: the verdict, whether every reply was read, its transcript."""

    success: bool
    format_ok: bool
    trajectory: Any = None
    key: str = ""
    """The conversation key the protocol rendered it with (phrase variants; `exact_rollout`)."""


class Episode(ABC):
    """One training episode of a source."""

    @property
    @abstractmethod
    def key(self) -> str:
        """The GRPO prompt that stands for it (unique within a run)."""

    @abstractmethod
    def play(self, template: Any, max_turns: int) -> Generator[Prompt, Completion, Any]:
        """The episode generator, in the source's protocol rendered for `template`."""

    @abstractmethod
    def outcome(self, result: Any) -> Outcome:
        """The verdict of the generator's result."""


class EpisodeSource(ABC):
    """Training episodes by name (see the module docstring)."""

    name: str

    @abstractmethod
    def episodes(self, n: int, seed: int, protocol: str) -> list[Episode]:
        """At most `n` training episodes played in `protocol` (`seed` where the source draws)."""

    @abstractmethod
    def check(self) -> None:
        """Raise `ConfigError`/`MissingDependencyError` when the source cannot give episodes here
        (called when a recipe is loaded, before any model)."""


SOURCES: Registry[Callable[[], EpisodeSource]] = Registry("episode source", group="agentflan.rl_sources")
"""Episode sources besides the environments (`ENVIRONMENTS`), by name."""
SOURCES.register("bfcl-multi", "agentflan.rl.sources:BFCLMultiSource",
                 "BFCL multi-turn base entries 100+ on BFCL's backends, BFCL's verdict")


def source_names() -> list[str]:
    """Every name an RL recipe's `envs:` may list."""
    from agentflan.envs import env_names

    return [*env_names(ordered=True), *SOURCES.names(ordered=True)]


def episode_source(name: str) -> EpisodeSource:
    """The source `name`: a registered source, else the environment of that name.

    Raises:
        ConfigError: Neither, with the known names and "did you mean".
    """
    from agentflan.envs import ENVIRONMENTS

    if name in SOURCES:
        return SOURCES.get(name)()
    if name in ENVIRONMENTS:
        return EnvSource(name)
    known = source_names()
    raise ConfigError(f"unknown environment or episode source {name!r} (known: {', '.join(known)})"
                      f"{did_you_mean(name, known)}")


# ---- the environments ------------------------------------------------------------------------------------

@dataclass
class EnvEpisode(Episode):
    """A task of an environment, played by `envs.base.play` in `protocol`."""

    env: str
    task: Any
    protocol: str

    @property
    def key(self) -> str:
        return f"{self.env}/{self.task.id}"

    def play(self, template: Any, max_turns: int) -> Generator[Prompt, Completion, Any]:
        from agentflan.envs import get_env
        from agentflan.envs.base import play
        from agentflan.formats.protocols import get_protocol

        return play(get_env(self.env).make(), self.task, get_protocol(self.protocol, template), max_steps=max_turns)

    def outcome(self, result: Any) -> Outcome:
        actions = result.actions or []
        return Outcome(success=bool(result.verdict is not None and result.verdict.success),
                       format_ok=bool(actions) and all(a["kind"] in ("call", "answer") for a in actions),
                       trajectory=result.trajectory)


class EnvSource(EpisodeSource):
    """An environment's training tasks (`generate(n, "train", seed)`)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def check(self) -> None:
        from agentflan.envs import get_env

        get_env(self.name)

    def episodes(self, n: int, seed: int, protocol: str) -> list[Episode]:
        from agentflan.envs import get_env

        return [EnvEpisode(self.name, task, protocol) for task in get_env(self.name).generate(n, "train", seed)]


# ---- BFCL multi-turn ---------------------------------------------------------------------------------------

@dataclass
class BFCLEpisode(Episode):
    """A BFCL multi-turn entry played on fresh instances of BFCL's backends (`eval.bfcl_multi.play`;
    BFCL's own step limit per user turn applies, not `max_turns`)."""

    entry: Any
    backends: Any
    protocol: str

    @property
    def key(self) -> str:
        return f"bfcl-multi/{self.entry.id}"

    def play(self, template: Any, max_turns: int) -> Generator[Prompt, Completion, Any]:
        from agentflan.eval import bfcl_multi
        from agentflan.formats.protocols import get_protocol

        return bfcl_multi.play(self.entry, get_protocol(self.protocol, template), self.backends)

    def outcome(self, result: Any) -> Outcome:
        from agentflan.eval import bfcl_multi

        steps = [s for turn in result.turns for s in turn]
        format_ok = bool(steps) and all(s["action"] is not None and s["action"]["kind"] in ("call", "answer")
                                        for s in steps)
        if result.error is not None:  # a failed request: no verdict, as in eval
            return Outcome(False, format_ok, result.transcript, result.key)
        v = bfcl_multi.judge(self.entry, result.turns, self.backends, force_quit=result.force_quit,
                             context_limit=result.context_limit)
        return Outcome(v["outcome"] == "pass", format_ok, result.transcript, result.key)


class BFCLMultiSource(EpisodeSource):
    """BFCL multi-turn as an RL environment: the first `n` entries of `multi_turn_base` from index
    `eval.bfcl_multi.RL_TRAIN_FROM` on, in BFCL's order (no draw: `seed` is not used), BFCL's verdict."""

    name = "bfcl-multi"

    def check(self) -> None:
        from agentflan.eval import bfcl_multi

        bfcl_multi.locate()

    def episodes(self, n: int, seed: int, protocol: str) -> list[Episode]:
        from agentflan.eval import bfcl_multi

        source = bfcl_multi.locate()
        backends = bfcl_multi.Backends(source.root)
        path = source.question_file(bfcl_multi.RL_TRAIN_CATEGORY)
        entries = [e for e in bfcl_multi.load_entries(source, [path]) if bfcl_multi.is_rl_train(e.id)]
        if not entries:
            raise ConfigError(f"{path}: no entry {bfcl_multi.RL_TRAIN_CATEGORY}_{bfcl_multi.RL_TRAIN_FROM} or later "
                              f"to train on (bfcl-multi trains on those only: the first {bfcl_multi.RL_TRAIN_FROM} "
                              "are eval's)")
        return [BFCLEpisode(e, backends, protocol) for e in entries[:n]]
