"""Hypothesis strategies: raw records of every reader's format (valid-shaped, then mutated), the
bytes of hostile input files, and valid trajectories for the writers.

A record strategy first builds the format's structure with adversarial text (format markers,
control characters, surrogates, very long or empty strings), then may mutate it: replace a subtree
with an arbitrary JSON value, delete or add a key. The file strategy may then corrupt each line's
bytes (truncation, invalid UTF-8, NUL, a BOM, CRLF, deep nesting, blank lines).
"""

from __future__ import annotations

import functools
import json
from typing import Any

from hypothesis import strategies as st

from agentflan.schema import Trajectory

MARKERS = [
    "", " ", "\n", "Thought: look\nAction: search[x]", "Action: Finish\nAction Input: {\"return_type\": \"give_answer\"}",
    "Thought: t\nAction: f\nAction Input: {", "Observation: y", "Begin!", "Final Answer: [\"a\"]",
    "This is not the first time you try this task, all previous trails failed.",
    "Specifically, you have access to the following APIs: [{'name': 'f', 'parameters': {}}]",
    "Specifically, you have access to the following APIs: [{\"name\": \"f\"}]",
    "<|im_end|>", "<|Human|>\u0d46", "\u0d3f", "```sql\nSELECT 1;\n```", "Action: Operation\n```sql\nSELECT 1;\n```",
    "Action: Answer\nFinal Answer: [\"1\"]", "Act: finish[x]", "Action: answer(3)", "Action: search[\n",
    "{}", "[]", "null", "\x00", "\u2028", "\ufeff", "\ud83d\ude00", "\\u0000", "'", "\"", "\\",
]
NAMES = ["f", "search", "finish", "Finish", "weather", "get_x_for_y", "answer", "lookup", "", " bad name", "a" * 80]


@functools.cache
def text(max_size: int = 20) -> st.SearchStrategy[str]:
    """Adversarial text: format markers, any printable text, and rarely control characters or
    surrogates (the latter become lone `\\ud800`-style escapes, or invalid UTF-8, in the file)."""
    return st.one_of(
        st.sampled_from(MARKERS),
        st.text(max_size=max_size),
        st.text(st.characters(exclude_categories=()), max_size=4),  # surrogates and controls included
    )


@functools.cache
def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                        st.floats(allow_nan=False, allow_infinity=False), text(10))
    return st.recursive(scalars, lambda c: st.one_of(st.lists(c, max_size=3),
                                                     st.dictionaries(text(6), c, max_size=3)),
                        max_leaves=max_leaves)


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.just(_ABSENT), strategy)


_ABSENT = object()


