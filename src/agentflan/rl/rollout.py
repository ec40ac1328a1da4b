"""Token-exact rollouts: episodes driven by `models.driver.drive`, sampled from their own token contexts.

Every episode is an episode generator (`envs.base.play` with the model's protocol, the loop `eval`
plays, or another source's: `rl.sources`) and all of a batch's episodes go through the one lockstep loop, `models.driver.drive`
(batching, the end of each episode, errors thrown into a generator live there only). Two thin
pieces make that loop token-exact:

* `tracked(gen, turns)` wraps each episode generator: it sees each of the episode's prompts and
  forwards it as a `TokenPrompt` that carries the episode's token context, and records the ids the
  engine sampled (`_Turns`);
* `TokenEngine` is an `Engine` whose `generate(prompts)` samples, in one batched call, from each
  prompt's token context (never from a re-render of its messages) and returns `Sampled`
  completions: the text the protocol reads plus the ids and log-probabilities themselves.

So **the ids trained are the ids sampled**:

* turn 1: the context is the rendered prompt (`training.masking.prompt_ids`, as eval renders it);
* each model turn appends the sampled ids as they came out of the sampler (end-of-turn token
  included), never the text decoded and tokenized again;
* what follows (the end of the assistant turn, observations, elicits, the next generation prompt)
  is the re-render of the next prompt after its trained assistant segment: appended with
  `env_mask` 0, so TRL's loss (completion mask x tool mask) never trains environment text.

A template that is not prefix-preserving (a later prompt does not begin with the episode's first
prompt) raises `TemplateError`. Where the re-render of what the model wrote differs from the ids
it sampled (a reply the protocol normalizes, a thought a multi-generation protocol such as `tflan`
rewrites once the action is complete), the turn is counted as *drift* (`rl/drift_turns` in the
log; a drift persists into the later turns of its episode): the policy still trains on what it
sampled, in the context it sampled it in, but eval would show it the re-render. `exact_rollout` is
the check the tests run: a rollout without drift equals the re-render of its whole episode, token
for token.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

from agentflan.client import RequestError
from agentflan.errors import ConfigError
from agentflan.formats.protocols import Completion, Prompt
from agentflan.formats.templates import turn_ends
from agentflan.models.decode import cut_at_stops
from agentflan.models.driver import drive
from agentflan.models.engines import Engine, Result
from agentflan.rl.sources import Episode, Outcome

Sampler = Callable[[list[list[int]], tuple[str, ...], int], list[tuple[list[int], list[float]]]]
"""`sample(contexts, stop_strings, max_new_tokens)`: per context, the sampled ids (end token
included) and their log-probabilities."""


STATS = ("n", "success", "drift_turns", "turns", "truncated", "format_ok")
"""The rollout stats the trainer logs (`rl/<name>`: the mean per rollout over every process)."""


@dataclass
class Rollout:
    """One episode as the trainer sees it."""

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    """1: a token the policy sampled (trained); 0: environment text (masked)."""
    logprobs: list[float] = field(default_factory=list)
    success: bool = False
    format_ok: bool = False
    drift_turns: int = 0
    turns: int = 0
    truncated: bool = False
    trajectory: Any = None
    """The episode's transcript (`envs.base.Episode.trajectory`; for `exact_rollout`)."""
    key: str = ""
    """The conversation key the protocol rendered it with ("": `conversation_key` of the transcript)."""


@dataclass(frozen=True)
class TokenPrompt(Prompt):
    """A protocol's prompt with the token context of its episode (what `TokenEngine` samples from)."""

    context: list[int] = field(default_factory=list)


@dataclass
class Sampled(Completion):
    """A completion with the ids the policy sampled (end token included) and their log-probabilities."""

    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


