"""The layers hold: no module imports a layer above its own or a sibling beside it, and no module
import cycle exists, lazy imports (inside functions) and `TYPE_CHECKING` imports included.

The plan (AGENTS.md, "Layering"), lowest first; a layer's parts are siblings that do not import
each other:

    core -> schema -> formats -> io | client -> envs | samples -> pipeline -> training -> models
    -> eval | serve -> rl -> cli

Every module under src/agentflan is read with `ast` (never imported), so the test is fast and
sees imports that only run inside a function.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

LAYERS: list[dict[str, tuple[str, ...]]] = [
    # helpers every layer may use: errors, option checks, the registry, record fields, seeded
    # randomness, YAML overrides, versions, append-only logs, fingerprints, token counting
    {"core": ("agentflan.errors", "agentflan.options", "agentflan.registry", "agentflan.fields",
              "agentflan.seeds", "agentflan.overrides", "agentflan.versions", "agentflan.jsonlog",
              "agentflan.fingerprint", "agentflan.tokens", "agentflan.recipes")},
    # the one schema, its statistics and its plain-text rendering; the package itself re-exports it
    {"schema": ("agentflan.schema", "agentflan.stats", "agentflan.render", "agentflan")},
    {"formats": ("agentflan.formats",)},
    {"io": ("agentflan.io",), "client": ("agentflan.client",)},
    {"envs": ("agentflan.envs",), "samples": ("agentflan.samples",)},
    {"pipeline": ("agentflan.pipeline",)},
    {"training": ("agentflan.training",)},
    {"models": ("agentflan.models",)},
    {"eval": ("agentflan.eval",), "serve": ("agentflan.serve", "agentflan.vllm_parser")},
    # reinforcement learning: rollouts through models' lockstep driver, episodes from envs and eval's suites
    {"rl": ("agentflan.rl",)},
    {"cli": ("agentflan.cli",)},
]


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    file: Path
    line: int

    def where(self) -> str:
        shown = self.file.relative_to(SRC.parent) if self.file.is_relative_to(SRC.parent) else self.file
        return f"{shown}:{self.line}"


def modules() -> dict[str, Path]:
    """Every module under src/agentflan by dotted name (a package by its own name)."""
    out = {}
    for path in sorted((SRC / "agentflan").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The module `name` refers to (`pkg.mod.attr` -> `pkg.mod`); None outside agentflan."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str, path: Path, known: dict[str, Path]) -> list[Edge]:
    """Every agentflan module `name` imports, wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{a.name}" for a in node.names]  # `from pkg import mod` imports pkg.mod
        for target in targets:
            if target.split(".")[0] != "agentflan":
                continue
            found = _resolve(target, known)
            if found is not None and found != name:
                edges.append(Edge(name, found, path, node.lineno))
    return edges


def layer_of(module: str) -> tuple[int, str]:
    """(rank, part) of a module: the longest prefix listed in `LAYERS` decides."""
    best: tuple[int, int, str] | None = None
    for rank, parts in enumerate(LAYERS):
        for part, prefixes in parts.items():
            for prefix in prefixes:
                inside = module == prefix or module.startswith(prefix + ".")
                if inside and (best is None or len(prefix) > best[0]):
                    best = (len(prefix), rank, part)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/unit/test_layers.py")
    return best[1], best[2]


def graph() -> list[Edge]:
    known = modules()
    return [e for name, path in known.items() for e in imports(name, path, known)]


def violations(edges: list[Edge]) -> list[str]:
    """One line per upward or sideways import: file:line, the modules and both layers."""
    out = []
    for e in edges:
        (src_rank, src_part), (dst_rank, dst_part) = layer_of(e.source), layer_of(e.target)
        if dst_rank > src_rank:
            out.append(f"{e.where()}: {e.source} ({src_part}) imports {e.target} ({dst_part}), a layer above")
        elif dst_rank == src_rank and dst_part != src_part:
            out.append(f"{e.where()}: {e.source} ({src_part}) imports {e.target} ({dst_part}), a sibling beside it")
    return out


def cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected group of modules (Tarjan)."""
    nexts: dict[str, list[Edge]] = {}
    for e in edges:
        nexts.setdefault(e.source, []).append(e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for e in nexts.get(v, []):
            if e.target not in index:
                visit(e.target)
                low[v] = min(low[v], low[e.target])
            elif e.target in on_stack:
                low[v] = min(low[v], index[e.target])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(nexts):
        if v not in index:
            visit(v)
    out = []
    for group in groups:  # a path from the group's first module back to it, inside the group
        start = min(group)
        path: list[Edge] = []
        seen = {start}

        def walk(v: str, path: list[Edge] = path, seen: set[str] = seen, start: str = start,
                 group: set[str] = group) -> bool:
            for e in nexts.get(v, []):
                if e.target == start:
                    path.append(e)
                    return True
                if e.target in group and e.target not in seen:
                    seen.add(e.target)
                    path.append(e)
                    if walk(e.target):
                        return True
                    path.pop()
            return False

        walk(start)
        out.append(path)
    return out


def describe(cycle: list[Edge]) -> str:
    return "import cycle: " + " -> ".join(f"{e.source} ({e.where()})" for e in cycle) + f" -> {cycle[0].source}"


def test_every_module_has_a_layer():
    for name in modules():
        layer_of(name)


def test_no_upward_or_sideways_import():
    problems = violations(graph())
    assert not problems, "imports against the layers (AGENTS.md, Layering):\n" + "\n".join(problems)


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "\n".join(describe(c) for c in found)


def test_the_checks_catch_what_they_must(tmp_path):
    """The checks themselves: an upward, a sideways and a lazy import, and a cycle, are reported."""
    known = modules()
    fake = tmp_path / "fake.py"
    fake.write_text("from agentflan.eval.score import x\n\ndef f():\n    import agentflan.serve\n", encoding="utf-8")
    edges = imports("agentflan.eval.fake", fake, known)
    assert [(e.target, e.line) for e in edges] == [("agentflan.eval.score", 1), ("agentflan.serve", 4)]
    assert len(violations(edges)) == 1 and "a sibling beside it" in violations(edges)[0]
    up = tmp_path / "up.py"
    up.write_text("def f():\n    from agentflan.cli.main import cli\n", encoding="utf-8")
    found = violations(imports("agentflan.formats.up", up, known))
    assert len(found) == 1 and "(formats) imports agentflan.cli.main (cli), a layer above" in found[0]
    a, b = Edge("agentflan.x", "agentflan.y", fake, 1), Edge("agentflan.y", "agentflan.x", fake, 2)
    assert [[e.line for e in c] for c in cycles([a, b])] == [[1, 2]]
    assert cycles([a]) == []


@pytest.mark.parametrize(("module", "layer"), [
    ("agentflan.models.engines", "models"), ("agentflan.serve", "serve"), ("agentflan.io.charts", "io"),
    ("agentflan.seeds", "core"), ("agentflan", "schema"), ("agentflan.cli.main", "cli"),
    ("agentflan.rl.rollout", "rl"), ("agentflan.cli.launch", "cli"),
])
def test_layer_of(module, layer):
    assert layer_of(module)[1] == layer
