"""BFCL's prompting format: function calls as a Python list, `[f(a=1), g(b='x')]`, and its protocol.

The Berkeley Function Calling Leaderboard prompts models that have no native tool calling with a
system prompt that lists the functions as JSON and asks for calls in Python syntax; its checker
reads the reply with Python's `ast`. `decode_calls` reproduces that decoder's rules (read from
gorilla's `bfcl_eval/model_handler/utils.py`: `default_decode_ast_prompting`, `ast_parse`,
`resolve_ast_call`, `resolve_ast_by_type`), without `eval`: the reply is stripped of backticks,
newlines and spaces, wrapped in `[...]` when it is not, stripped of wrapping single quotes, and
parsed as one expression, a call or a list of calls; only keyword arguments count (positional ones
are dropped, as BFCL drops them); values are literals, names (kept as their text), nested calls
(`{name: args}`, or the call's source text when it has no keywords), tuples, subscripts (their
source text), arithmetic on literals (evaluated), and a unary operator on a number (BFCL negates
it, whatever the operator). Anything else fails to decode.

`BFCLProtocol` (`bfcl`) states BFCL's default prompt (classic style, plain text, Python calls, the
functions as JSON with BFCL's "Python 3 syntax" hint) and reads replies: a reply that attempts a
call (it starts with `[` or `name(`, holds a keyword call, a `<tool_call>` tag or a JSON object
with a `name`) must decode, else it is *unparseable*; `[]` is a reply with no call; any other text
is a plain answer. Unlike BFCL's runner, an unparseable reply is never taken for an abstention.
"""

from __future__ import annotations

import ast
import json
import operator
import re
from typing import Any

from agentflan.errors import ParseError
from agentflan.formats.protocols import Action, TextProtocol
from agentflan.schema import (
    AssistantMessage,
    Message,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    Trajectory,
    UserMessage,
)

SYSTEM_PROMPT = (
    "You are an expert in composing functions.You are given a question and a set of possible functions. Based on the "
    "question, you will need to make one or more function/tool calls to achieve the purpose. If none of the functions "
    "can be used, point it out. If the given question lacks the parameters required by the function, also point it "
    "out.\n\nYou should only return the function calls in your response.\n\nIf you decide to invoke any of the "
    "function(s), you MUST put it in the format of [func_name1(params_name1=params_value1, "
    "params_name2=params_value2...), func_name2(params)].  You SHOULD NOT include any other text in the response.\n\n"
    "At each turn, you should try your best to complete the tasks requested by the user within the current turn. "
    "Continue to output functions to call until you have fulfilled the user's request to the best of your ability. "
    "Once you have no more functions to call, the system will consider the current turn complete and proceed to the "
    "next turn or task.\n\nHere is a list of functions in json format that you can invoke.\n{functions}\n")
"""BFCL's default system prompt (`ret_fmt=python&tool_call_tag=False&func_doc_fmt=json&prompt_fmt=plaintext&
style=classic`), as its template assembles it (persona and task joined without a space, as there)."""
PYTHON_HINT = " Note that the provided function is in Python 3 syntax."
_ATTEMPT = re.compile(r"^\[|^[A-Za-z_][\w.]*\s*\(|[A-Za-z_][\w.]*\(\s*[A-Za-z_]\w*\s*=|<tool_call>|\{\s*\"name\"\s*:")
_BINOPS: dict[type[ast.operator], Any] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}


def decode_calls(text: str) -> list[dict[str, dict[str, Any]]]:
    """BFCL's decoding of a prompting reply: `[{name: {param: value}}, ...]`. Raises `ParseError`."""
    s = text.strip("`\n ")
    if not s.startswith("["):
        s = "[" + s
    if not s.endswith("]"):
        s = s + "]"
    s = s.strip().strip("'")
    try:
        body = ast.parse(s, mode="eval").body
    except (SyntaxError, ValueError) as e:
        raise ParseError(f"not Python call syntax: {e}", reason="unparseable_action") from None
    if isinstance(body, ast.Call):
        return [_call(body)]
    if not isinstance(body, (ast.List, ast.Tuple, ast.Set)):
        raise ParseError("not a list of function calls", reason="unparseable_action")
    out = []
    for elt in body.elts:
        if not isinstance(elt, ast.Call):
            raise ParseError(f"not a function call: {ast.unparse(elt)[:60]}", reason="unparseable_action")
        out.append(_call(elt))
    return out


def _call(node: ast.Call) -> dict[str, dict[str, Any]]:
    parts = []
    func: ast.expr = node.func
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    args: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise ParseError("**kwargs in a call", reason="unparseable_action")
        args[kw.arg] = _value(kw.value)
    return {".".join(reversed(parts)): args}


