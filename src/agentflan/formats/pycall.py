"""BFCL's prompting format: function calls as a Python list, `[f(a=1), g(b='x')]`, read and rendered.

The Berkeley Function Calling Leaderboard prompts models that have no native tool calling with a
system prompt that lists the functions as JSON and asks for calls in Python syntax; its checker
reads the reply with Python's `ast`. `bfcl_decode` reproduces that decoder's rules (read from
gorilla's `bfcl_eval/model_handler/utils.py`: `default_decode_ast_prompting`, `ast_parse`,
`resolve_ast_call`, `resolve_ast_by_type`), without `eval`: the reply is stripped of backticks,
newlines and spaces (not tabs), wrapped in `[...]` when it is not, and parsed as one expression, a
call or a list of calls (`(math.sum)()` is the call `math.sum`); only keyword arguments count
(positional ones are dropped, as BFCL drops them); values are literals, names (kept as their
text), nested calls (`{name: args}`, or the call's source text when it has no keywords), tuples,
subscripts (their source text), a unary operator on a number (BFCL negates it, whatever the
operator), and arithmetic, which BFCL evaluates with `eval`: here it is computed for literals and
pure builtins (`abs`, `round`, `len`, ...); a name Python does not define fails, as `eval` raises
NameError; anything else BFCL would run is *undetermined* (`Undetermined`). Anything else fails
to decode.

`decode_calls` is agentflan's reading, BFCL's made strict on purpose: it never evaluates model
output, so a call or a name inside an expression (`b=abs(120) + 0`) is refused, as are `**kwargs`
and values a JSON log cannot hold (bytes, complex numbers, lone surrogates, integers past Python's
string-conversion limit). `eval.bfcl` reports both verdicts.

The `bfcl` protocol (`formats.protocols.BFCLProtocol`, built on this module) states BFCL's default
prompt (classic style, plain text, Python calls, the functions as JSON with BFCL's "Python 3
syntax" hint) and reads replies: a reply that decodes is
its calls (`[]`: no call); one that does not is *unparseable* when it attempts a call (it starts
with `[` or `name(`, holds a keyword call, a `<tool_call>` tag or a JSON object with a `name`) or
BFCL's decoder reads it, else a plain answer. Unlike BFCL's runner, an unparseable reply is never
taken for an abstention.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import operator
import re
import warnings
from collections.abc import Callable
from typing import Any, NoReturn, cast

from agentflan.errors import ParseError
from agentflan.schema import ToolCall, ToolSpec

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
_ATTEMPT = re.compile(r"^\[|^[(\s]*[A-Za-z_][\w.]*[)\s]*\(|[A-Za-z_][\w.]*\(\s*[A-Za-z_]\w*\s*=|<tool_call>|\{\s*\"name\"\s*:")
_BINOPS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.MatMult: operator.matmul,
    ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
    ast.BitAnd: operator.and_}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_, ast.Invert: operator.invert}
_PURE: dict[str, Callable[..., Any]] = {f.__name__: f for f in (
    abs, round, min, max, len, sum, int, float, str, bool, pow, divmod, sorted, list, tuple, dict, set, chr, ord,
    hex, bin, oct)}
"""Builtins without side effects or unbounded cost that BFCL's `eval` may call inside an argument:
their result is computed for BFCL's verdict (never for agentflan's)."""
_BFCL_NAMES = frozenset(["value", "ast", "builtins", "copy", "deepcopy", "json", "operator", "os", "re", "reduce", "hashlib", "retry", "retry_if_exception_message", "retry_if_exception_type", "retry_with_backoff", "wait_random_exponential", "Callable", "FileLock", "List", "Lock", "ModelStyle", "Optional", "Path", "ReturnFormat", "Type", "Union", "ast_parse", "resolve_ast_by_type", "resolve_ast_call", "default_decode_ast_prompting", "default_decode_execute_prompting", "convert_to_function_call", "convert_to_tool", "convert_value", "parse_nested_value", "is_empty_output", "is_function_calling_format_output", "is_executable_format_output", "make_json_serializable", "load_file", "sort_key"])
"""Names BFCL's `eval` finds beside the builtins (the local `value`, and the main globals of its
`model_handler/utils.py`; upper-case names are its constants): an expression reading one is not
computed here. Any other name raises NameError there, so the decoding fails."""
_MAX_BITS = 1 << 20
"""An integer result beyond a million bits is not computed (BFCL would compute it)."""
_MAX_ITEMS = 1 << 20
_UNKNOWN = object()


class _Opaque:
    """A function or module BFCL's `eval` finds by name: no arithmetic applies to it (TypeError)."""