def obj(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """A dict of `fields`, leaving out those drawn as absent (`maybe`)."""
    return st.fixed_dictionaries(fields).map(lambda d: {k: v for k, v in d.items() if v is not _ABSENT})


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> Any:
    """`base`, or `base` with one subtree replaced, one key removed or one key added."""
    value = draw(base)
    kind = draw(st.sampled_from(["keep", "keep", "keep", "replace", "delete", "add"]))
    if kind == "keep":
        return value
    paths = list(_paths(value))
    path = draw(st.sampled_from(paths))
    return _edit(value, path, kind, draw)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Any:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _edit(value: Any, path: tuple[Any, ...], kind: str, draw: st.DrawFn) -> Any:
    if not path:
        if kind == "add" and isinstance(value, dict):
            return {**value, draw(text(6)): draw(json_values())}
        return draw(json_values()) if kind != "delete" else {}
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        out = dict(value)
        if not rest and kind == "delete":
            out.pop(head, None)
        else:
            out[head] = _edit(value[head], rest, kind, draw)
        return out
    out_list = list(value)
    if not rest and kind == "delete":
        del out_list[head]
    else:
        out_list[head] = _edit(value[head], rest, kind, draw)
    return out_list


# ---- one strategy per reader -------------------------------------------------------------------

def _args_json() -> st.SearchStrategy[Any]:
    return st.one_of(st.dictionaries(text(6), json_values(4), max_size=3).map(json.dumps), text(10),
                     st.dictionaries(text(6), json_values(4), max_size=2))


def _openai() -> st.SearchStrategy[Any]:
    call = obj(id=maybe(text(5)), type=st.just("function"),
               function=obj(name=st.sampled_from(NAMES), arguments=_args_json()))
    part = obj(type=st.sampled_from(["text", "reasoning", "tool_call", "image"]),
               text=maybe(text()), value=maybe(st.one_of(text(), json_values(3))))
    msg = obj(role=st.sampled_from(["system", "user", "assistant", "tool", "function", "developer", "robot"]),
              content=st.one_of(text(), st.none(), st.lists(part, max_size=3)),
              tool_calls=maybe(st.lists(call, max_size=2)), tool_call_id=maybe(text(5)),
              name=maybe(st.sampled_from(NAMES)), weight=maybe(st.sampled_from([0, 1])),
              function_call=maybe(obj(name=st.sampled_from(NAMES), arguments=_args_json())))
    tool = st.one_of(obj(type=st.just("function"), function=obj(name=st.sampled_from(NAMES),
                                                                description=maybe(text()),
                                                                parameters=maybe(json_values(4)))),
                     obj(name=st.sampled_from(NAMES)))
    return obj(messages=st.lists(msg, min_size=1, max_size=6), tools=maybe(st.one_of(st.lists(tool, max_size=3),
                                                                                      text())),
               id=maybe(st.one_of(text(8), st.integers())))


def _sharegpt() -> st.SearchStrategy[Any]:
    call = obj(name=st.sampled_from(NAMES), arguments=_args_json())
    turn = obj(**{"from": st.sampled_from(["human", "gpt", "system", "function_call", "observation", "user",
                                           "assistant", "tool", "bard", "nope"]),
                  "value": st.one_of(text(), call.map(json.dumps), st.lists(call, max_size=2).map(json.dumps)),
                  "loss": maybe(st.booleans())})
    return obj(conversations=st.lists(turn, min_size=1, max_size=6), system=maybe(text()),
               tools=maybe(st.one_of(text(), st.lists(obj(name=st.sampled_from(NAMES),
                                                          parameters=maybe(json_values(3))), max_size=2)
                                     .map(json.dumps))),
               id=maybe(text(5)))


def _alpaca() -> st.SearchStrategy[Any]:
    return obj(instruction=text(), input=maybe(text()), output=text(), system=maybe(text()),
               history=maybe(st.lists(st.lists(text(), min_size=2, max_size=2), max_size=2)))


def _react() -> st.SearchStrategy[Any]:
    step = st.builds(lambda t, a, x: f"Thought: {t}\nAction: {a}[{x}]", text(), st.sampled_from(NAMES), text())
    msg = obj(role=st.sampled_from(["system", "user", "assistant", "tool"]),
              content=st.one_of(step, text(), st.builds(lambda o: f"Observation: {o}", text())))
    return obj(messages=st.lists(msg, min_size=1, max_size=6), id=maybe(text(5)))


def _agentinstruct() -> st.SearchStrategy[Any]:
    value = st.one_of(text(), st.sampled_from(["Think: t\nAct: bash\n\n```bash\nls\n```", "Act: answer(3)",
                                               "Action: Operation\n```sql\nSELECT 1;\n```",
                                               "Thought: t\nAction: get_relations(Barack Obama)",
                                               "Action: search[shoes]", "Action: click[Buy Now]",
                                               "THOUGHT: x\nACTION: go to cabinet 1", "Answer: B."]))
    turn = obj(**{"from": st.sampled_from(["human", "gpt", "user", "assistant", "bot"]), "value": value,
                  "loss": maybe(st.one_of(st.booleans(), st.none()))})
    return obj(id=st.one_of(st.sampled_from(["os_1", "db_2", "kg_3", "webshop_4", "alfworld_5", "mind2web_6",
                                             "x_7"]), text(5)),
               conversations=st.lists(turn, min_size=1, max_size=6))


def _agentflan() -> st.SearchStrategy[Any]:
    msg = obj(role=st.sampled_from(["system", "user", "assistant", "tool"]), content=st.one_of(text(), st.none()),
              loss=maybe(st.one_of(st.booleans(), st.integers(0, 1))), type=maybe(text(4)))
    return obj(id=maybe(st.one_of(text(8), st.integers())), conversation=st.lists(msg, min_size=1, max_size=6))


def _fn_spec() -> st.SearchStrategy[Any]:
    return obj(name=st.sampled_from(NAMES), description=maybe(text()),
               parameters=maybe(obj(type=st.just("object"), properties=st.dictionaries(text(5), json_values(2),
                                                                                      max_size=2))))


def _toolbench() -> st.SearchStrategy[Any]:
    amsg = obj(role=st.sampled_from(["system", "user", "assistant", "function", "other"]), content=text(),
               function_call=maybe(obj(name=st.sampled_from(NAMES), arguments=_args_json().map(str))),
               name=maybe(st.sampled_from(NAMES)))
    answer = obj(answer_generation=obj(
        valid_data=st.booleans(), finish_type=st.sampled_from(["give_answer", "give_up", ""]),
        train_messages=st.lists(st.lists(amsg, min_size=1, max_size=6), min_size=1, max_size=2),
        function=maybe(st.lists(_fn_spec(), max_size=3)), query=maybe(text())))
    system = st.builds(lambda head, fns, py: f"{head}Specifically, you have access to the following APIs: "
                       + (repr(fns) if py else json.dumps(fns)), text(), st.lists(_fn_spec(), max_size=2),
                       st.booleans())
    value = st.one_of(text(), system, st.builds(lambda t, a, x: f"\nThought: {t}\nAction: {a}\nAction Input: {x}",
                                                text(), st.sampled_from(NAMES), _args_json().map(str)))
    turn = obj(**{"from": st.sampled_from(["system", "user", "assistant", "function", "x"]), "value": value})
    toolllama = obj(id=maybe(text(5)), conversations=st.lists(turn, min_size=1, max_size=6))
    return st.one_of(answer, toolllama)


def _toolbench_query() -> st.SearchStrategy[Any]:
    param = obj(name=text(5), type=maybe(st.sampled_from(["STRING", "NUMBER", "x"])), description=maybe(text()))
    api = obj(tool_name=text(8), api_name=text(8), api_description=maybe(text()), category_name=maybe(text(5)),
              required_parameters=maybe(st.lists(param, max_size=2)),
              optional_parameters=maybe(st.lists(param, max_size=2)), method=maybe(st.just("GET")))
    return obj(query=text(), query_id=maybe(st.integers(0, 10**6)), api_list=maybe(st.lists(api, max_size=3)),
               **{"relevant APIs": maybe(st.lists(st.lists(text(5), min_size=2, max_size=2), max_size=2))})


def _dbbench() -> st.SearchStrategy[Any]:
    column = obj(name=text(6), type=st.sampled_from(["TEXT", "INT"]))
    table = obj(table_name=text(6), table_info=obj(columns=st.lists(column, min_size=1, max_size=3),
                                                   rows=st.lists(st.lists(json_values(1), max_size=3), max_size=2)))
    return obj(description=text(), label=st.lists(text(5), max_size=2), table=table,
               type=st.lists(st.sampled_from(["SELECT", "INSERT", "UPDATE", "DELETE", "counting"]), min_size=1,
                             max_size=1),
               add_description=maybe(text()), answer_md5=maybe(text(8)))


def _hermes() -> st.SearchStrategy[Any]:
    fn = _fn_spec()
    tools = st.one_of(st.lists(fn, max_size=2).map(json.dumps), st.lists(fn, max_size=2).map(repr),
                      st.lists(obj(type=st.just("function"), function=fn), max_size=2).map(json.dumps), text())
    system = st.builds(lambda head, t: f"{head} <tools> </tools> <tools>{t}</tools>", text(), tools)
    call = st.one_of(obj(name=st.sampled_from(NAMES), arguments=_args_json()).map(json.dumps), text())
    gpt = st.builds(lambda pre, calls: pre + "".join(f"<tool_call>{c}</tool_call>" for c in calls), text(),
                    st.lists(call, max_size=2))
    response = st.one_of(obj(name=maybe(st.sampled_from(NAMES)), content=json_values(2)).map(json.dumps), text())
    tool = st.lists(response, max_size=2).map(lambda rs: "".join(f"<tool_response>{r}</tool_response>" for r in rs))
    turn = st.one_of(*(obj(**{"from": who, "value": value}) for who, value in
                       [(st.just("system"), system), (st.just("human"), text()), (st.just("gpt"), gpt),
                        (st.just("tool"), tool), (st.sampled_from(["user", "assistant", "bot"]), text())]))
    return obj(conversations=st.lists(turn, min_size=1, max_size=6), id=maybe(text(5)), category=maybe(text(5)))


def _xlam() -> st.SearchStrategy[Any]:
    param = obj(type=st.sampled_from(["str", "int, optional", "List[str]", "Dict[str, Any]", "float", "x"]),
                description=maybe(text()), default=maybe(json_values(1)))
    tool = obj(name=st.sampled_from(NAMES), description=maybe(text()),
               parameters=st.dictionaries(text(5), param, max_size=2))
    answer = obj(name=st.sampled_from(NAMES), arguments=st.dictionaries(text(5), json_values(2), max_size=2))
    as_text = st.booleans()
    return st.builds(lambda q, ts, ans, enc, rid: {"id": rid, "query": q,
                                                    "tools": json.dumps(ts) if enc else ts,
                                                    "answers": json.dumps(ans) if enc else ans},
                     text(), st.lists(tool, max_size=3), st.lists(answer, max_size=2), as_text,
                     st.one_of(st.integers(0, 10**6), text(5)))


def _dict(t: Trajectory) -> dict[str, Any]:
    try:
        return t.to_json_dict()
    except UnicodeEncodeError:  # pydantic's JSON mode refuses surrogates; the file gets escapes
        return t.model_dump(mode="python")


def _native() -> st.SearchStrategy[Any]:
    return trajectories().map(_dict)


@functools.cache
def records(reader: str) -> st.SearchStrategy[Any]:
    """Raw records for `reader`: its structure with adversarial text, sometimes mutated."""
    base = {"openai": _openai, "sharegpt": _sharegpt, "alpaca": _alpaca, "react": _react,
            "agentinstruct": _agentinstruct, "agentflan": _agentflan, "toolbench": _toolbench,
            "toolbench_query": _toolbench_query, "dbbench": _dbbench, "native": _native, "hermes": _hermes,
            "xlam": _xlam}[reader]()
    return mutated(base)


# ---- the bytes of a file --------------------------------------------------------------------------

DEEP = b"[" * 5000 + b"]" * 5000


@st.composite
def line_bytes(draw: st.DrawFn, record: Any) -> bytes:
    """One record as the bytes of a JSONL line, possibly corrupted."""
    ascii_only = draw(st.booleans())
    try:
        line = json.dumps(record, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")  # surrogates: bad UTF-8
    except (ValueError, RecursionError):
        line = b"{}"
    corruption = draw(st.sampled_from(["none"] * 6 + ["truncate", "bad_byte", "nul", "deep", "crlf", "garbage",
                                                      "blank", "nested_deep_value"]))
    if corruption == "truncate":
        line = line[: draw(st.integers(0, max(0, len(line) - 1)))]
    elif corruption == "bad_byte":
        at = draw(st.integers(0, len(line)))
        line = line[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"])) + line[at:]
    elif corruption == "nul":
        at = draw(st.integers(0, len(line)))
        line = line[:at] + b"\x00" + line[at:]
    elif corruption == "deep":
        line = DEEP
    elif corruption == "crlf":
        line += b"\r"
    elif corruption == "garbage":
        line = draw(st.binary(max_size=30)).replace(b"\n", b"")
    elif corruption == "blank":
        line = draw(st.sampled_from([b"", b"   ", b"\t", b"\r"]))
    elif corruption == "nested_deep_value" and isinstance(record, dict):
        line = line[:-1] + b', "zz": ' + b"[" * 300 + b"]" * 300 + b"}" if line.endswith(b"}") else line
    return line


@st.composite
def jsonl_files(draw: st.DrawFn, reader: str, max_records: int = 3) -> bytes:
    """The bytes of a JSONL file of `reader` records (maybe with a BOM), corrupted line by line."""
    recs = draw(st.lists(records(reader), min_size=1, max_size=max_records))
    lines = [draw(line_bytes(r)) for r in recs]
    bom = b"\xef\xbb\xbf" if draw(st.integers(0, 9)) == 0 else b""
    return bom + b"".join(line.replace(b"\n", b"") + b"\n" for line in lines)


# ---- valid trajectories, for the writers ----------------------------------------------------------

TOOL_NAMES = ["weather", "search", "calc", "get_x_for_y"]


@st.composite
def trajectories(draw: st.DrawFn, surrogates: bool = False) -> Trajectory:
    """A trajectory that passes `agentflan.schema.check`: requests, answers, tool calls to offered
    tools with their results, optional reasoning, loss flags, metadata; adversarial text."""
    t = text() if not surrogates else st.one_of(text(), st.just("x\ud800"))
    tool_names = draw(st.lists(st.sampled_from(TOOL_NAMES), unique=True, max_size=3))
    tools = [{"name": n, "description": draw(text()), "parameters": {"type": "object", "properties": {
        draw(st.sampled_from(["city", "q", "x"])): {"type": "string"}}}} for n in tool_names]
    messages: list[dict[str, Any]] = []
    if draw(st.booleans()):
        messages.append({"role": "system", "content": draw(t)})
    n_calls = 0
    for _ in range(draw(st.integers(1, 3))):
        messages.append({"role": "user", "content": draw(t)})
        for _ in range(draw(st.integers(0, 2)) if tool_names else 0):
            calls = []
            for _ in range(draw(st.integers(1, 2))):
                calls.append({"id": f"call_{n_calls}", "name": draw(st.sampled_from(tool_names)),
                              "arguments": draw(st.dictionaries(st.sampled_from(["city", "q", "x"]),
                                                                st.one_of(t, st.integers(), st.booleans()),
                                                                max_size=2))})
                n_calls += 1
            messages.append({"role": "assistant", "content": draw(t), "tool_calls": calls,
                             "loss": draw(st.booleans())})
            for c in calls:
                messages.append({"role": "tool", "content": draw(t), "tool_call_id": c["id"], "name": c["name"]})
        answer = {"role": "assistant", "content": "A: " + draw(t), "loss": draw(st.booleans())}
        if draw(st.booleans()):
            answer["reasoning"] = draw(t) or None
        messages.append(answer)
    meta = draw(st.dictionaries(st.sampled_from(["k", "n", "deep"]), json_values(4), max_size=2))
    return Trajectory.model_validate({
        "id": draw(st.text(min_size=1, max_size=8)), "messages": messages, "tools": tools,
        "source": {"format": "native"}, "tags": draw(st.dictionaries(st.sampled_from(["task", "kind"]),
                                                                      st.sampled_from(["os", "db", "x"]), max_size=1)),
        "metadata": meta})