def _value(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant):
        return "..." if node.value is Ellipsis else node.value
    if isinstance(node, ast.UnaryOp):
        if isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float, complex)):
            return -node.operand.value  # BFCL negates the operand whatever the operator
        raise ParseError("a unary operator on a non-number", reason="unparseable_action")
    if isinstance(node, ast.List):
        return [_value(v) for v in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ParseError("** in a dict", reason="unparseable_action")
        return {_value(k): _value(v) for k, v in zip(node.keys, node.values, strict=True) if k is not None}
    if isinstance(node, ast.BinOp):
        return _arith(node)
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Call):
        return _call(node) if node.keywords else ast.unparse(node)
    if isinstance(node, ast.Tuple):
        return tuple(_value(v) for v in node.elts)
    if isinstance(node, ast.Subscript):
        return ast.unparse(node.value) + "[" + ast.unparse(node.slice) + "]"
    raise ParseError(f"unsupported value {type(node).__name__}", reason="unparseable_action")


def _arith(node: ast.BinOp) -> Any:
    """BFCL evaluates arithmetic with `eval`; here only on literals, and bounded."""
    op = _BINOPS.get(type(node.op))

    def side(n: ast.expr) -> Any:
        v = _arith(n) if isinstance(n, ast.BinOp) else _value(n)
        if isinstance(n, ast.Name):  # eval would look the name up and fail
            raise ParseError(f"name {n.id!r} in an expression", reason="unparseable_action")
        return v

    left, right = side(node.left), side(node.right)
    if op is None:
        raise ParseError("unsupported operator", reason="unparseable_action")
    if op is operator.pow and (not isinstance(right, (int, float)) or abs(right) > 1000):
        raise ParseError("exponent out of range", reason="unparseable_action")
    try:
        return op(left, right)
    except (TypeError, ZeroDivisionError, OverflowError, ValueError) as e:
        raise ParseError(f"cannot evaluate: {e}", reason="unparseable_action") from None


def attempts_call(text: str) -> bool:
    """Does a reply try to state a call (so that it must decode)?"""
    return bool(_ATTEMPT.search(text.strip("`\n ")))


def render_calls(calls: list[ToolCall]) -> str:
    """Calls in BFCL's Python syntax (values as Python literals)."""
    return "[" + ", ".join(f"{c.name}(" + ", ".join(f"{k}={v!r}" for k, v in c.arguments.items()) + ")"
                           for c in calls) + "]"


def function_docs(tools: list[ToolSpec]) -> str:
    """The functions as BFCL lists them: their original BFCL documents (with the Python hint), as
    indented JSON."""
    docs = []
    for t in tools:
        doc = t.metadata.get("bfcl")
        if not isinstance(doc, dict):
            doc = {"name": t.name, "description": t.description, "parameters": t.parameters}
        docs.append({**doc, "description": str(doc.get("description", "")) + PYTHON_HINT})
    return json.dumps(docs, indent=4)


class BFCLProtocol(TextProtocol):
    """BFCL's prompting format (see the module docstring): single-step, several calls per reply."""

    name = "bfcl"
    episodic = False

    def render(self, traj: Trajectory, key: str = "") -> list[Message]:
        system = SYSTEM_PROMPT.replace("{functions}", function_docs(traj.tools))
        msgs = list(traj.messages)
        if msgs and isinstance(msgs[0], SystemMessage):
            system = f"{system}\n\n{msgs.pop(0).content}"
        out: list[Message] = [SystemMessage(content=system)]
        for m in msgs:
            if isinstance(m, AssistantMessage):
                calls = [c for c in m.tool_calls if c.name != traj.tags.get("final_tool")]
                out.append(AssistantMessage(content=render_calls(calls) if calls else m.content, loss=m.loss))
            elif isinstance(m, ToolMessage):
                out.append(UserMessage(content=m.content))
            else:
                out.append(type(m)(content=m.content))
        return out

    def parse(self, text: str, traj: Trajectory, key: str = "") -> Action:
        if not attempts_call(text):
            return Action("answer", answer=text.strip())
        try:
            decoded = decode_calls(text)
        except ParseError as e:
            return Action("unparseable", error=e.message)
        if not decoded or decoded == [{}]:
            return Action("answer", answer=text.strip())
        calls = []
        for i, d in enumerate(decoded):
            (name, args), = d.items()
            calls.append(ToolCall(id=f"call_{i}", name=name, arguments=args))
        return Action("call", calls=calls)
