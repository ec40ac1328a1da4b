"""Data recipes: YAML validated into typed models, every error reported at once with its key path.

A recipe names its `sources` (a reader and paths each), its `outputs` (each a list of steps over
some sources, or a `negatives` generator) and how to `mix` them into one training file. Strings
may use `${var}` from the `vars:` section; `base:` includes another recipe (packaged name or
path) under this one; command-line overrides are dotted `key=value` pairs (`~key` deletes).
"""

from __future__ import annotations

import copy
import importlib.resources
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentflan.errors import ConfigError
from agentflan.io import check_reader_options
from agentflan.io.readers import READERS
from agentflan.io.writers import WRITERS
from agentflan.options import did_you_mean, validation_problems
from agentflan.overrides import apply_overrides, load_yaml_file
from agentflan.pipeline.base import STEPS, Step, StepSpec
from agentflan.pipeline.executor import EXECUTORS
from agentflan.pipeline.negatives import NegativesConfig, teacher_from_env
from agentflan.pipeline.steps.decontaminate import DecontaminateConfig


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SourceConfig(_Model):
    reader: str
    paths: list[str]
    on_error: Literal["raise", "skip", "quarantine"] = "quarantine"
    options: dict[str, Any] = Field(default_factory=dict)
    """Reader options (e.g. `dfs_retries: strip`)."""
    optional: bool = False
    """When no input file matches, build with this source empty (a warning) instead of failing."""
    role: Literal["agent", "chat"] = "agent"
    """`chat` sources are general chat data: the mix balances them against the agent data."""


class StepsOutput(_Model):
    kind: Literal["steps"] = "steps"
    from_: list[str] = Field(alias="from")
    steps: list[StepSpec] = Field(default_factory=list)
    """Each written `{type: <step name>, ...config}` and held typed; see `agentflan recipes steps`."""


class NegativesOutput(_Model):
    kind: Literal["negatives"]
    chat_from: list[str]
    """General chat for `tools_not_needed`."""
    tools_from: list[str]
    """Agent sources whose offered tools form the pool of real tools."""
    queries_from: list[str]
    """Agent sources whose requests need a tool, for `no_tools_offered` (e.g. ToolBench, not QA)."""
    config: NegativesConfig = Field(default_factory=NegativesConfig)

    def sources(self) -> list[str]:
        return list(dict.fromkeys([*self.chat_from, *self.tools_from, *self.queries_from]))


Output = Annotated[StepsOutput | NegativesOutput, Field(discriminator="kind")]


class MixConfig(_Model):
    name: str = "train"
    weights: dict[str, float] = Field(default_factory=dict)
    """Repeat factor per output (0.5 halves it, 2 doubles it); unlisted outputs: 1."""
    exclude: list[str] = Field(default_factory=list)
    chat_ratio: float | None = Field(1.0, ge=0.0)
    """General chat per unit of agent data in the mix (the paper mixes 1:1); None keeps the chat
    outputs as they are."""
    eta: float | None = Field(None, gt=0.0, lt=1.0)
    """AgentTuning's mixing ratio instead of `chat_ratio`: the agent data's share of the mix
    (AgentTuning's best is 0.2, i.e. 4 units of general chat per unit of agent data)."""
    by: Literal["trained_tokens", "records"] = "trained_tokens"
    """What `chat_ratio` counts: trained tokens (approximate) or records."""
    basis: Literal["sources", "outputs"] = "sources"
    """What the general chat is measured against: the agent *sources* as read (the same for every
    arm built from the same sources, so that two arms get the same general data, as the paper's
    comparison needs), or this recipe's agent *outputs* (AgentTuning's own recipe)."""
    chat_outputs: list[str] = Field(default_factory=list)
    """Outputs that count as general chat (default: those built only from `role: chat` sources)."""

    @model_validator(mode="after")
    def _eta(self) -> MixConfig:
        if self.eta is not None:
            self.chat_ratio = (1 - self.eta) / self.eta
        return self


