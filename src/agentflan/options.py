"""Checking what a user typed against what the target accepts, before any work starts.

Reader options, step and recipe keys and training overrides are all checked against the target's
own signature or config class, so a typo (`dfs_retries` as `dfs_retires`, `trl.max_step`) is an
error naming the key and the closest valid ones when the command starts (and in `--dry-run`),
not a `TypeError` after the data was read or the model was loaded.
"""

from __future__ import annotations

import difflib
import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from agentflan.errors import ConfigError


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`"; did you mean x, y?"` for the choices closest to `name`, or `""`.

    Examples:
        >>> did_you_mean("max_step", ["max_steps", "seed"])
        '; did you mean max_steps?'
        >>> did_you_mean("zzz", ["max_steps"])
        ''
    """
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def keyword_parameters(target: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The keyword arguments `target` (a class or a function) accepts, following `**kwargs` up the MRO.

    A subclass `__init__(self, *, task=None, **kwargs)` that forwards `**kwargs` to its base accepts
    the base's keywords too, so the classes are walked until one takes no `**kwargs`.
    """
    funcs: list[Callable[..., Any]] = []
    if inspect.isclass(target):
        funcs = [c.__dict__["__init__"] for c in target.__mro__ if "__init__" in c.__dict__ and c is not object]
    else:
        funcs = [target]
    out: dict[str, inspect.Parameter] = {}
    for fn in funcs:
        params = list(inspect.signature(fn).parameters.values())
        for p in params:
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self":
                out.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return out


def _hints(target: Callable[..., Any]) -> dict[str, Any]:
    hints: dict[str, Any] = {}
    funcs = ([c.__dict__["__init__"] for c in reversed(target.__mro__) if "__init__" in c.__dict__]
             if inspect.isclass(target) else [target])
    for fn in funcs:
        try:
            hints.update(typing.get_type_hints(fn))
        except (NameError, TypeError):  # an annotation that cannot be resolved: checked by name only
            continue
    return hints


def check_kwargs(target: Callable[..., Any], options: dict[str, Any], *, what: str,
                 reserved: dict[str, str] | None = None) -> dict[str, Any]:
    """Check `options` against `target`'s keyword parameters (names and annotated types).

    Args:
        target: The class or function the options will be passed to.
        options: The user's options.
        what: How to name them in errors (`"reader option"`, `"sources.tb.options"`).
        reserved: Keywords the caller sets itself, with what to use instead.

    Returns:
        The options with values coerced to the annotated types (`"true"` -> `True`).

    Raises:
        ConfigError: Every unknown or ill-typed option, each with the valid names.
    """
    if not options:  # nothing to check: no signature to read (every `convert` and `read` asks)
        return {}
    params = keyword_parameters(target)
    hints = _hints(target)
    reserved = reserved or {}
    problems: list[str] = []
    out: dict[str, Any] = {}
    valid = sorted(k for k in params if k not in reserved)
    for key, value in options.items():
        if key in reserved:
            problems.append(f"{what} {key!r} is set by {reserved[key]}")
            continue
        if key not in params:
            problems.append(f"unknown {what} {key!r} (valid: {', '.join(valid) or 'none'}){did_you_mean(key, valid)}")
            continue
        hint = hints.get(key)
        if hint is None:
            out[key] = value
            continue
        try:
            out[key] = TypeAdapter(hint).validate_python(value)
        except ValidationError as e:
            problems.append(f"{what} {key}={value!r}: {e.errors()[0]['msg']}")
    if problems:
        raise ConfigError("; ".join(problems) if len(problems) == 1 else
                          f"{len(problems)} problems:\n  " + "\n  ".join(problems))
    return out


def validation_problems(e: ValidationError, model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    """One `key.path: message` line per error, with "did you mean" for unknown keys of `model`."""
    lines = []
    for err in e.errors():
        loc = [str(p) for p in err["loc"]]
        path = ".".join([prefix, *loc] if prefix else loc)
        msg = err["msg"].removeprefix("Value error, ")  # pydantic's prefix to a validator's own message
        if err["type"] == "extra_forbidden" and model is not None:
            fields = _fields_at(model, loc[:-1])
            if fields:
                msg = f"unknown key (valid: {', '.join(sorted(fields))}){did_you_mean(loc[-1], fields)}"
        lines.append(f"{path}: {msg}")
    return lines


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    """Field names of the pydantic model found at `loc` inside `model` (empty when not a model)."""
    current: Any = model
    for part in loc:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if origin in (dict, list):  # a mapping key or a list index: step into the value type
            current = typing.get_args(current)[-1]
            continue
        if not (inspect.isclass(current) and issubclass(current, BaseModel)):
            return []
        info = current.model_fields.get(part) or next(
            (f for f in current.model_fields.values() if f.alias == part), None)
        if info is None:
            return []
        current = info.annotation
    current = _unwrap(current)
    if inspect.isclass(current) and issubclass(current, BaseModel):
        return [f.alias or name for name, f in current.model_fields.items()]
    return []


def _unwrap(annotation: Any) -> Any:
    """`X` from `X | None` and `Annotated[X, ...]`; unions of several models stay as they are."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and len(args) == 1:
        return _unwrap(args[0])
    return annotation