class TokenEngine(Engine):
    """Samples every prompt of a round in one call, each from its episode's token context.

    Args:
        sampler: How ids are sampled (`hf_sampler`: the trainer's model; tests script it).
        tokenizer: Decodes the sampled ids into the text the protocol reads.
        end_stops: The template's end-of-turn strings (`formats.templates.turn_ends`), where eval's
            engines stop too.
        max_new_tokens: Tokens per model turn.
    """

    name = "rl-tokens"

    def __init__(self, sampler: Sampler, tokenizer: Any, end_stops: tuple[str, ...], max_new_tokens: int,
                 batch_size: int = 1) -> None:
        self.sampler = sampler
        self.tokenizer = tokenizer
        self.end_stops = end_stops
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def generate(self, prompts: list[Prompt]) -> list[Result]:
        tokened: list[TokenPrompt] = []
        for p in prompts:
            if not isinstance(p, TokenPrompt):  # a generator not wrapped by `tracked`: no token context
                raise TypeError(f"{self.name} samples TokenPrompts only, got {type(p).__name__}")
            tokened.append(p)
        # the template's end of turn as well as the protocols' stops, as eval's engines stop (a multi-token
        # end of turn is a stop string, not an end id)
        stops = tuple(sorted({s for p in tokened for s in p.stop} | set(self.end_stops)))
        sampled = self.sampler([p.context for p in tokened], stops, self.max_new_tokens)
        if len(sampled) != len(tokened):
            raise RuntimeError(f"the sampler returned {len(sampled)} results for {len(tokened)} contexts")
        out: list[Result] = []
        for p, (ids, lps) in zip(tokened, sampled, strict=True):
            text, stop = cut_at_stops(self.tokenizer.decode(ids, skip_special_tokens=False), p.stop, self.end_stops)
            out.append(Sampled(text=text, stop=stop, tokens=len(ids), prompt_tokens=len(p.context), ids=list(ids),
                               logprobs=list(lps)))
        return out


class _Turns:
    """The token context of one episode: sampled ids (trained) and environment text (masked)."""

    def __init__(self, template: Any, tokenizer: Any, max_completion_length: int) -> None:
        self.template = template
        self.tokenizer = tokenizer
        self.max_completion_length = max_completion_length
        self.out = Rollout(prompt_ids=[])

    def start(self, first: Prompt) -> None:
        from agentflan.training.masking import prompt_ids

        self.out.prompt_ids = prompt_ids(self.template, self.tokenizer, first.messages, first.tools)

    def context(self) -> list[int]:
        return self.out.prompt_ids + self.out.completion_ids

    def length(self) -> int:
        return len(self.out.completion_ids)

    def sampled(self, ids: list[int], lps: list[float]) -> None:
        self.out.completion_ids += ids
        self.out.env_mask += [1] * len(ids)
        self.out.logprobs += lps
        self.out.turns += 1

    def observe(self, prompt: Prompt) -> None:
        """Append what the environment adds before the next turn (masked): the re-render of the next
        prompt after its last trained (assistant) segment."""
        from agentflan.formats.templates import TemplateError
        from agentflan.training.masking import tokenize_segments

        tok, template = self.tokenizer, self.template
        ids, flags = tokenize_segments(template.render(prompt.messages, prompt.tools, add_generation_prompt=True), tok)
        if template.add_bos and tok.bos_token_id is not None:
            ids, flags = [tok.bos_token_id, *ids], [False, *flags]
        first = self.out.prompt_ids
        end = max((i for i, f in enumerate(flags) if f), default=-1) + 1
        if ids[:len(first)] != first or end <= len(first):
            raise TemplateError(f"template {template.name!r} is not prefix-preserving: the prompt of turn "
                                f"{self.out.turns + 1} does not begin with the episode's first prompt; "
                                "token-exact rollouts need a template that appends turns")
        if ids[:end] != self.context():
            # the re-render of what the model wrote (this turn or an earlier one) differs from the ids it
            # sampled: it goes on from its own ids, eval would show it the re-render
            self.out.drift_turns += 1
        tail = ids[end:]
        self.out.completion_ids += tail
        self.out.env_mask += [0] * len(tail)
        self.out.logprobs += [0.0] * len(tail)

    def finish(self, outcome: Outcome) -> Rollout:
        self.out.success = outcome.success
        self.out.format_ok = outcome.format_ok
        self.out.trajectory = outcome.trajectory
        self.out.key = outcome.key
        return self._capped()

    def truncate(self) -> Rollout:
        self.out.truncated = True
        return self._capped()

    def _capped(self) -> Rollout:
        n = self.max_completion_length
        if len(self.out.completion_ids) > n:
            self.out.truncated = True
            self.out.success = False
            self.out.completion_ids = self.out.completion_ids[:n]
            self.out.env_mask = self.out.env_mask[:n]
            self.out.logprobs = self.out.logprobs[:n]
        return self.out