_OPAQUE = _Opaque()
_FORMAT_RISK = re.compile(r"%[^a-zA-Z%]*(?:\*|\d{4,})")


def _holds_opaque(v: Any) -> bool:
    if v is _OPAQUE:
        return True
    if isinstance(v, (list, tuple, set)):
        return any(_holds_opaque(x) for x in v)
    if isinstance(v, dict):
        return any(_holds_opaque(k) or _holds_opaque(x) for k, x in v.items())
    return False


class Undetermined(Exception):
    """BFCL's decoder would evaluate (`eval`) code whose result agentflan does not compute."""


def _fail(message: str) -> NoReturn:
    raise ParseError(message, reason="unparseable_action")


class _Decoder:
    """One walk of a reply's syntax tree, in BFCL's decoder's order, giving both readings: BFCL's
    (values as Python makes them; an expression agentflan does not compute makes the result
    undetermined, unless the decoding fails elsewhere, which fails BFCL's decoder either way) and,
    in `refusal`, the first thing agentflan's reading refuses (what BFCL would evaluate, what JSON
    cannot hold): where there is none, both readings are the same calls."""

    def __init__(self) -> None:
        self.undetermined = ""
        self.refusal = ""

    def refuse(self, why: str) -> None:
        self.refusal = self.refusal or why

    def unknown(self, why: str) -> Any:
        self.refuse(why)
        self.undetermined = self.undetermined or why
        return _UNKNOWN

    def decode(self, text: str) -> list[dict[Any, dict[Any, Any]]]:
        s = text.strip("`\n ")
        if not s.startswith("["):
            s = "[" + s
        if not s.endswith("]"):
            s = s + "]"
        s = s.strip().strip("'")
        try:
            with warnings.catch_warnings():  # `1a`, `"\d"`: Python's SyntaxWarnings, one per reply otherwise
                warnings.simplefilter("ignore")
                body = ast.parse(s, mode="eval").body
        except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
            _fail(f"not Python call syntax: {e}")
        if isinstance(body, ast.Call):
            nodes: list[ast.expr] = [body]
        elif isinstance(body, (ast.List, ast.Tuple, ast.Set)):
            nodes = body.elts
        else:
            _fail("not a list of function calls")
        out = []
        try:
            for elt in nodes:
                if not isinstance(elt, ast.Call):
                    _fail(f"not a function call: {ast.unparse(elt)[:60]}")
                out.append(self.call(elt))
        except RecursionError:
            _fail("nested too deeply")
        if self.undetermined:
            raise Undetermined(self.undetermined)
        return out

    def call(self, node: ast.Call) -> dict[Any, dict[Any, Any]]:
        parts = []
        func: ast.expr = node.func
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if isinstance(func, ast.Name):
            parts.append(func.id)
        args: dict[Any, Any] = {}
        for kw in node.keywords:  # positional arguments are dropped, as BFCL drops them
            if kw.arg is None:
                self.refuse("**kwargs in a call")
            args[kw.arg] = self.value(kw.value)
        return {".".join(reversed(parts)): args}

    def value(self, node: ast.expr) -> Any:
        """BFCL's `resolve_ast_by_type`."""
        if isinstance(node, ast.Constant):
            return "..." if node.value is Ellipsis else self.literal(node.value)
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float, complex)):
                return self.literal(-node.operand.value)  # BFCL negates the operand whatever the operator
            _fail("a unary operator on a non-number")
        if isinstance(node, ast.List):
            return [self.value(v) for v in node.elts]
        if isinstance(node, ast.Dict):
            out: dict[Any, Any] = {}
            for k, v in zip(node.keys, node.values, strict=True):
                if k is None:
                    _fail("** in a dict")
                key = self.value(k)
                if key is not None and not isinstance(key, (str, int, float)):
                    self.refuse(f"a dict key JSON cannot hold ({type(key).__name__})")
                val = self.value(v)
                try:
                    out[key] = val
                except TypeError:
                    _fail(f"an unhashable dict key ({type(key).__name__})")
            return out
        if isinstance(node, ast.BinOp):  # BFCL: eval(ast.unparse(node))
            got = self.expr(node)
            return self.unknown("a function in a value") if _holds_opaque(got) else self.literal(got)
        if isinstance(node, ast.Name):
            return node.id
        if isinstance(node, ast.Call):
            return self.call(node) if node.keywords else ast.unparse(node)
        if isinstance(node, ast.Tuple):
            return tuple(self.value(v) for v in node.elts)
        if isinstance(node, ast.Subscript):
            return ast.unparse(node.value) + "[" + ast.unparse(node.slice) + "]"
        _fail(f"unsupported value {type(node).__name__}")

    def literal(self, v: Any) -> Any:
        """A value as agentflan keeps it: JSON must hold it (no bytes, complex numbers, lone surrogates,
        integers past Python's string conversion limit)."""
        if v is _UNKNOWN:
            return v
        if isinstance(v, str):
            if not v.isascii():
                try:
                    v.encode("utf-8")
                except UnicodeEncodeError:
                    self.refuse("a string with a lone surrogate (not UTF-8)")
        elif isinstance(v, int):
            if v.bit_length() > 14000:  # past sys.get_int_max_str_digits()' 4300 digits
                self.refuse("an integer too long to write")
        elif isinstance(v, (list, tuple)):
            for x in v:
                self.literal(x)
        elif isinstance(v, dict):
            for k, x in v.items():
                if not isinstance(k, (str, int, float)) and k is not None:
                    self.refuse(f"a dict key JSON cannot hold ({type(k).__name__})")
                self.literal(k)
                self.literal(x)
        elif not isinstance(v, (float, bool)) and v is not None:
            self.refuse(f"a {type(v).__name__} value JSON cannot hold")
        return v

    def expr(self, node: ast.expr) -> Any:
        """What Python's `eval` makes of an expression, for literals, arithmetic and (BFCL's reading
        only) pure builtins; `_UNKNOWN` (BFCL's reading) where it is not computed here."""
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            if any(isinstance(e, ast.Starred) for e in node.elts):
                return self.unknown("unpacking in an expression")
            items = [self.expr(e) for e in node.elts]
            if _UNKNOWN in items:
                return _UNKNOWN
            if isinstance(node, ast.Set):
                try:
                    return set(items)
                except TypeError:
                    _fail("an unhashable set item")
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                return self.unknown("** in an expression")
            pairs = [(self.expr(k), self.expr(v)) for k, v in zip(node.keys, node.values, strict=True) if k is not None]
            if any(_UNKNOWN in p for p in pairs):
                return _UNKNOWN
            try:
                return dict(pairs)
            except TypeError:
                _fail("an unhashable dict key")
        if isinstance(node, ast.UnaryOp):
            v = self.expr(node.operand)
            if v is _UNKNOWN:
                return v
            try:
                return _UNARY[type(node.op)](v)
            except Exception as e:  # whatever Python raises there, BFCL's eval raised too
                _fail(f"cannot evaluate: {e!r}")
        if isinstance(node, ast.BinOp):
            left, right = self.expr(node.left), self.expr(node.right)
            return _UNKNOWN if _UNKNOWN in (left, right) else self.arith(node.op, left, right)
        if isinstance(node, ast.Subscript) and not isinstance(node.slice, ast.Slice):
            seq, index = self.expr(node.value), self.expr(node.slice)
            if _UNKNOWN in (seq, index):
                return _UNKNOWN
            try:
                return seq[index]
            except Exception as e:  # as above
                _fail(f"cannot evaluate: {e!r}")
        if isinstance(node, (ast.Name, ast.Call, ast.Attribute)):
            self.refuse("a call or a name inside an expression (agentflan does not evaluate model output)")
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            self.name(node.value.id)  # NameError first
            return self.unknown("an attribute in an expression")
        if isinstance(node, ast.Call):
            return self.builtin_call(node)
        return self.unknown(f"{type(node).__name__} in an expression")

    def name(self, name: str) -> Any:
        """A name read by BFCL's `eval`: a NameError unless Python or BFCL's module defines it; a
        builtin function, or one of BFCL's modules and functions (lower case: the local `value`, an
        AST node, too), is opaque; other names (types, constants) are not computed."""
        found = getattr(builtins, name, None)
        if found is not None and callable(found) and not isinstance(found, type):
            return _OPAQUE
        if name in _BFCL_NAMES and name[0].islower():
            return _OPAQUE
        if found is not None or name in _BFCL_NAMES or name.isupper():
            return self.unknown(f"the name {name!r} in an expression")
        _fail(f"name {name!r} is not defined")

    def builtin_call(self, node: ast.Call) -> Any:
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            self.name(func.value.id)  # NameError first
            return self.unknown("a method call in an expression")
        if not isinstance(func, ast.Name):
            return self.unknown("a call in an expression")
        if func.id not in _PURE and func.id != "print":
            self.name(func.id)  # NameError before the arguments, as Python evaluates
            return self.unknown(f"a call of {func.id!r} in an expression")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            return self.unknown("unpacking in a call")
        args = [self.expr(a) for a in node.args]
        kwargs = {k.arg: self.expr(k.value) for k in node.keywords if k.arg is not None}
        if _UNKNOWN in args or _UNKNOWN in kwargs.values():
            return _UNKNOWN
        if _holds_opaque(args) or _holds_opaque(list(kwargs.values())):
            return self.unknown("a function passed to a builtin")
        if func.id == "print":
            return None  # what BFCL's eval gets back (the text goes to its output)
        if func.id == "pow" and len(args) == 2 and not kwargs:
            return self.arith(ast.Pow(), *args)
        try:
            return _PURE[func.id](*args, **kwargs)
        except Exception as e:  # as above (str(b"x", "rot13") raises LookupError)
            _fail(f"cannot evaluate: {e!r}")

    def arith(self, op: ast.operator, left: Any, right: Any) -> Any:
        fn = _BINOPS.get(type(op))
        if fn is None:
            return self.unknown("an operator")
        ints = isinstance(left, int) and isinstance(right, int)
        if isinstance(op, ast.Pow) and ints and right > 0 and abs(left) > 1 and right * abs(left).bit_length() > _MAX_BITS:
            return self.unknown("an integer power too large to compute")
        if isinstance(op, ast.LShift) and ints and right > _MAX_BITS:
            return self.unknown("a shift too large to compute")
        if isinstance(op, ast.Mult):
            for seq, k in ((left, right), (right, left)):
                if isinstance(seq, (str, bytes, list, tuple)) and isinstance(k, int) and len(seq) * k > _MAX_ITEMS:
                    return self.unknown("a repetition too large to compute")
        if isinstance(op, ast.Mod) and isinstance(left, (str, bytes)):
            text = left if isinstance(left, str) else left.decode("latin-1")
            if _holds_opaque(right) or _FORMAT_RISK.search(text):
                return self.unknown("%-formatting")
        try:
            return fn(left, right)
        except Exception as e:  # as above
            _fail(f"cannot evaluate: {e!r}")


