"""Components registered by short names: one `Registry` per named kind.

Every kind a user names (readers, writers, steps, protocols, templates, environments, executors,
engines, suites) lives in a `Registry`. Built-in components register a `module:attr` string (the
module is imported on first use, so listing names costs no imports) or the object itself.

Third parties add components without editing agentflan, through Python entry points in the group
`agentflan.<kind>s` (`agentflan.readers`, `agentflan.protocols`, `agentflan.environments`, ...)::

    # pyproject.toml of the plugin distribution
    [project.entry-points."agentflan.protocols"]
    "mytool" = "mytool_agentflan.protocol:MyToolProtocol"

Entry points are discovered on the first lookup or listing of a registry (not when agentflan is
imported) and their modules imported only when that name is used. A plugin may not take the name
of a built-in (or of another plugin): the registry refuses it with a `ConfigError` naming the
distribution and the entry point, and a plugin that fails to import is a `ConfigError` naming
them too, never a traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

from agentflan.errors import ConfigError
from agentflan.options import did_you_mean

T = TypeVar("T")


@dataclass(frozen=True)
class Plugin:
    """Where a plugin's registration comes from (for messages and listings)."""

    distribution: str
    version: str
    entry_point: EntryPoint

    def __str__(self) -> str:
        ep = self.entry_point
        return f"plugin {self.distribution} {self.version} (entry point {ep.name} = {ep.value} in {ep.group})"


class Registry(Generic[T]):
    """A name -> component map with lazy imports, entry point plugins and "did you mean" errors.

    Args:
        kind: What the registry holds, singular (`protocol`): used in messages.
        group: The entry point group plugins register in (default `agentflan.<kind>s`).
        check: Validates a plugin's object once it is loaded: returns what is wrong with it, or
            None. (Built-ins are checked by their tests.)
    """

    def __init__(self, kind: str, group: str | None = None, check: Callable[[Any], str | None] | None = None) -> None:
        self.kind = kind
        self.group = group or f"agentflan.{kind}s"
        self._check = check
        self._targets: dict[str, Any] = {}
        self._docs: dict[str, str] = {}
        self._plugins: dict[str, Plugin] = {}
        self._discovered = False

    def register(self, name: str, target: str | T, doc: str = "") -> None:
        """Register `target` (`"module:attr"`, imported on first `get`, or the object) as `name`."""
        if name in self._targets:
            raise ConfigError(f"{self.kind} {name!r} is already registered")
        self._targets[name] = target
        self._docs[name] = doc

    def unregister(self, name: str) -> None:
        """Remove `name` (a component registered at run time, e.g. by a test or a notebook)."""
        if name not in self._targets:
            raise ConfigError(f"{self.kind} {name!r} is not registered")
        for table in (self._targets, self._docs, self._plugins):
            table.pop(name, None)

    def names(self, *, ordered: bool = False) -> list[str]:
        """Every registered name, sorted; `ordered`: in registration order (built-ins first)."""
        self._discover()
        return list(self._targets) if ordered else sorted(self._targets)

    def doc(self, name: str) -> str:
        """A one-line description (for a plugin without one: where it comes from)."""
        self._discover()
        if name in self._plugins and not self._docs.get(name):
            plugin = self._plugins[name]
            return f"from {plugin.distribution} {plugin.version}"
        return self._docs.get(name, "")

    def origin(self, name: str) -> Plugin | None:
        """The plugin that registered `name`, or None for a built-in."""
        self._discover()
        return self._plugins.get(name)

    def get(self, name: str) -> T:
        """The component registered as `name` (imported now if it was registered by path)."""
        self._discover()
        if name not in self._targets:
            raise ConfigError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})"
                              f"{did_you_mean(name, self._targets)}")
        target = self._targets[name]
        if name in self._plugins:
            return self._load_plugin(name, self._plugins[name])  # type: ignore[no-any-return]
        if isinstance(target, str):  # looked up on every call (imports are cached): monkeypatching works
            module, attr = target.split(":")
            return getattr(importlib.import_module(module), attr)  # type: ignore[no-any-return]
        return target  # type: ignore[no-any-return]

    def known(self, name: str) -> str:
        """`name` when it is registered, else a `ValueError` listing the names with "did you mean"
        (for pydantic validators: a config names a component that exists)."""
        if name not in self:
            raise ValueError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})"
                             f"{did_you_mean(name, self._targets)}")
        return name

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._targets

    def reload_plugins(self) -> None:
        """Forget the plugins found so far; the next lookup reads the entry points again (after
        installing a plugin into a running process, and in tests)."""
        for name in list(self._plugins):
            for table in (self._targets, self._docs):
                table.pop(name, None)
        self._plugins.clear()
        self._discovered = False

    def _discover(self) -> None:
        if self._discovered:
            return
        found: dict[str, Plugin] = {}
        # sorted, so that which of two clashing plugins is named first does not depend on sys.path order
        for ep in sorted(entry_points(group=self.group), key=lambda e: (e.name, e.dist.name if e.dist else "", e.value)):
            dist = ep.dist
            plugin = Plugin(dist.name if dist else "?", dist.version if dist else "?", ep)
            if ep.name in self._targets:
                raise ConfigError(f"{plugin} registers the {self.kind} {ep.name!r}, which is built in: the plugin "
                                  f"must choose another name (or uninstall {plugin.distribution})")
            if ep.name in found:
                raise ConfigError(f"{plugin} registers the {self.kind} {ep.name!r}, which {found[ep.name]} "
                                  "registers too: uninstall one of them")
            found[ep.name] = plugin
        for name, plugin in found.items():
            self._targets[name] = plugin.entry_point.value
            self._docs[name] = ""
            self._plugins[name] = plugin
        self._discovered = True

    def _load_plugin(self, name: str, plugin: Plugin) -> Any:
        try:
            obj = plugin.entry_point.load()
        except Exception as e:  # any error of foreign code at import: name the plugin, not a traceback
            raise ConfigError(f"{self.kind} {name!r}: {plugin} failed to load: {type(e).__name__}: {e}") from e
        problem = self._check(obj) if self._check is not None else None
        if problem:
            raise ConfigError(f"{self.kind} {name!r}: {plugin} is not usable: {problem}")
        return obj


def subclass_of(base: str) -> Callable[[Any], str | None]:
    """A `Registry` check: the plugin's object must be a subclass of `base` (`"module:Class"`,
    imported when a plugin is checked: registries are built before their base classes' modules)."""
    def check(obj: Any) -> str | None:
        module, attr = base.split(":")
        cls = getattr(importlib.import_module(module), attr)
        if isinstance(obj, type) and issubclass(obj, cls):
            return None
        return f"it names {obj!r}, not a subclass of {module}.{attr}"
    return check


def factory(obj: Any) -> str | None:
    """A `Registry` check: the plugin's object must be a class or a function that makes the component."""
    return None if callable(obj) else f"it names {obj!r}, which is neither a class nor a function"
