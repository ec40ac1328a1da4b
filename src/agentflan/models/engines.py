"""Engines: what turns a protocol's `Prompt`s into `Completion`s, many at a time.

* `HFEngine`: a local transformers model. Prompts are rendered with the model's *training*
  template and tokenized exactly as training tokenized them (`training.masking.prompt_ids`);
  generation is greedy and batched (left padding, longest first), stopping at the template's end
  of turn or a protocol's observation marker.
* `OpenAIEngine`: any OpenAI-compatible endpoint through the one client (`agentflan.client`),
  `concurrency` requests at a time. Text protocols send the rendered turns as plain chat (the
  server applies its own chat template); the structured `native` protocol sends messages and
  `tools` and reads the server's `tool_calls`. A failed request comes back as `RequestError`.
* `VLLMEngine`: vLLM's offline engine on a GPU, prompts rendered by our template (exact).

Every engine returns one result per prompt, in order: a `Completion`, or a `RequestError`.
Engines are registered by name in `ENGINES` (`hf`, `openai`, `vllm`); `make_engine(EngineOptions)`
builds the one the options name (`auto`: `openai` with a base URL, else `hf`), for `agentflan eval`,
`env play` and any library user alike.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from agentflan.client import ClientConfig, ContextLimitError, OpenAIClient, RequestError
from agentflan.errors import ConfigError, MissingDependencyError, require
from agentflan.formats.openai import openai_messages, openai_tools, reply_message
from agentflan.formats.protocols import Completion, Prompt
from agentflan.formats.templates import is_structured, turn_ends
from agentflan.models.decode import cut_at_stops
from agentflan.models.info import ModelInfo
from agentflan.registry import Registry

log = logging.getLogger(__name__)
Result = Completion | RequestError


@dataclass(frozen=True)
class EngineOptions:
    """What a user says about the engine to use (the options of `agentflan eval` and `env play`).

    Args:
        engine: A registered engine name (`hf`, `openai`, `vllm`), or `auto`: `openai` with
            `base_url`, else `hf`.
        model: A model folder (local engines), or the model name the endpoint serves.
        base_url: An OpenAI-compatible endpoint.
        batch_size: Local engine: prompts per generate call.
        max_new_tokens: Tokens per generation.
        device: Local engine: `cpu`, `cuda`, ...
        dtype: Local engine: `float32`, `bfloat16`, ...
        concurrency: Endpoint: requests in flight.
        timeout_s: Endpoint: seconds a whole request may take.
        retries: Endpoint: retries on timeouts, 429 and 5xx.
        cache: Endpoint: the request cache file (answers are reused on a rerun).
    """

    engine: str = "auto"
    model: str | None = None
    base_url: str | None = None
    batch_size: int = 16
    max_new_tokens: int = 256
    device: str = "cpu"
    dtype: str = "float32"
    concurrency: int = 8
    timeout_s: float = 120.0
    retries: int = 3
    cache: str | None = None

    @property
    def kind(self) -> str:
        """The engine name `auto` stands for."""
        return self.engine if self.engine != "auto" else ("openai" if self.base_url else "hf")

    def problem(self) -> str | None:
        """What is missing for the chosen engine (None: nothing); the CLI reports it as a usage error."""
        if self.kind == "openai":
            if not self.base_url or not self.model:
                return "an endpoint needs --base-url and --model (the model name it serves)"
        elif not self.model:
            return "--model FOLDER is required (a folder `agentflan train` wrote, e.g. runs/x/merged)"
        return None


class Engine(ABC):
    """What turns `Prompt`s into results (see the module docstring)."""

    name: ClassVar[str]
    batch_size: int = 1
    info: ModelInfo | None = None
    """What training recorded beside a local model (None: an endpoint, nothing is known)."""

    @abstractmethod
    def generate(self, prompts: list[Prompt]) -> list[Result]:
        """One result per prompt, in order."""

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name}

    @classmethod
    def from_options(cls, options: EngineOptions) -> Engine:
        """The engine the options describe (`make_engine` calls it on the registered class)."""
        raise ConfigError(f"engine {cls.name!r} cannot be built from options")


ENGINES: Registry[type[Engine]] = Registry("engine")
"""Engines by name; a third party registers its own engine class here."""
ENGINES.register("hf", "agentflan.models.engines:HFEngine", "a local transformers model folder")
ENGINES.register("openai", "agentflan.models.engines:OpenAIEngine", "any OpenAI-compatible endpoint (--base-url)")
ENGINES.register("vllm", "agentflan.models.engines:VLLMEngine", "vLLM's offline engine on a CUDA GPU")


def episode_protocols(engine: Engine | None, env: str, chosen: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The protocols to play `env` in: those `chosen`, else those the engine's model was trained
    with (`ModelInfo.episode_protocols`), else `native`."""
    if chosen:
        return list(chosen)
    info = engine.info if engine is not None else None
    return info.episode_protocols(env) if info is not None else ["native"]


