"""The action dialects of AgentInstruct's six tasks (THUDM/AgentTuning), parsed into tool calls.

Each task wrote actions in its own text dialect. A `Dialect` turns one assistant turn into a
thought plus at most one `(tool name, arguments)` pair, renders it back, and declares the task's
tool set and its terminal tools (after which a human turn is a new request, not a tool result).

| task | example action | tools |
|---|---|---|
| os | ``Think: ...\\n\\nAct: bash\\n\\n```bash\\nls\\n```` / ``Act: answer(3)`` / ``Act: finish`` | bash, answer, finish |
| db | ``...\\nAction: Operation\\n```sql\\nSELECT 1;\\n```` / ``Action: Answer\\nFinal Answer: [...]`` | operation, answer |
| kg | ``Thought: ...\\nAction: get_relations(Barack Obama)`` / ``Final Answer: #3`` | 7 KB functions, final_answer |
| webshop | ``Thought:\\n...\\n\\nAction:\\nsearch[red mug]`` / ``click[b078]`` | search, click |
| alfworld | ``Thought: ...\\nAction: take apple 1 from fridge 1`` | go_to, take, put, open, ... |
| mind2web | ``Thought: ...\\nAnswer: C.\\nAction: TYPE\\nValue: Tokyo`` | choose |
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentflan.errors import ParseError
from agentflan.formats.react import ReactStep
from agentflan.schema import ToolSpec

Parse = Callable[[str], ReactStep]
Render = Callable[[str, str | None, dict[str, Any]], str]


AGENTBENCH_DB_PROMPT = """
I will ask you a question, then you should help me operate a MySQL database with SQL to answer the question.
You have to explain the problem and your solution to me and write down your thoughts.
After thinking and explaining thoroughly, every round you can choose to operate or to answer.
your operation should be like this:
Action: Operation
```sql
SELECT * FROM table WHERE condition;
```
You MUST put SQL in markdown format without any other comments. Your SQL should be in one line.
Every time you can only execute one SQL statement. I will only execute the statement in the first SQL code block. Every time you write a SQL, I will execute it for you and give you the output.
If you are done operating, and you want to commit your final answer, then write down:
Action: Answer
Final Answer: ["ANSWER1", "ANSWER2", ...]
DO NOT write this pattern unless you are sure about your answer. I expect an accurate and correct answer.
Your answer should be accurate. Your answer must be exactly the same as the correct answer.
If the question is about modifying the database, then after done operation, your answer field can be anything.
If your response cannot match any pattern I mentioned earlier, you will be judged as FAIL immediately.
Your input will be raw MySQL response, you have to deal with it by yourself.
"""
"""AgentBench's DB task instruction (THUDM/AgentBench `dbbench`, Apache-2.0), the held-in prompt: the
`agentinstruct:db` protocol's first user turn and the system prompt of the `dbbench` reader's tasks."""


def _spec(name: str, description: str, *params: str, required: tuple[str, ...] | None = None) -> ToolSpec:
    props = {p: {"type": "string"} for p in params}
    req = list(params if required is None else required)
    return ToolSpec(name=name, description=description,
                    parameters={"type": "object", "properties": props, "required": req})


@dataclass(frozen=True)
class Dialect:
    task: str
    tools: tuple[ToolSpec, ...]
    terminal: frozenset[str]
    action_marker: re.Pattern[str]
    """If a turn matches this but `parse` finds no action, the action is malformed."""
    parse_action: Parse
    render_action: Render

    def parse(self, text: str) -> ReactStep:
        step = self.parse_action(text)
        if step.name is None and self.action_marker.search(text):
            raise ParseError(f"unparseable {self.task} action in {text[-160:]!r}",
                             reason="unparseable_action")
        return step

    def render(self, thought: str, name: str | None, arguments: dict[str, Any]) -> str:
        if name is None:
            return thought
        return self.render_action(thought, name, arguments)


def _plain(text: str) -> ReactStep:
    return ReactStep(thought=text, name=None, arguments={})


# ---- OS ----------------------------------------------------------------------------------------
_OS = re.compile(r"^(?:Think:\s?(?P<t>.*?)\s*\n)?\s*Act:\s?(?P<act>.*?)\s*\Z", re.DOTALL)
_OS_BASH = re.compile(r"^bash\s*```(?:bash|sh)?\n(?P<script>.*?)\n?```$", re.DOTALL)
_OS_ANSWER = re.compile(r"^answer\((?P<answer>.*)\)$", re.DOTALL)


def _os_parse(text: str) -> ReactStep:
    m = _OS.match(text)
    if not m:
        return _plain(text)
    thought, act = m.group("t") or "", m.group("act")
    if b := _OS_BASH.match(act):
        return ReactStep(thought, "bash", {"script": b.group("script")})
    if a := _OS_ANSWER.match(act):
        return ReactStep(thought, "answer", {"answer": a.group("answer")})
    if act == "finish":
        return ReactStep(thought, "finish", {})
    return _plain(text)


def _os_render(thought: str, name: str | None, args: dict[str, Any]) -> str:
    head = f"Think: {thought}\n\n" if thought else ""
    if name == "bash":
        return f"{head}Act: bash\n\n```bash\n{args.get('script', '')}\n```"
    if name == "answer":
        return f"{head}Act: answer({args.get('answer', '')})"
    return f"{head}Act: {name}"


# ---- DB ----------------------------------------------------------------------------------------
_DB = re.compile(
    r"^(?P<t>.*?)\s*Action:\s?(?:Operation\s*```(?:sql|SQL)?\n(?P<sql>.*?)\n?```"
    r"|Answer\s*Final Answer:\s?(?P<answer>.*?))\s*\Z", re.DOTALL)


def _db_parse(text: str) -> ReactStep:
    m = _DB.match(text)
    if not m:
        return _plain(text)
    thought = m.group("t").strip()
    if m.group("sql") is not None:
        return ReactStep(thought, "operation", {"sql": m.group("sql")})
    raw = m.group("answer")
    try:
        answer: Any = json.loads(raw)
    except json.JSONDecodeError:
        answer = raw
    return ReactStep(thought, "answer", {"answer": answer})


def _db_render(thought: str, name: str | None, args: dict[str, Any]) -> str:
    head = f"{thought}\n" if thought else ""
    if name == "operation":
        return f"{head}Action: Operation\n```sql\n{args.get('sql', '')}\n```"
    answer = args.get("answer", [])
    text = answer if isinstance(answer, str) else json.dumps(answer, ensure_ascii=False)
    return f"{head}Action: Answer\nFinal Answer: {text}"


# ---- KG ----------------------------------------------------------------------------------------
_KG_PARAMS: dict[str, tuple[str, ...]] = {
    "get_relations": ("variable",),
    "get_neighbors": ("variable", "relation"),
    "intersection": ("variable1", "variable2"),
    "get_attributes": ("variable",),
    "argmax": ("variable", "attribute"),
    "argmin": ("variable", "attribute"),
    "count": ("variable",),
}
_KG = re.compile(r"^(?:Thought:\s?(?P<t>.*?)\s*\n)?\s*(?:Action:\s?(?P<name>\w+)\((?P<args>.*)\)"
                 r"|Final Answer:\s?(?P<final>.*?))\s*\Z", re.DOTALL)


def _kg_parse(text: str) -> ReactStep:
    m = _KG.match(text)
    if not m:
        return _plain(text)
    thought = m.group("t") or ""
    if m.group("final") is not None:
        return ReactStep(thought, "final_answer", {"answer": m.group("final")})
    name = m.group("name")
    params = _KG_PARAMS.get(name)
    if params is None:
        return _plain(text)
    values = [v.strip() for v in m.group("args").split(",")] if len(params) > 1 else [m.group("args").strip()]
    if len(values) != len(params):
        raise ParseError(f"kg action {name} takes {len(params)} argument(s), got {len(values)}",
                         reason="unparseable_action")
    return ReactStep(thought, name, dict(zip(params, values, strict=True)))


def _kg_render(thought: str, name: str | None, args: dict[str, Any]) -> str:
    head = f"Thought: {thought}\n" if thought else ""
    if name == "final_answer":
        return f"{head}Final Answer: {args.get('answer', '')}"
    values = ", ".join(str(args.get(p, "")) for p in _KG_PARAMS.get(name or "", ()))
    return f"{head}Action: {name}({values})"


# ---- WebShop -----------------------------------------------------------------------------------
_WS = re.compile(r"^(?:Thought:\s*(?P<t>.*?)\s*\n)?\s*Action:\s*(?P<name>search|click)\[(?P<arg>.*)\]\s*\Z",
                 re.DOTALL)


def _ws_parse(text: str) -> ReactStep:
    m = _WS.match(text)
    if not m:
        return _plain(text)
    key = "keywords" if m.group("name") == "search" else "target"
    return ReactStep(m.group("t") or "", m.group("name"), {key: m.group("arg")})


def _ws_render(thought: str, name: str | None, args: dict[str, Any]) -> str:
    head = f"Thought:\n{thought}\n\n" if thought else ""
    arg = args.get("keywords" if name == "search" else "target", "")
    return f"{head}Action:\n{name}[{arg}]"


# ---- ALFWorld ----------------------------------------------------------------------------------
_ALF_COMMANDS: list[tuple[str, str, str]] = [
    # (tool, regex of the command, render template)
    ("go_to", r"go to (?P<receptacle>.+)", "go to {receptacle}"),
    ("take", r"take (?P<object>.+?) from (?P<receptacle>.+)", "take {object} from {receptacle}"),
    ("put", r"put (?P<object>.+?) (?P<preposition>in/on|in|on) (?P<receptacle>.+)",
     "put {object} {preposition} {receptacle}"),
    ("clean", r"clean (?P<object>.+?) with (?P<receptacle>.+)", "clean {object} with {receptacle}"),
    ("heat", r"heat (?P<object>.+?) with (?P<receptacle>.+)", "heat {object} with {receptacle}"),
    ("cool", r"cool (?P<object>.+?) with (?P<receptacle>.+)", "cool {object} with {receptacle}"),
    ("open", r"open (?P<target>.+)", "open {target}"),
    ("close", r"close (?P<target>.+)", "close {target}"),
    ("toggle", r"toggle (?P<target>.+)", "toggle {target}"),
    ("use", r"use (?P<target>.+)", "use {target}"),
    ("examine", r"examine (?P<target>.+)", "examine {target}"),
    ("look", r"look", "look"),
    ("inventory", r"inventory", "inventory"),
]
_ALF_RE = [(n, re.compile(rf"^{p}$", re.DOTALL), t) for n, p, t in _ALF_COMMANDS]
_ALF = re.compile(r"^(?:(?:Thought|THOUGHT|Think):\s?(?P<t>.*?)\s*\n)?\s*(?:Action|ACTION|Act):\s?(?P<cmd>.*?)\s*\Z",
                  re.DOTALL)


def _alf_parse(text: str) -> ReactStep:
    m = _ALF.match(text)
    if not m:
        return _plain(text)
    cmd = m.group("cmd")
    for name, rx, _ in _ALF_RE:
        if c := rx.match(cmd):
            return ReactStep(m.group("t") or "", name, c.groupdict())
    raise ParseError(f"unknown ALFWorld command {cmd!r}", reason="unparseable_action")


def _alf_render(thought: str, name: str | None, args: dict[str, Any]) -> str:
    template = next(t for n, _, t in _ALF_COMMANDS if n == name)
    head = f"Thought: {thought}\n" if thought else ""
    return f"{head}Action: {template.format(**args)}"


def _alf_specs() -> tuple[ToolSpec, ...]:
    specs = []
    for name, pattern, _ in _ALF_COMMANDS:
        params = tuple(re.findall(r"\?P<(\w+)>", pattern))
        specs.append(_spec(name, f"ALFWorld household command `{pattern}`", *params))
    return tuple(specs)


# ---- Mind2Web ----------------------------------------------------------------------------------
_M2W = re.compile(r"^(?:Thought:\s?(?P<t>.*?)\s*\n)?\s*Answer:\s?(?P<option>[A-Z])\.?"
                  r"(?:\s*\nAction:\s?(?P<operation>[A-Z]+))?(?:\s*\nValue:\s?(?P<value>.*?))?\s*\Z",
                  re.DOTALL)


def _m2w_parse(text: str) -> ReactStep:
    m = _M2W.match(text)
    if not m:
        return _plain(text)
    args = {k: v for k, v in m.groupdict().items() if k != "t" and v is not None}
    return ReactStep(m.group("t") or "", "choose", args)


def _m2w_render(thought: str, name: str | None, args: dict[str, Any]) -> str:
    out = f"Thought: {thought}\n" if thought else ""
    out += f"Answer: {args.get('option', '')}."
    if "operation" in args:
        out += f"\nAction: {args['operation']}"
    if "value" in args:
        out += f"\nValue: {args['value']}"
    return out


DIALECTS: dict[str, Dialect] = {
    "os": Dialect(
        "os",
        (_spec("bash", "Run a bash script in the Linux container", "script"),
         _spec("answer", "Give the final answer", "answer"),
         _spec("finish", "Finish an operation task", required=())),
        frozenset({"answer", "finish"}), re.compile(r"^\s*Act:", re.MULTILINE), _os_parse, _os_render),
    "db": Dialect(
        "db",
        (_spec("operation", "Execute one SQL statement on the MySQL database", "sql"),
         ToolSpec(name="answer", description="Give the final answer as a list",
                  parameters={"type": "object", "properties": {"answer": {"type": "array"}},
                              "required": ["answer"]})),
        frozenset({"answer"}), re.compile(r"^\s*Action:", re.MULTILINE), _db_parse, _db_render),
    "kg": Dialect(
        "kg",
        (*tuple(_spec(n, f"Knowledge-base function {n}", *p) for n, p in _KG_PARAMS.items()), _spec("final_answer", "Give the variable holding the answer", "answer")),
        frozenset({"final_answer"}), re.compile(r"^\s*(Action|Final Answer):", re.MULTILINE),
        _kg_parse, _kg_render),
    "webshop": Dialect(
        "webshop",
        (_spec("search", "Search the shop", "keywords"), _spec("click", "Click a button or item", "target")),
        frozenset(), re.compile(r"^\s*Action:", re.MULTILINE), _ws_parse, _ws_render),
    "alfworld": Dialect("alfworld", _alf_specs(), frozenset(),
                        re.compile(r"^\s*(Action|ACTION|Act):", re.MULTILINE), _alf_parse, _alf_render),
    "mind2web": Dialect(
        "mind2web",
        (_spec("choose", "Choose an element (A = none) and the operation on it",
               "option", "operation", "value", required=("option",)),),
        frozenset(), re.compile(r"^\s*Answer:", re.MULTILINE), _m2w_parse, _m2w_render),
}


def dialect_for(record_id: str, task: str | None = None) -> Dialect:
    """The dialect of a record: `task` if given, else the prefix of ids like `os_12`."""
    name = task or record_id.split("_", 1)[0]
    if name not in DIALECTS:
        raise ParseError(
            f"cannot tell the AgentInstruct task of id {record_id!r} (known: {', '.join(DIALECTS)}); "
            "pass task=... to the reader", reason="unknown_task", field="id")
    return DIALECTS[name]
