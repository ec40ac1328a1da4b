"""Command-line choices that come from a registry, so that no command lists names by hand."""

from __future__ import annotations

from typing import Any

import click

from agentflan.registry import Registry


class RegistryChoice(click.Choice):  # type: ignore[type-arg]
    """A `click.Choice` of a registry's names, read when click needs them (help, parsing,
    completion): a plugin's component is a choice like a built-in, and importing the CLI reads no
    entry points. `ordered`: list them in registration order (built-ins first) instead of sorted."""

    def __init__(self, registry: Registry[Any], *, ordered: bool = False, case_sensitive: bool = True) -> None:
        self.registry = registry
        self.ordered = ordered
        self.case_sensitive = case_sensitive

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self.registry.names(ordered=self.ordered))

    @choices.setter
    def choices(self, value: Any) -> None:
        raise AttributeError("a RegistryChoice lists its registry's names: register a component instead")

    def __repr__(self) -> str:
        return f"RegistryChoice({self.registry.kind})"
