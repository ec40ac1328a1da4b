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

import json
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
    f = item.function[0] if item.function else {"name": "lookup", "parameters": {"properties": {"query": {}}}}
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


def relevance_cases(item: Any) -> list[Case]:
    """Replies to a relevance item: BFCL's runner passes any reply that decodes into a call."""
    f = item.function[0]
    call = call_text(f["name"], {})
    return [Case(item.id, "call", f"[{call}]", True, True),
            Case(item.id, "empty_list", "[]", False, False),
            Case(item.id, "refusal", "None of the provided functions can be used.", False, False),
            Case(item.id, "truncated_call", f"[{call}"[:-2], False, False)]


def cases(items: list[Any]) -> list[Case]:
    out: list[Case] = []
    for it in items:
        if "irrelevance" in it.category:
            out += irrelevance_cases(it)
        elif "relevance" in it.category:
            out += relevance_cases(it)
        else:
            out += ast_cases(it)
    return out


# ---- replies of every odd shape, for agreement with BFCL's own code (no derived verdict) ---------------

DUMMY = {"string": "x", "any": "x", "integer": 1, "float": 1.5, "boolean": True, "array": [], "tuple": [],
         "dict": {}}


def base_calls(item: Any) -> list[tuple[str, dict[str, Any]]]:
    """Calls to mimic: the possible answer's first acceptable values (whether or not they pass), or
    for (ir)relevance items a call of the first function with a plain value per required parameter."""
    if item.ground_truth:
        return [(n, {p: build(v) for p, v in a.items() if first(v) != ""})
                for d in item.ground_truth for n, a in d.items()]
    if not item.function:
        return [("lookup", {"query": "x"})]
    f = item.function[0]
    props = f["parameters"].get("properties", {})
    return [(f["name"], {p: DUMMY.get(props.get(p, {}).get("type", "string"), "x")
                         for p in f["parameters"].get("required", [])})]


def _args(args: dict[str, Any], override: dict[str, str] | None = None, extra: str = "") -> str:
    parts = [f"{k}={(override or {}).get(k, repr(v))}" for k, v in args.items()]
    return ", ".join([*([extra] if extra else []), *parts])