def make_engine(options: EngineOptions) -> Engine:
    """The registered engine `options` name, built from them.

    Raises:
        ConfigError: An unknown engine, or an option the engine needs is missing.
        MissingDependencyError: The engine's packages (or GPU) are absent.
    """
    problem = options.problem()
    if problem is not None:
        raise ConfigError(problem)
    return ENGINES.get(options.kind).from_options(options)


class HFEngine(Engine):
    """A local transformers model (a folder saved by `agentflan train`, or any causal LM folder).

    Args:
        path: The model folder.
        template: Chat template name (default: the one the model was trained with).
        batch_size: Prompts per `generate` call (all episodes step in lockstep; see `models.driver`).
        max_new_tokens: Per generation.
        device: `cpu`, `cuda`, ...; dtype: `float32`, `bfloat16`, ...
    """

    name: ClassVar[str] = "hf"

    def __init__(self, path: str | Path, *, template: str | None = None, batch_size: int = 16,
                 max_new_tokens: int = 256, device: str = "cpu", dtype: str = "float32",
                 model: Any = None, tokenizer: Any = None, prefix_cache_gb: float = 2.0) -> None:
        require("transformers", "train")
        from agentflan.formats.templates import get_template
        from agentflan.training.models import ModelConfig, check_local_model, resolve

        if model is None and str(path).startswith("gguf:"):  # as recipes name it: converted once, then cached
            path = resolve(ModelConfig(name_or_path=str(path)))
        self.path = str(path)
        self.info = ModelInfo.load(path) if model is None else ModelInfo(template=template or "hf")
        if model is None or tokenizer is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            check_local_model(self.path)
            tokenizer = AutoTokenizer.from_pretrained(self.path)
            model = AutoModelForCausalLM.from_pretrained(self.path, dtype=getattr(torch, dtype))
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        self.template = get_template(template or self.info.template, tokenizer)
        self.batch_size = max(1, batch_size)
        self.max_new_tokens = max_new_tokens
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.end_stops, self.stop_ids = turn_ends(self.template, tokenizer)
        self.tokens_generated = 0
        self.calls = 0
        self.context: int | None = getattr(self.model.config, "max_position_embeddings", None)
        from agentflan.models.decode import PrefixCache

        self.cache = PrefixCache(int(prefix_cache_gb * 2**30)) if prefix_cache_gb > 0 else None

    @classmethod
    def from_options(cls, options: EngineOptions) -> HFEngine:
        return cls(options.model or "", batch_size=options.batch_size, max_new_tokens=options.max_new_tokens,
                   device=options.device, dtype=options.dtype)

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "model": self.path, "template": self.template.name,
                "batch_size": self.batch_size, "max_new_tokens": self.max_new_tokens, "device": self.device}

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        from agentflan.training.masking import prompt_ids

        return prompt_ids(self.template, self.tokenizer, prompt.messages, prompt.tools)

    def decoder(self) -> Any:
        """A `batching.ContinuousDecoder` on this model: requests join and leave the running batch
        between decoding steps, each with its own sampling, token limit and stop strings (`serve`)."""
        from agentflan.models.batching import ContinuousDecoder

        return ContinuousDecoder(self.model, self.tokenizer, encode=self.prompt_ids, pad_id=self.pad_id,
                                 stop_ids=self.stop_ids, end_stops=self.end_stops, device=self.device,
                                 context=self.context)

    def _greedy(self, prompts: list[list[int]], stops: list[str]) -> list[list[int]]:
        """New tokens per prompt: the prefix-cached lockstep decoder (`models.decode`), or
        `model.generate` when the cache is off."""
        import torch

        longest = max(len(s) for s in stops) if stops else 0

        def stopped(i: int, new: list[int]) -> bool:
            tail = self.tokenizer.decode(new[-(longest + 8):], skip_special_tokens=False)
            return any(s in tail for s in stops)

        if self.cache is not None:
            from agentflan.models.decode import greedy

            return greedy(self.model, prompts, max_new_tokens=self.max_new_tokens, pad_id=self.pad_id,
                          stop_ids=self.stop_ids, stopped=stopped, cache=self.cache, device=self.device)
        width = max(len(p) for p in prompts)
        batch = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):  # left padding: every prompt ends where generation starts
            batch[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        with torch.no_grad():
            out = self.model.generate(
                input_ids=batch.to(self.device), attention_mask=mask.to(self.device), do_sample=False,
                max_new_tokens=self.max_new_tokens, pad_token_id=self.pad_id, stop_strings=stops,
                tokenizer=self.tokenizer, temperature=None, top_p=None, top_k=None)
        return [out[r, width:].tolist() for r in range(len(prompts))]

    def generate(self, prompts: list[Prompt]) -> list[Result]:
        encoded = [self.prompt_ids(p) for p in prompts]
        results: list[Result | None] = [None] * len(prompts)
        limit = self.context - 1 if self.context else None
        for i, ids in enumerate(encoded):  # a prompt the model cannot hold is not generated from
            if limit is not None and len(ids) > limit:
                results[i] = ContextLimitError(f"the prompt has {len(ids)} tokens; the model's context is "
                                               f"{self.context}", url=self.path, status=400)
        order = sorted((i for i in range(len(prompts)) if results[i] is None), key=lambda i: (-len(encoded[i]), i))
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            stops = sorted({s for i in chunk for s in prompts[i].stop} | set(self.end_stops))
            news = self._greedy([encoded[i] for i in chunk], stops)
            self.calls += 1
            for i, new in zip(chunk, news, strict=True):
                text = self.tokenizer.decode(new, skip_special_tokens=False)
                cut, stop = cut_at_stops(text, prompts[i].stop, self.end_stops)
                n = len(self.tokenizer(cut, add_special_tokens=False)["input_ids"]) if cut else 0
                self.tokens_generated += n
                results[i] = Completion(text=cut, stop=stop, tokens=n, prompt_tokens=len(encoded[i]))
        return [r for r in results if r is not None]


class OpenAIEngine(Engine):
    """An OpenAI-compatible endpoint (see the module docstring)."""

    name: ClassVar[str] = "openai"

    def __init__(self, config: ClientConfig, *, max_tokens: int = 256, temperature: float = 0.0,
                 final_tool_hint: bool = True) -> None:
        self.client = OpenAIClient(config)
        self.batch_size = config.concurrency
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.final_tool_hint = final_tool_hint

    @classmethod
    def from_options(cls, options: EngineOptions) -> OpenAIEngine:
        return cls(ClientConfig(base_url=options.base_url or "", model=options.model or "",
                                concurrency=options.concurrency, timeout_s=options.timeout_s,
                                retries=options.retries, cache=options.cache),
                   max_tokens=options.max_new_tokens)

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "base_url": self.client.config.base_url, "model": self.client.config.model,
                "concurrency": self.client.config.concurrency, "max_tokens": self.max_tokens}

    def body(self, prompt: Prompt) -> dict[str, Any]:
        structured = prompt.tools is not None or is_structured(prompt.messages)
        body = self.client.body(openai_messages(prompt.messages), max_tokens=self.max_tokens,
                                temperature=self.temperature, stop=list(prompt.stop) or None)
        if structured and prompt.tools:
            body["tools"] = openai_tools(prompt.tools)
        return body

    def generate(self, prompts: list[Prompt]) -> list[Result]:
        def one(body: dict[str, Any]) -> Completion:
            response = self.client.chat(body)
            try:
                parsed = reply_message(response)
            except Exception as e:  # a reply we cannot read is the server's fault: an error, not an answer
                raise RequestError(f"{self.client.url}: unreadable message in the reply: {e}",
                                   url=self.client.url) from e
            stop = response["choices"][0].get("stop_reason")
            ext = response.get("agentflan") or {}
            completion = Completion(text=parsed.content, stop=stop if isinstance(stop, str) else None,
                                    tokens=int((response.get("usage") or {}).get("completion_tokens") or 0))
            if body.get("tools"):  # a structured request: the server read the reply itself
                completion.message = parsed
            if ext.get("action") == "unparseable":  # agentflan serve: the model's reply could not be read
                completion.error = str(ext.get("error") or "unparseable reply")
            return completion

        return self.client.map(one, [self.body(p) for p in prompts])


