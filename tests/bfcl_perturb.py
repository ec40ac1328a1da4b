"""Perturbed predictions of BFCL's public data, each with the verdict derived by reading BFCL's checker.

For every item of the simple, multiple, parallel and irrelevance files, predictions are made from
the possible answer and changed in one known way; the expected verdict of each kind of change is
derived from the rules of gorilla's `ast_checker.py` and `eval_runner.py` (written out below), not
from agentflan's checker. A change is made only where its precondition holds, so that the
derivation is unambiguous (e.g. a "wrong value" must not be another acceptable value).

Each case carries two expected verdicts: `valid` (agentflan's rules) and `official` (what BFCL's
runner says); they differ only where agentflan is stricter on purpose (an unparseable reply to an
irrelevance item is a failure here, an abstention there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

CLEAN = {"string": (str,), "any": (str,), "integer": (int,), "float": (float, int), "boolean": (bool,),
         "array": (list,), "tuple": (list,), "dict": (dict,)}
ITEM = {"string": str, "integer": int, "float": float, "boolean": bool, "array": list, "dict": dict}


@dataclass(frozen=True)
class Case:
    item_id: str
    change: str
    result: str
    valid: bool
    official: bool


def std(s: str) -> str:
    return re.sub(r"[ ,./\-_*^]", "", s).lower().replace("'", '"')


def first(vals: list[Any]) -> Any:
    return next((v for v in vals if v != ""), "")


def clean(value: Any, doc: dict[str, Any]) -> bool:
    """The value has exactly the documented type (ints allowed for floats), array items exactly the
    item type: then no "variable" or nested-type rule applies and the value checks by value."""
    t = doc.get("type")
    if t not in CLEAN or type(value) not in CLEAN[t] or (t != "boolean" and type(value) is bool):
        return False
    if t in ("array", "tuple"):
        it = ITEM.get(doc.get("items", {}).get("type", ""))
        return it is not None and all(type(v) is it for v in value)
    return True


def build(vals: list[Any]) -> Any:
    """The first acceptable value; dicts (and lists of dicts) built from their first acceptable values."""
    v = first(vals)
    if isinstance(v, dict):
        return {k: first(x) for k, x in v.items() if "" not in x}
    if isinstance(v, list) and v and all(isinstance(d, dict) for d in v):
        return [{k: first(x) for k, x in d.items() if "" not in x} for d in v]
    return v


def gold_call(name: str, answers: dict[str, list[Any]], doc: dict[str, Any], full: bool = False) -> dict[str, Any] | None:
    """Arguments that pass: every non-optional (or required) parameter with its first acceptable
    value, optional ones too when `full`; None when no such call is certain to pass."""
    props = doc["parameters"]["properties"]
    required = set(doc["parameters"].get("required", []))
    if not required <= set(answers):
        return None  # a required parameter without an acceptable value: nothing passes
    args = {}
    for p, vals in answers.items():
        optional = "" in vals
        if optional and p not in required and not full:
            continue
        if first(vals) == "":
            if p in required:
                return None
            continue
        if p not in props:
            return None  # would be an unexpected parameter
        value = build(vals)
        if not clean(value, props[p]):
            if optional and p not in required:
                continue
            return None
        args[p] = value
    return args


def call_text(name: str, args: dict[str, Any]) -> str:
    return f"{name}(" + ", ".join(f"{k}={v!r}" for k, v in args.items()) + ")"


def listing(calls: list[tuple[str, dict[str, Any]]]) -> str:
    return "[" + ", ".join(call_text(n, a) for n, a in calls) + "]"


def _docs(item: Any) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in item.function}


def ast_cases(item: Any) -> list[Case]:
    """Changes of one AST item's gold prediction, each with its derived verdict (valid == official)."""
    docs = _docs(item)
    expected = [(next(iter(d)), next(iter(d.values()))) for d in item.ground_truth]
    golds = [gold_call(n, a, docs[n]) for n, a in expected]
    if any(g is None for g in golds):
        return []
    calls = [(n, g) for (n, _), g in zip(expected, golds, strict=True) if g is not None]
    out: list[Case] = []

    def add(change: str, text: str, valid: bool) -> None:
        out.append(Case(item.id, change, text, valid, valid))

    parallel = "parallel" in item.category
    # the first call is changed below: in a parallel item that is certain to fail only when no other
    # gold call can stand in for it
    single = not parallel or _distinct(expected, docs)
    # every parameter checks; optional ones may be absent (`""` acceptable) -> valid
    add("gold", listing(calls), True)
    # a reply in a Markdown fence: BFCL strips backticks and newlines first -> valid
    add("fenced", "```\n" + listing(calls) + "\n```", True)
    full = [gold_call(n, a, docs[n], full=True) for n, a in expected]
    if all(f is not None for f in full) and list(full) != [g for _, g in calls]:
        add("optional_given", listing([(n, f) for (n, _), f in zip(expected, full, strict=True) if f is not None]), True)
    name, args = calls[0]
    answers = expected[0][1]
    props = docs[name]["parameters"]["properties"]
    required = docs[name]["parameters"].get("required", [])
    rest = calls[1:]

    def variant(new_args: dict[str, Any], first_name: str = name) -> str:
        return listing([(first_name, new_args), *rest])

    if single:
        single_call_changes(add, variant, name, args, answers, props, required)
    if parallel:
        if len(calls) >= 2:
            # as many calls as expected -> a missing or a duplicated call is invalid
            add("call_missing", listing(calls[:-1]), False)
            add("call_duplicated", listing([*calls, calls[0]]), False)
            if _distinct(expected, docs):
                # any order: each expected call is matched by the call made for it -> valid
                add("reordered", listing(calls[::-1]), True)
    else:
        # simple and multiple expect exactly one call -> two are invalid
        add("extra_call", listing([calls[0], calls[0]]), False)
        others = [n for n in docs if n != name]
        if others:
            # multiple: a call to another offered function -> invalid
            add("other_function", listing([(others[0], args)]), False)
    # a reply that does not decode (cut short) -> invalid (BFCL: decoder failed)
    add("truncated", listing(calls)[:-2], False)
    # prose: "[" + text + "]" does not decode -> invalid
    add("prose", "I would need to think about which function to use here.", False)
    return out