def tracked(episode: Episode, gen: Generator[Prompt, Completion, Any],
            turns: _Turns) -> Generator[Prompt, Completion, Rollout]:
    """The episode generator `gen` as `drive` sees it, with its token context kept by `turns`: each
    prompt goes out as a `TokenPrompt`, each `Sampled` reply is recorded before the episode reads its
    text, the episode ends early (truncated) once its completion reaches `max_completion_length`,
    and its result is judged by `episode.outcome`."""
    try:
        prompt = next(gen)
    except StopIteration as done:  # an episode that never asks the model (nothing sampled, nothing trained)
        return turns.finish(episode.outcome(done.value))
    turns.start(prompt)
    while True:
        reply = yield TokenPrompt(prompt.messages, prompt.tools, prompt.stop, context=turns.context())
        if not isinstance(reply, Sampled):  # only `TokenEngine` answers these prompts
            raise TypeError(f"a token-exact rollout needs sampled ids, got {type(reply).__name__}")
        turns.sampled(reply.ids, reply.logprobs)
        try:
            prompt = gen.send(reply)
        except StopIteration as done:
            return turns.finish(episode.outcome(done.value))
        if turns.length() >= turns.max_completion_length:
            gen.close()
            return turns.truncate()
        turns.observe(prompt)


class EnvRollout:
    """TRL's `rollout_func`: plays one episode per prompt (see the module docstring).

    Args:
        specs: The episode of each dataset prompt (its text is the key; `rl.sources.Episode`).
        template: The chat template; tokenizer: the model's.
        max_turns, max_new_tokens, max_completion_length: Episode limits.
        sampler: How ids are sampled (default: the trainer's model, `hf_sampler`); tests script it.
    """

    def __init__(self, specs: dict[str, Episode], template: Any, tokenizer: Any, *, max_turns: int,
                 max_new_tokens: int, max_completion_length: int, sampler: Sampler | None = None) -> None:
        self.specs = specs
        self.template = template
        self.tokenizer = tokenizer
        self.max_turns = max_turns
        self.max_new_tokens = max_new_tokens
        self.max_completion_length = max_completion_length
        self.sampler = sampler
        self.end_stops, self.stop_ids = turn_ends(template, tokenizer)  # where eval's engines stop
        self.pending_stats: list[float] = [0.0] * len(STATS)
        """Sums over every process's rollouts since the last log, `STATS` order (the trainer logs their means)."""

    def __call__(self, prompts: list[Any], trainer: Any) -> dict[str, Any]:
        sampler = self.sampler
        if sampler is None:
            sampler = (VLLMSampler(trainer.vllm_generation, trainer.accelerator, self.tokenizer, self.stop_ids,
                                   self.max_new_tokens)
                       if getattr(trainer, "use_vllm", False) else hf_sampler(trainer, self.tokenizer, self.stop_ids))
        rollouts = self.play([str(p) for p in prompts], sampler)
        self.count(rollouts, getattr(trainer, "accelerator", None))
        return {"prompt_ids": [r.prompt_ids for r in rollouts], "completion_ids": [r.completion_ids for r in rollouts],
                "logprobs": [r.logprobs for r in rollouts], "env_mask": [r.env_mask for r in rollouts],
                "verdict": [float(r.success) for r in rollouts], "format_ok": [float(r.format_ok) for r in rollouts]}

    def count(self, rollouts: list[Rollout], accelerator: Any) -> None:
        """Add this batch's stats, summed over every process (each plays its own share of the batch;
        every process calls the rollout function at the same step, so the reduction cannot hang;
        `accelerator` None: this process's only)."""
        summed = [float(len(rollouts)), *(float(sum(getattr(r, k) for r in rollouts)) for k in STATS[1:])]
        if accelerator is not None and accelerator.num_processes > 1:
            import torch

            summed = accelerator.reduce(torch.tensor(summed, device=accelerator.device), reduction="sum").tolist()
        self.pending_stats = [a + b for a, b in zip(self.pending_stats, summed, strict=True)]

    def play(self, prompts: list[str], sampler: Sampler) -> list[Rollout]:
        """Play every prompt's episode in lockstep through `models.driver.drive` (one batched sampling
        per round, every episode of the batch in flight)."""
        gens = []
        for p in prompts:
            spec = self.specs.get(p)
            if spec is None:
                raise ConfigError(f"rollout: no task for the prompt {p[:80]!r}")
            turns = _Turns(self.template, self.tokenizer, self.max_completion_length)
            gens.append(tracked(spec, spec.play(self.template, self.max_turns), turns))
        engine = TokenEngine(sampler, self.tokenizer, self.end_stops, self.max_new_tokens, batch_size=len(gens))
        results = drive(gens, engine, max_active=max(len(gens), 1))
        finish = getattr(sampler, "finish", None)
        if finish is not None:  # a sampler in lockstep with the other processes (`VLLMSampler`)
            finish()
        for r in results:
            if isinstance(r, RequestError):  # nothing here raises one; a sampler error propagates as itself
                raise r
        return results


