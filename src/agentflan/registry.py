"""Components registered by short names; targets are imported lazily (`module:attr`)."""

from __future__ import annotations

import importlib
from typing import Generic, TypeVar

from agentflan.errors import ConfigError
from agentflan.options import did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> component map with lazy imports and "did you mean" errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._targets: dict[str, str] = {}
        self._docs: dict[str, str] = {}

    def register(self, name: str, target: str, doc: str = "") -> None:
        if name in self._targets:
            raise ConfigError(f"{self.kind} {name!r} is already registered")
        self._targets[name] = target
        self._docs[name] = doc

    def names(self) -> list[str]:
        return sorted(self._targets)

    def doc(self, name: str) -> str:
        return self._docs.get(name, "")

    def get(self, name: str) -> T:
        if name not in self._targets:
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})"
                              f"{did_you_mean(name, self._targets)}")
        module, attr = self._targets[name].split(":")
        return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]

    def __contains__(self, name: object) -> bool:
        return name in self._targets
