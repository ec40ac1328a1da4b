"""YAML configs as users write them: a file read with errors naming file:line:column, and
`key=value` / `~key` overrides from the command line (data recipes and training recipes alike)."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from agentflan.errors import ConfigError


def load_yaml_file(path: Path) -> Any:
    """The YAML document in `path`; a syntax error or a tag safe YAML refuses (`!!python/object`)
    raises `ConfigError` naming the file, line and column."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{yaml_problem(e, str(path))}") from e


def yaml_problem(e: yaml.YAMLError, where: str) -> str:
    """One line for a YAML error: `where:line:column: not valid YAML: what`."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
    what = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
    opened = getattr(e, "context_mark", None)
    if opened is not None and mark is not None and opened.line != mark.line:
        what += f" (the construct opened at line {opened.line + 1})"
    return f"{at}: not valid YAML: {' '.join(what.split())}"


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b=value` (YAML-parsed value) and `~a.b` (delete) overrides; a number indexes a list
    (`outputs.x.steps.3.ratios=paper`).

    Examples:
        >>> apply_overrides({"a": {"b": 1}}, ["a.b=2", "c=[x, y]"])
        {'a': {'b': 2}, 'c': ['x', 'y']}
        >>> apply_overrides({"s": [{"t": 1}, {"t": 2}]}, ["s.1.t=3"])
        {'s': [{'t': 1}, {'t': 3}]}
    """
    data = copy.deepcopy(data)
    for item in overrides:
        delete = item.startswith("~")
        if delete:
            key, value = item[1:], None
        elif "=" in item:
            key, raw = item.split("=", 1)
            try:
                value = yaml.safe_load(raw) if raw else ""
            except yaml.YAMLError as e:
                raise ConfigError(yaml_problem(e, f"override {item!r}").replace("YAML", "a YAML value")) from e
        else:
            raise ConfigError(f"override {item!r}: expected key=value or ~key")
        parts = key.split(".")
        node: Any = data
        for depth, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[_index(node, p, item, ".".join(parts[:depth]))]
                continue
            if not isinstance(node.get(p), (dict, list)):
                if delete:
                    raise ConfigError(f"override {item!r}: {p!r} does not exist")
                node[p] = {}
            node = node[p]
        last = parts[-1]
        if isinstance(node, list):
            i = _index(node, last, item, ".".join(parts[:-1]))
            if delete:
                del node[i]
            else:
                node[i] = value
        elif delete:
            if last not in node:
                raise ConfigError(f"override {item!r}: {key!r} does not exist")
            del node[last]
        else:
            node[last] = value
    return data


def _index(node: list[Any], part: str, item: str, where: str) -> int:
    if not re.fullmatch(r"-?\d+", part):
        raise ConfigError(f"override {item!r}: {where} is a list; index it with a number, not {part!r}")
    i = int(part)
    if not -len(node) <= i < len(node):
        raise ConfigError(f"override {item!r}: {where} has {len(node)} item(s), no index {i}")
    return i