def exact_rollout(rollout: Rollout, template: Any, tokenizer: Any, protocol: Any, key: str = "") -> bool:
    """Whether the rollout's ids equal the re-render of its whole episode through the protocol and the
    template (up to the template's text after the last assistant turn, which nothing sampled)."""
    from agentflan.formats.protocols import conversation_key
    from agentflan.training.masking import tokenize_segments

    traj = rollout.trajectory
    if traj is None:  # a truncated episode has no transcript to compare
        return False
    messages = protocol.render(traj, key or rollout.key or conversation_key(traj))
    ids, flags = tokenize_segments(template.render(messages, None), tokenizer)
    if template.add_bos and tokenizer.bos_token_id is not None:
        ids, flags = [tokenizer.bos_token_id, *ids], [False, *flags]
    last = max((i for i, f in enumerate(flags) if f), default=-1)
    return rollout.prompt_ids + rollout.completion_ids == ids[:last + 1]


def hf_sampler(trainer: Any, tokenizer: Any, stop_ids: set[int]) -> Sampler:
    """Sample from the trainer's model with `generate` (left padding; the trainer's temperature,
    top-p, top-k (0: off, as in TRL), min-p and repetition penalty); each row is cut after its first
    end token or protocol stop string. The draws come from torch's generator, which the trainer
    seeds (`seed`) and a checkpoint restores."""
    import torch

    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def sample(contexts: list[list[int]], stops: tuple[str, ...], max_new: int) -> list[tuple[list[int], list[float]]]:
        width = max(len(c) for c in contexts)
        batch = torch.full((len(contexts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(contexts), width), dtype=torch.long)
        for r, c in enumerate(contexts):
            batch[r, width - len(c):] = torch.tensor(c)
            mask[r, width - len(c):] = 1
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = model.generate(
                    input_ids=batch.to(model.device), attention_mask=mask.to(model.device), do_sample=True,
                    temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                    repetition_penalty=args.repetition_penalty, max_new_tokens=max_new,
                    pad_token_id=pad, eos_token_id=sorted(stop_ids) or None, output_scores=True,
                    return_dict_in_generate=True, **({"stop_strings": list(stops), "tokenizer": tokenizer} if stops else {}))
        finally:
            model.train(was_training)
        seqs = out.sequences[:, width:].tolist()
        logps = [torch.log_softmax(s.float(), dim=-1) for s in out.scores]
        results = []
        for r, new in enumerate(seqs):
            n = _cut_len(new, stop_ids, stops, tokenizer)
            results.append((new[:n], [float(logps[t][r, new[t]]) for t in range(n)]))
        return results

    return sample


class VLLMSampler:
    """A `Sampler` on TRL's vLLM generation (`trainer.vllm_generation`, `rl.use_vllm: true`).

    TRL 1.16's `VLLMGeneration.generate(prompts, images, num_generations)` takes token-id prompts and
    returns, per prompt, the completion ids and per-token log-probabilities (a list per token: the
    sampled token's first). Three things it does differently from what a rollout turn needs, and
    how they are bridged without changing TRL:

    * it generates up to its `max_completion_length` (the whole episode's budget): that attribute,
      which `generate` reads on every call, is set to the turn's `max_new_tokens` for the call;
    * it takes no stop strings (it stops at the model's end of sequence): each completion is cut
      after its first end-of-turn id or protocol stop string, ids and log-probabilities alike (the
      ids before a stop are distributed as if sampling had stopped there: later tokens do not
      change earlier ones; what follows is sampled for nothing);
    * in server mode (and colocated tensor parallelism) it is a collective: the prompts of every
      process are gathered, generated on the main process and sliced back assuming every process
      sent as many as this one. The rounds of a rollout differ in size and number per process (its
      episodes end at different turns), so every round starts with a gather of each process's
      count; each process pads its round to the largest with one-token dummy contexts (results
      dropped), and a process whose episodes have ended keeps joining rounds with dummies (`finish`)
      until every process's count is 0.

    `num_generations` is 1: every context is its own episode's (TRL's sampler already repeated each
    task `num_generations` times). The draws come from vLLM's engine (colocated: seeded by TRL with
    the process index, not the recipe's `seed`; a server: its own), not torch's generator, so the
    determinism and resume guarantees of the local sampler do not carry over.

    Args:
        generation: `trainer.vllm_generation`.
        accelerator: `trainer.accelerator`.
        tokenizer: Decodes ids to find stop strings.
        stop_ids: The template's end-of-turn ids.
        max_new_tokens: Tokens per model turn (also the dummies' budget).
    """

    def __init__(self, generation: Any, accelerator: Any, tokenizer: Any, stop_ids: set[int], max_new_tokens: int) -> None:
        self.generation = generation
        self.accelerator = accelerator
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids
        self.max_new_tokens = max_new_tokens
        self.dummy = [tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id]
        self.lockstep = accelerator.num_processes > 1 and (
            generation.mode == "server" or getattr(generation, "tensor_parallel_size", 1) > 1)

    def __call__(self, contexts: list[list[int]], stops: tuple[str, ...], max_new: int) -> list[tuple[list[int], list[float]]]:
        n = len(contexts)
        width = self._round(n) if self.lockstep else n
        completions, logprobs = self._generate([*contexts, *[self.dummy] * (width - n)], max_new)
        results = []
        for ids, lps in zip(completions[:n], logprobs[:n], strict=True):
            ids = list(ids)
            k = _cut_len(ids, self.stop_ids, stops, self.tokenizer)
            results.append((ids[:k], [float("nan") if lp[0] is None else float(lp[0]) for lp in lps[:k]]))
        return results

    def finish(self) -> None:
        """Join the other processes' rounds with dummy contexts until every process is done."""
        if not self.lockstep:
            return
        while width := self._round(0):
            self._generate([self.dummy] * width, self.max_new_tokens)

    def _round(self, n: int) -> int:
        """The largest count of contexts any process has in this round (0: every process is done)."""
        import torch

        counts = self.accelerator.gather(torch.tensor([n], device=self.accelerator.device))
        return int(counts.max().item())

    def _generate(self, prompts: list[list[int]], max_new: int) -> tuple[list[list[int]], list[list[list[float | None]]]]:
        gen = self.generation
        budget = gen.max_completion_length
        gen.max_completion_length = max_new  # read by `generate` as vLLM's max_tokens
        try:
            _, completions, logprobs, _ = gen.generate(prompts=prompts, images=None, num_generations=1)
        finally:
            gen.max_completion_length = budget
        if len(completions) != len(prompts):
            raise RuntimeError(f"vLLM returned {len(completions)} completions for {len(prompts)} prompts")
        return completions, logprobs


def _cut_len(new: list[int], stop_ids: set[int], stops: tuple[str, ...], tokenizer: Any) -> int:
    for n, t in enumerate(new, start=1):
        if t in stop_ids:
            return n
        if stops and any(s in tokenizer.decode(new[:n], skip_special_tokens=False) for s in stops):
            return n
    return len(new)
