"""Seeded randomness: every random choice agentflan makes is derived here, from stable keys.

Randomness never comes from global state or stream position: `unit(seed, *keys)` hashes a seed
with stable keys (step name, trajectory id, turn index) into [0, 1), and `rng_for` seeds a
`random.Random` the same way. Decisions therefore do not depend on how data is sharded or
ordered, which is what makes a multi-process build byte-identical to a single-process one.
New code uses `unit` and `rng_for`.

The other derivations below predate that rule and stay exactly as they were, because builds,
rendered prompts, generated tasks and reported intervals depend on their values: a protocol's
drawn format (`text_rng`), a T-FLAN phrase (`phrase_index`), a per-task seed and the paired
bootstrap (`crc_seed`), and the environments' task generators (`task_rng`). Each lives here so
that there is one place to read how agentflan draws.
"""

from __future__ import annotations

import hashlib
import random
import zlib


def unit(seed: int, *keys: object) -> float:
    """A uniform number in [0, 1) determined by `seed` and `keys` alone.

    Examples:
        >>> unit(1, "split", "a") == unit(1, "split", "a")
        True
        >>> 0.0 <= unit(1, "x") < 1.0
        True
    """
    h = hashlib.blake2b(repr((seed, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


def rng_for(seed: int, *keys: object) -> random.Random:
    """A `random.Random` seeded from `seed` and `keys` (stable across processes and runs)."""
    return random.Random(int(unit(seed, *keys) * 2**53))


def phrase_index(n: int, *parts: object) -> int:
    """An index in [0, n) determined by `parts` (T-FLAN's phrase of a conversation's turn).

    Examples:
        >>> phrase_index(5, "key", 3, "first phrase") == phrase_index(5, "key", 3, "first phrase")
        True
    """
    h = hashlib.blake2b("\x1f".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") % n


def text_rng(text: str) -> random.Random:
    """A `random.Random` seeded from the SHA-256 of `text` (a protocol's format drawn per key)."""
    return random.Random(int(hashlib.sha256(text.encode()).hexdigest()[:12], 16))


def crc_seed(text: str) -> int:
    """A 32-bit seed from `text` (a random policy per task, the paired bootstrap per comparison)."""
    return zlib.crc32(text.encode())


def task_rng(seed: int, salt: int) -> random.Random:
    """The stream an environment's task generator draws from: the user's seed, and a per-split salt."""
    return random.Random(seed * 7919 + salt)
