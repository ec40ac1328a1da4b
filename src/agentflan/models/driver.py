"""Lockstep driving: many episodes (or requests) advance together, one batched generation per step.

Every episode is a generator (`envs.base.play`, or a protocol's `act`) that yields `Prompt`s and
receives `Completion`s. `drive` collects the pending prompt of every active generator, asks the
engine for all of them at once (the engine batches them: 100 episodes cost a few batched
`generate` calls per step, not 100 sequential ones), and sends each result back. A failed request
is thrown into its generator as `RequestError`, which ends that episode with an error.

It is the one loop between generators and engines: `agentflan eval` (`eval.runlog`), `env play`
(one episode), RL rollouts (`rl.rollout`: a token-level engine samples each episode from its own
token context), and scripted policies (no engine: a generator that prompts is a configuration error).
`serve` schedules requests that arrive over time on the engine's `ContinuousDecoder` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from typing import Any, TypeVar

from agentflan.client import RequestError
from agentflan.errors import ConfigError
from agentflan.formats.protocols import Completion, Prompt
from agentflan.models.engines import Engine

T = TypeVar("T")
Gen = Generator[Prompt, Completion, T]


def drive(gens: Iterable[Gen[T]], engine: Engine | None, *, max_active: int | None = None,
          on_done: Callable[[int, T], None] | None = None, on_round: Callable[[int, int], None] | None = None,
          on_prompts: Callable[[list[Prompt]], None] | None = None) -> list[T]:
    """Run every generator to its end; return their results in input order (a generator that lets
    a `RequestError` through ends with that error as its result).

    Args:
        gens: The generators (started lazily, at most `max_active` at a time: bounded memory).
        engine: Where prompts go; it receives all pending prompts of a round at once. None for
            scripted policies, whose generators end without prompting.
        max_active: Generators in flight (default: 4 x the engine's batch size).
        on_done: Called with (index, result) as each generator finishes (logs, progress).
        on_round: Called with (prompts in the round, active generators) after each round.
        on_prompts: Called with each round's prompts before they go to the engine (`env play
            --show-prompt` shows the last one).

    Raises:
        ConfigError: A generator prompted and there is no engine.
    """
    todo = iter(enumerate(gens))
    limit = max_active or max(4 * (engine.batch_size if engine is not None else 1), 16)
    results: dict[int, T] = {}
    active: dict[int, Gen[T]] = {}
    pending: dict[int, Prompt] = {}

    def finish(i: int, value: Any) -> None:
        results[i] = value
        active.pop(i, None)
        pending.pop(i, None)
        if on_done is not None:
            on_done(i, value)

    def refill() -> None:
        while len(active) < limit:
            try:
                i, gen = next(todo)
            except StopIteration:
                return
            active[i] = gen
            try:
                pending[i] = next(gen)
            except StopIteration as stop:
                finish(i, stop.value)

    refill()
    while pending:
        if engine is None:
            raise ConfigError("a model protocol needs an engine (--model or --base-url)")
        order = list(pending)
        prompts = [pending[i] for i in order]
        if on_prompts is not None:
            on_prompts(prompts)
        outs = engine.generate(prompts)
        if len(outs) != len(order):
            raise RuntimeError(f"engine {engine.name} returned {len(outs)} results for {len(order)} prompts")
        for i, out in zip(order, outs, strict=True):
            gen = active[i]
            try:
                pending[i] = gen.throw(out) if isinstance(out, RequestError) else gen.send(out)
            except StopIteration as stop:
                finish(i, stop.value)
            except RequestError as e:  # a generator that does not handle errors ends with its error
                finish(i, e)
        if on_round is not None:
            on_round(len(order), len(active))
        refill()
    return [results[i] for i in sorted(results)]