class DataRecipe(_Model):
    kind: Literal["data"] = "data"
    name: str
    description: str = ""
    seed: int = 17
    vars: dict[str, Any] = Field(default_factory=dict)
    sources: dict[str, SourceConfig]
    outputs: dict[str, Output]
    mix: MixConfig | None = Field(default_factory=MixConfig)
    write: list[str] = Field(default_factory=lambda: ["native", "agentflan"])
    """Writers for every output and the mix (`native` is always written: the build reads it)."""
    workers: int = Field(1, ge=1)
    executor: str = "local"
    """Where the build's tasks run (`agentflan.pipeline.executor.EXECUTORS`: local, ray)."""
    report: bool = True
    decontaminate: DecontaminateConfig | None = None
    """Drop, from every output (negatives' inputs included), the records whose request overlaps an
    evaluation set (`agentflan recipes steps`: `decontaminate`)."""

    @model_validator(mode="after")
    def _references(self) -> DataRecipe:
        problems = []
        for name, out in self.outputs.items():
            refs = out.from_ if isinstance(out, StepsOutput) else out.sources()
            problems += [f"outputs.{name}: unknown source {r!r}" for r in refs if r not in self.sources]
        if self.mix:
            known = set(self.outputs)
            problems += [f"mix: unknown output {o!r}" for o in [*self.mix.weights, *self.mix.exclude,
                                                                  *self.mix.chat_outputs] if o not in known]
        problems += [f"write: unknown writer {w!r}" for w in self.write if w not in WRITERS]
        if self.executor not in EXECUTORS:
            problems.append(f"executor: unknown executor {self.executor!r} (known: {', '.join(EXECUTORS.names())})"
                            f"{did_you_mean(self.executor, EXECUTORS.names())}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def step_entries(self, output: str) -> list[StepSpec]:
        """The steps the build runs for step output `output` (`decontaminate` first when configured)."""
        out = self.outputs[output]
        steps = out.steps if isinstance(out, StepsOutput) else []
        return [*self.decontaminate_steps(), *steps]

    def decontaminate_steps(self) -> list[StepSpec]:
        """The recipe's `decontaminate` as a step (none when not configured)."""
        return [StepSpec(type="decontaminate", config=self.decontaminate)] if self.decontaminate else []

    def steps_of(self, output: str) -> list[Step[Any]]:
        return [spec.make() for spec in self.step_entries(output)]

    def step_outputs(self) -> dict[str, StepsOutput]:
        """The outputs built by steps, by name, in recipe order."""
        return {name: out for name, out in self.outputs.items() if isinstance(out, StepsOutput)}

    def negatives_outputs(self) -> dict[str, NegativesOutput]:
        """The `negatives` outputs, by name, in recipe order."""
        return {name: out for name, out in self.outputs.items() if isinstance(out, NegativesOutput)}

    def used_sources(self) -> set[str]:
        """The sources some output reads."""
        return {s for o in self.outputs.values() for s in (o.from_ if isinstance(o, StepsOutput) else o.sources())}

    def agent_outputs(self) -> list[str]:
        """The step outputs that hold agent data in the mix (not chat, not negatives, not excluded)."""
        excluded = set(self.mix.exclude) if self.mix else set()
        chat = self.chat_outputs()
        return [n for n, o in self.outputs.items() if isinstance(o, StepsOutput) and n not in chat
                and n not in excluded]

    def chat_outputs(self) -> set[str]:
        if self.mix and self.mix.chat_outputs:
            return set(self.mix.chat_outputs)
        return {name for name, out in self.outputs.items() if isinstance(out, StepsOutput)
                and all(self.sources[s].role == "chat" for s in out.from_)}


def packaged_recipes() -> dict[str, Path]:
    root = importlib.resources.files("agentflan") / "recipes" / "data"
    return {p.name.removesuffix(".yaml"): Path(str(p)) for p in root.iterdir() if p.name.endswith(".yaml")}


def _resolve_path(ref: str, relative_to: Path | None) -> Path:
    if relative_to is not None and (relative_to / ref).exists():
        return relative_to / ref
    if Path(ref).exists():
        return Path(ref)
    packaged = packaged_recipes()
    if ref in packaged:
        return packaged[ref]
    raise ConfigError(f"no recipe {ref!r}: not a file, not a packaged recipe{did_you_mean(ref, packaged)} "
                      f"(packaged: {', '.join(sorted(packaged))})")


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if path.resolve() in seen:
        raise ConfigError(f"recipe include cycle: {' -> '.join(map(str, (*seen, path)))}")
    data = load_yaml_file(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping, found {type(data).__name__}")
    base = data.pop("base", None)
    if base:
        parent = _load_yaml(_resolve_path(str(base), path.parent), (*seen, path.resolve()))
        data = _merge(parent, data)
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if v is None:  # `key: null` in a recipe that has a base removes the key
            out.pop(k, None)
        else:
            out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


_STEP_ENTRY = re.compile(r"outputs\.[^:]+?\.steps\.\d+[.:]")
_VAR = re.compile(r"\$\{([A-Za-z_][\w]*)\}")


def _interpolate(value: Any, variables: dict[str, Any], path: str, errors: list[str]) -> Any:
    if isinstance(value, str):
        whole = _VAR.fullmatch(value)
        if whole and isinstance(variables.get(whole.group(1)), list):
            return list(variables[whole.group(1)])  # a list variable used as a whole value

        def sub(m: re.Match[str]) -> str:
            if m.group(1) not in variables:
                errors.append(f"{path}: unknown variable ${{{m.group(1)}}} (vars: {', '.join(sorted(variables))})")
                return m.group(0)
            return str(variables[m.group(1)])
        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, variables, f"{path}.{k}" if path else str(k), errors) for k, v in value.items()}
    if isinstance(value, list):
        out: list[Any] = []
        for i, v in enumerate(value):
            item = _interpolate(v, variables, f"{path}[{i}]", errors)
            out.extend(item if isinstance(v, str) and isinstance(item, list) else [item])
        return out
    return value