def single_call_changes(add: Any, variant: Any, name: str, args: dict[str, Any], answers: dict[str, list[Any]],
                        props: dict[str, Any], required: list[str]) -> None:
    """Changes of the first call alone (its name, its parameters, one value at a time)."""
    # the function name must be the expected one -> invalid
    add("wrong_name", variant(args, name + "_x"), False)
    # every required parameter must be there -> invalid
    present_required = [p for p in required if p in args]
    if present_required:
        add("missing_required", variant({k: v for k, v in args.items() if k != present_required[0]}), False)
    # a parameter not in the documentation (and not in the possible answer) -> invalid
    add("unexpected_param", variant({**args, "zz_unknown": 1}), False)
    for p, v in args.items():
        t = props[p]["type"]
        acceptable = [a for a in answers[p] if a != ""]
        if t == "string" and isinstance(v, str) and v.isascii() and v.upper().replace(" ", "_") != v:
            # strings compare standardized: case, spaces and ,./-_*^ do not matter -> valid
            add("string_variant", variant({**args, p: v.upper().replace(" ", "_")}), True)
        if t == "string" and isinstance(v, str):
            new = v + " qz"
            if std(new) not in {std(a) for a in acceptable if isinstance(a, str)}:
                # a string no acceptable value standardizes to -> invalid
                add("wrong_string", variant({**args, p: new}), False)
        if t == "integer" and type(v) is int and all(type(a) is int for a in acceptable):
            # another integer -> invalid; the same number as a float: exact types, no float for an int -> invalid
            add("wrong_int", variant({**args, p: max(acceptable) + 17}), False)
            add("float_for_int", variant({**args, p: float(v)}), False)
            # a string of the number: neither the documented type nor the answers' type -> invalid
            add("string_for_int", variant({**args, p: str(v)}), False)
        if t == "float" and type(v) is float and all(type(a) is float for a in acceptable):
            if v.is_integer() and abs(v) < 1e15:
                # an int for a float is converted (`float(v)`) and compares equal -> valid
                add("int_for_float", variant({**args, p: int(v)}), True)
            bumped = v + 1.5
            if bumped not in acceptable:
                add("wrong_float", variant({**args, p: bumped}), False)
        if t == "boolean" and type(v) is bool and (not v) not in acceptable:
            add("wrong_bool", variant({**args, p: not v}), False)
        if t in ("array", "tuple") and isinstance(v, list) and len(v) >= 2 and v[::-1] != v \
                and v[::-1] not in [a for a in acceptable if isinstance(a, list)] and all(not isinstance(x, (dict, list)) for x in v) \
                and not any(isinstance(x, str) for x in v):
            # lists compare element-wise in order -> invalid
            add("list_reordered", variant({**args, p: v[::-1]}), False)


def _distinct(expected: list[tuple[str, dict[str, list[Any]]]], docs: dict[str, Any]) -> bool:
    """Every two expected calls differ by name, or by a parameter required in both whose acceptable
    values share nothing: then no gold call can be taken by another expected call."""
    for i, (ni, ai) in enumerate(expected):
        for nj, aj in expected[i + 1:]:
            if ni != nj:
                continue
            ok = False
            for p in set(ai) & set(aj):
                if "" in ai[p] or "" in aj[p]:
                    continue
                si = {std(x) if isinstance(x, str) else repr(x) for x in ai[p]}
                sj = {std(x) if isinstance(x, str) else repr(x) for x in aj[p]}
                if not si & sj:
                    ok = True
                    break
            if not ok:
                return False
    return True


def irrelevance_cases(item: Any) -> list[Case]:
    """Replies to an irrelevance item. BFCL's runner passes anything that does not decode into a
    non-empty call list; agentflan passes only a readable reply without a call."""
    f = item.function[0]
    params = list(f["parameters"].get("properties", {}))
    call = call_text(f["name"], {params[0]: 1} if params else {})
    prose = [Case(item.id, "call_in_prose", f"You could try {call}, but it will not answer this.", False, True)]
    return [*(prose if params else []),
        Case(item.id, "refusal", "None of the provided functions can be used for this question.", True, True),
        Case(item.id, "empty_list", "[]", True, True),
        Case(item.id, "empty_reply", "", True, True),
        Case(item.id, "call", f"[{call}]", False, False),
        Case(item.id, "truncated_call", f"[{call}"[:-2], False, True),
    ]


def cases(items: list[Any]) -> list[Case]:
    out: list[Case] = []
    for it in items:
        out += irrelevance_cases(it) if "irrelevance" in it.category else ast_cases(it)
    return out
