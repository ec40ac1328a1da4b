"""Token counting for statistics and length filters.

Without a tokenizer, `approx_tokens` counts word pieces and punctuation (close to a BPE count on
English; labelled "approx" wherever it is reported). With `hf_token_counter(name_or_path)` the real
tokenizer is used (transformers imported lazily, local files only when offline).
"""

from __future__ import annotations

import re
from collections.abc import Callable

TokenCounter = Callable[[str], int]
_PIECE = re.compile(r"\w{1,4}|[^\w\s]")


def approx_tokens(text: str) -> int:
    """Approximate token count: words split in pieces of at most 4 characters, plus punctuation.

    Examples:
        >>> approx_tokens("Hello, world!")
        6
    """
    return len(_PIECE.findall(text))


def hf_token_counter(name_or_path: str) -> TokenCounter:
    from agentflan.errors import require

    require("transformers", "train")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(name_or_path)
    return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])


def token_counter(tokenizer: str | None) -> TokenCounter:
    return approx_tokens if not tokenizer else hf_token_counter(tokenizer)