def load_recipe(ref: str | Path, overrides: list[str] | None = None) -> tuple[DataRecipe, dict[str, Any]]:
    """Load, override, interpolate and validate a data recipe; return it and its resolved dict.

    Raises:
        ConfigError: With every problem found, each with its key path.
    """
    path = _resolve_path(str(ref), None)
    raw = _load_yaml(path)
    data = apply_overrides(raw, overrides or [])
    unknown_vars = check_var_overrides(raw, data, overrides or [])
    for src in (data.get("sources") or {}).values():
        if isinstance(src, dict) and isinstance(src.get("paths"), str):
            src["paths"] = [src["paths"]]
    for out in (data.get("outputs") or {}).values():
        if isinstance(out, dict):
            out.setdefault("kind", "steps")
    errors: list[str] = list(unknown_vars)
    variables = dict(data.get("vars") or {})
    variables.setdefault("recipe_dir", str(path.parent))
    resolved = {k: (_interpolate(v, variables, k, errors) if k != "vars" else v) for k, v in data.items()}
    errors += _check_components(resolved)
    try:
        recipe = DataRecipe.model_validate(resolved)
    except ValidationError as e:
        # a step entry's problems are reported by `_check_components`, with the entry's type named
        errors += [p for p in validation_problems(e, DataRecipe) if not _STEP_ENTRY.match(p)]
        recipe = None
    errors = list(dict.fromkeys(errors))  # the model's own reference check may repeat ours
    if len(errors) == 1:
        raise ConfigError(f"{path}: {errors[0]}")
    if errors:
        raise ConfigError(f"{path}: {len(errors)} problems in the recipe:\n  " + "\n  ".join(errors))
    assert recipe is not None
    for name, out in recipe.outputs.items():  # `teacher: auto` becomes what the environment configures
        if isinstance(out, NegativesOutput) and out.config.teacher == "auto":
            out.config.teacher = teacher_from_env()
            resolved["outputs"][name].setdefault("config", {})["teacher"] = (
                out.config.teacher.model_dump(mode="json") if out.config.teacher else None)
    return recipe, resolved


def check_var_overrides(before: dict[str, Any], after: dict[str, Any], overrides: list[str]) -> list[str]:
    """Problems with `vars.NAME=...` overrides: a name the recipe declares no variable for and no
    `${NAME}` uses is a typo (`vars.data_dri`), which would otherwise change nothing, silently."""
    declared = set(before.get("vars") or {}) | {"recipe_dir"}
    used = {m.group(1) for text in _strings({k: v for k, v in after.items() if k != "vars"}) for m in _VAR.finditer(text)}
    problems = []
    for item in overrides:
        key = item.lstrip("~").split("=", 1)[0]
        parts = key.split(".")
        if parts[0] != "vars" or len(parts) < 2 or parts[1] in declared or parts[1] in used:
            continue
        problems.append(f"{key}: unknown variable {parts[1]!r} (the recipe declares "
                        f"{', '.join(sorted(declared - {'recipe_dir'})) or 'none'}){did_you_mean(parts[1], declared)}")
    return problems


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _check_components(data: dict[str, Any]) -> list[str]:
    """Readers and steps exist and each step's arguments validate against its Config."""
    errors = []
    sources = data.get("sources") or {}
    for name, src in sources.items():
        if isinstance(src, dict):
            if "reader" not in src:
                errors.append(f"sources.{name}: no `reader` (a new source needs one; the recipe's sources: "
                              f"{', '.join(k for k, v in sources.items() if isinstance(v, dict) and 'reader' in v)})")
                continue
            try:
                READERS.get(str(src.get("reader")))
                if isinstance(src.get("options"), dict):
                    check_reader_options(str(src["reader"]), src["options"], what="option")
            except ConfigError as e:
                key = "reader" if str(src.get("reader")) not in READERS else "options"
                errors.append(f"sources.{name}.{key}: {e}")
    for name, out in (data.get("outputs") or {}).items():
        if isinstance(out, dict):
            refs = [r for key in ("from", "chat_from", "tools_from", "queries_from") for r in out.get(key) or []]
            errors += [f"outputs.{name}: unknown source {r!r} (sources: {', '.join(sources)})"
                       for r in refs if r not in sources]
    for name, out in (data.get("outputs") or {}).items():
        if not isinstance(out, dict) or out.get("kind", "steps") != "steps":
            continue
        for i, entry in enumerate(out.get("steps") or []):
            where = f"outputs.{name}.steps[{i}]"
            if not isinstance(entry, dict) or "type" not in entry:
                errors.append(f"{where}: each step is a mapping with a `type`")
                continue
            args = {k: v for k, v in entry.items() if k != "type"}
            try:
                cls = STEPS.get(str(entry["type"]))
                cls.Config.model_validate(args)
            except ConfigError as e:
                errors.append(f"{where}.type: {e}")
            except ValidationError as e:
                errors += validation_problems(e, cls.Config, where)
    return errors