class VLLMEngine(Engine):
    """vLLM's offline engine (CUDA only), fed prompts rendered and tokenized by our template."""

    name: ClassVar[str] = "vllm"

    def __init__(self, path: str | Path, *, template: str | None = None, max_new_tokens: int = 256,
                 dtype: str = "bfloat16", **kwargs: Any) -> None:
        import importlib.util

        if importlib.util.find_spec("vllm") is None:
            raise MissingDependencyError("--engine vllm needs vLLM on a CUDA GPU (pip install vllm); "
                                         "use --engine hf on CPU")
        import torch

        if not torch.cuda.is_available():
            raise MissingDependencyError("--engine vllm needs a CUDA GPU; use --engine hf on CPU")
        from transformers import AutoTokenizer
        from vllm import LLM  # type: ignore[import-not-found]

        from agentflan.formats.templates import get_template

        self.path = str(path)
        self.info = ModelInfo.load(path)
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.template = get_template(template or self.info.template, self.tokenizer)
        self.llm = LLM(model=self.path, dtype=dtype, **kwargs)
        self.max_new_tokens = max_new_tokens
        self.batch_size = 1024
        self.end_stops, _ = turn_ends(self.template, self.tokenizer)

    @classmethod
    def from_options(cls, options: EngineOptions) -> VLLMEngine:
        return cls(options.model or "", max_new_tokens=options.max_new_tokens)

    def generate(self, prompts: list[Prompt]) -> list[Result]:
        from vllm import SamplingParams

        from agentflan.training.masking import prompt_ids

        ids = [prompt_ids(self.template, self.tokenizer, p.messages, p.tools) for p in prompts]
        params = [SamplingParams(temperature=0.0, max_tokens=self.max_new_tokens,
                                 stop=list({*p.stop, *self.end_stops})) for p in prompts]
        outs = self.llm.generate([{"prompt_token_ids": i} for i in ids], params)
        results: list[Result] = []
        for p, o in zip(prompts, outs, strict=True):
            text = o.outputs[0].text
            reason = o.outputs[0].stop_reason
            results.append(Completion(text=text, stop=reason if isinstance(reason, str) and reason in p.stop else None,
                                      tokens=len(o.outputs[0].token_ids)))
        return results


class ScriptedEngine(Engine):
    """Returns given texts in order, recording every prompt (tests and parity checks)."""

    name: ClassVar[str] = "scripted"

    def __init__(self, texts: list[str] | None = None, respond: Any = None) -> None:
        self.texts = list(texts or [])
        self.respond = respond
        self.prompts: list[Prompt] = []
        self.batch_size = 64

    def generate(self, prompts: list[Prompt]) -> list[Result]:
        out: list[Result] = []
        for p in prompts:
            self.prompts.append(p)
            if self.respond is not None:
                got = self.respond(p)
                out.append(got if isinstance(got, (Completion, RequestError)) else Completion(text=str(got)))
            else:
                out.append(Completion(text=self.texts.pop(0) if self.texts else ""))
        return out