def exotic_cases(items: list[Any], every: int = 4) -> list[tuple[str, str, str]]:
    """(item id, kind of change, reply) for replies a model may give that BFCL's decoder and checker
    treat in their own ways: odd whitespace and fences, parenthesized and dotted calls, exotic
    literals (bytes, complex, lone surrogates, huge integers), expressions BFCL evaluates (calls
    and names inside arithmetic), `**kwargs`, positional arguments, sets, lambdas, subscripts,
    nested calls, prose and JSON. Their verdicts come from running BFCL's own code."""
    out: list[tuple[str, str, str]] = []
    for i, it in enumerate(items):
        mine: list[tuple[str, str, str]] = []
        calls = base_calls(it)
        text = listing(calls)
        inner = text[1:-1]
        name, args = calls[0]
        rest = ", ".join(call_text(n, a) for n, a in calls[1:])

        def with_first(head: str, body: str, _rest: str = rest) -> str:
            return "[" + f"{head}({body})" + (", " + _rest if _rest else "") + "]"

        def add(change: str, reply: str, _id: str = it.id, _mine: list[tuple[str, str, str]] = mine) -> None:
            _mine.append((_id, change, reply))

        for ws in ("\t", " \t", "\n\t ", "\r\n", "\u00a0", "\u3000", "\t\n"):
            add(f"lead_ws:{ws!r}", ws + text)
            add(f"lead_ws_bare:{ws!r}", ws + inner)
        add("trail_ws", text + " \t\n")
        add("crlf_inside", text.replace(", ", ",\r\n"))
        add("fence_python", "```python\n" + text + "\n```")
        add("fence_json", "```json\n" + inner + "```")
        add("quoted", "'" + text + "'")
        add("tuple_of_calls", "(" + inner + ",)")
        add("set_of_calls", "{" + inner + "}")
        add("paren_call", with_first(f"({name})", _args(args)))
        add("double_paren_call", with_first(f"(({name}))", _args(args)))
        add("bare_paren_call", f"({name})({_args(args)})")
        add("tab_paren_call", f"\t({name})({_args(args)})")
        add("dotted_paren_call", with_first(f"(functions.{name})", _args(args)))
        if "." in name:
            head, tail = name.rsplit(".", 1)
            add("dotted_inner_paren", with_first(f"({head}).{tail}", _args(args)))
        add("call_of_call", with_first(f"{name}()", _args(args)))
        add("subscript_head", with_first(f"tools[0].{name}", _args(args)))
        add("positional_extra", with_first(name, _args(args, extra="1, 'x'")))
        add("kwargs", with_first(name, _args(args, extra="**{'zz': 1}")))
        add("kwargs_name", with_first(name, _args(args, extra="**opts")))
        add("list_concat", "[" + call_text(name, args) + "] + [" + call_text(name, args) + "]")
        add("two_lists", "[" + call_text(name, args) + "], [" + call_text(name, args) + "]")
        add("prose_then_call", "Sure: " + text)
        add("call_then_prose", text + " Let me know.")
        add("json_call", json.dumps({"name": name, "arguments": {}}))
        add("tool_call_tag", "<tool_call>" + text + "</tool_call>")
        add("truncated_mid", text[: max(1, len(text) // 2)])
        add("empty", "")
        add("none", "None")
        add("empty_list", "[]")
        add("empty_call_list", "[[]]")
        add("lone_surrogate_prose", "I cannot answer \ud800 this.")
        add("nul_byte", text + "\x00")
        exprs = {
            "int_sum": "2 + 3", "float_expr": "1.5 * 2", "pos_unary": "+5", "not_unary": "not 1", "invert": "~3",
            "neg_neg": "--4", "neg_float": "-2.5", "neg_bool": "-True", "big_pow": "2 ** 1200", "huge_pow": "2 ** 20000",
            "neg_pow": "2 ** -2", "div_zero": "1 / 0", "abs_call": "abs(-3) + 1", "abs_plus0": "abs(120) + 0",
            "round_call": "round(2.567, 2) * 1", "len_call": "len('abc') + 0", "max_call": "max(1, 7) - 0",
            "name_plus": "x + 1", "const_name": "pi * 2", "builtin_name": "len + 1", "module_attr": "math.pi * 2",
            "bfcl_global": "json + 1", "str_concat": "'ab' + 'cd'", "str_mul": "'ab' * 3", "list_mul": "[1] * 3",
            "list_concat": "[1, 2] + [3]", "tuple_add": "(1,) + (2,)", "subscript_expr": "[1, 2][0] + 0",
            "str_mod": "'%d' % 5", "complex_add": "1 + 2j", "bytes_add": "b'a' + b'b'", "set_or": "{1} | {2}",
            "dict_or": "{'a': 1} | {'b': 2}", "int_str": "int('7') + 0", "str_int_add": "'a' + 1",
            "call_kw_in_expr": "round(number=2.5) + 0", "nested_call_expr": "abs(abs(-2)) * 2",
            "print_call": "print(1) + 1", "compare": "1 < 2", "boolop": "True and False", "ifexp": "1 if True else 2",
            "fstring": "f'{1}'", "bytes": "b'abc'", "complex": "3j", "neg_complex": "-1j",
            "surrogate": "'\\ud800x'", "surrogate_pair_ok": "'\\ud83d\\ude00'", "escape_nl": "'a\\nb'",
            "set_value": "{1, 2}", "lambda": "lambda: 1", "tuple_value": "(1, 2)", "nested_tuple": "((1, 2), [3])",
            "dict_tuple_key": "{(1, 2): 3}", "dict_int_key": "{1: 'a'}", "dict_none_key": "{None: 1}",
            "dict_list_key": "{[1]: 2}", "dict_splat": "{**{'a': 1}}", "subscript": "x[0]", "slice": "x[1:2]",
            "attr": "obj.attr", "nested_kw_call": "g(y=1)", "nested_pos_call": "g(1)", "ellipsis": "...",
            "none_value": "None", "starred_list": "[*[1, 2]]", "walrus": "(y := 3)", "listcomp": "[i for i in [1]]",
            "big_literal": "1" + "0" * 5000, "inf": "1e999", "neg_inf_expr": "-1e999 * 1", "nan_expr": "1e999 - 1e999",
            "hex": "0x1F", "underscore_int": "1_000", "float_exp": "1e3", "bool_int_add": "True + 1",
        }
        if args:
            p = next(iter(args))
            for label, expr in exprs.items():
                add(f"value:{label}", with_first(name, _args(args, override={p: expr})))
        else:
            for label in ("abs_plus0", "bytes", "complex", "surrogate", "name_plus", "big_pow"):
                add(f"value_new:{label}", with_first(name, _args({"zz": 0}, override={"zz": exprs[label]})))
        for p, v in args.items():
            if isinstance(v, str):
                add(f"str_variant:{p}", with_first(name, _args(args, override={p: repr(v.upper() + " ")})))
                add(f"str_bytes:{p}", with_first(name, _args(args, override={p: "b" + repr(v.encode('ascii', 'replace').decode())})))
            elif isinstance(v, bool):
                add(f"bool_as_int:{p}", with_first(name, _args(args, override={p: str(int(v))})))
            elif isinstance(v, int):
                add(f"int_expr:{p}", with_first(name, _args(args, override={p: f"{v - 1} + 1"})))
                add(f"int_abs:{p}", with_first(name, _args(args, override={p: f"abs({v})"})))
                add(f"int_abs_expr:{p}", with_first(name, _args(args, override={p: f"abs({v}) + 0"})))
                add(f"int_neg_unary:{p}", with_first(name, _args(args, override={p: f"+{v}"})))
            elif isinstance(v, float):
                add(f"float_expr:{p}", with_first(name, _args(args, override={p: f"{v!r} * 1"})))
                add(f"float_as_int:{p}", with_first(name, _args(args, override={p: str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)})))
            elif isinstance(v, list):
                add(f"list_as_tuple:{p}", with_first(name, _args(args, override={p: repr(tuple(v))})))
                add(f"list_expr:{p}", with_first(name, _args(args, override={p: f"{v!r} + []"})))
            elif isinstance(v, dict):
                add(f"dict_expr:{p}", with_first(name, _args(args, override={p: f"{v!r} | {{}}"})))
        # every `every`-th change of each item, the window turning with the item: every change is
        # made on many items of every category without the product of both
        out += [c for j, c in enumerate(mine) if (i + j) % every == 0]
    return out