def decode_calls(text: str) -> list[dict[str, dict[str, Any]]]:
    """agentflan's decoding of a prompting reply, `[{name: {param: value}}, ...]`: BFCL's, except that
    it never evaluates model output (a call or a name inside an expression), reads no `**kwargs`,
    and keeps only values JSON can hold. Raises `ParseError`."""
    result, refusal = _read(text)
    if isinstance(result, (ParseError, Undetermined)) or refusal:
        _fail(refusal or (result.message if isinstance(result, ParseError) else str(result)))
    return cast(list[dict[str, dict[str, Any]]], result)


def bfcl_decode(text: str) -> list[dict[Any, dict[Any, Any]]]:
    """BFCL's decoding of a prompting reply, values as Python makes them (tuples, bytes, complex
    numbers, a `None` parameter for `**kwargs`). Raises `ParseError` where BFCL's decoder raises,
    `Undetermined` where it would evaluate code agentflan does not compute."""
    result, _ = _read(text)
    if isinstance(result, ParseError):
        _fail(result.message)
    if isinstance(result, Undetermined):
        raise Undetermined(str(result))
    return cast(list[dict[Any, dict[Any, Any]]], result)


@functools.lru_cache(maxsize=256)
def _read(text: str) -> tuple[Any, str]:
    """(BFCL's decoding of a reply, or the ParseError or Undetermined it ends in; agentflan's first
    refusal): one walk serves `decode_calls`, `bfcl_decodes` and `bfcl_decode` of the same reply
    (the calls are shared: callers do not change them)."""
    d = _Decoder()
    try:
        result: Any = d.decode(text)
    except (ParseError, Undetermined) as e:
        result = e
    return result, d.refusal


def bfcl_decodes(text: str) -> bool:
    """Does BFCL's decoder read the reply (or might it: it would evaluate code)?"""
    try:
        bfcl_decode(text)
    except ParseError:
        return False
    except Undetermined:
        return True
    return True


def attempts_call(text: str) -> bool:
    """Does a reply try to state a call (so that it must decode)?"""
    return bool(_ATTEMPT.search(text.strip().strip("`").strip()))


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
