"""A ToolBench-style environment of real, deterministic, executable tools.

Tools are grouped like RapidAPI: a tool (`world_atlas`) has several APIs, each exposed to the
model as a function named `<api>_for_<tool>` with a JSON-schema spec, as ToolBench names them.
Every call is validated against its schema first; bad calls come back the way real APIs answer
them: `{"error": "...", "response": ""}` (missing or unknown fields, wrong types, strings over
1,000 characters, names that look like paths). Nothing touches files or the network.

The knowledge base (countries, cities, currencies, books) is generated from a fixed seed, so it
is the same on every machine and no model has memorised it: answers must come from the tools.
Train and held-out tasks use disjoint tool groups (see `TRAIN_TOOLS`, `HELDOUT_TOOLS`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, ClassVar

from agentflan.envs.base import Environment, Task, Verdict, system_prompt, user
from agentflan.formats.finish import give_answer
from agentflan.schema import AssistantMessage, Message, ToolCall, ToolMessage, ToolSpec

MAX_STRING = 1000
_SAFE_NAME = re.compile(r"^[\w .,'()&-]{1,80}$", re.UNICODE)


# ---- the generated knowledge base ----------------------------------------------------------------

_SYL = ["ka", "lo", "mir", "ta", "ven", "ra", "dul", "sen", "bo", "ri", "an", "quel", "zor", "pa", "li", "mo",
        "ther", "vis", "ul", "dar", "eth", "no", "sul", "gra"]


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(_SYL) for _ in range(parts)).capitalize()


@dataclass(frozen=True)
class KnowledgeBase:
    countries: dict[str, dict[str, Any]]
    cities: dict[str, dict[str, Any]]
    rates: dict[str, float]
    """Units of each currency per 1 USD."""
    books: dict[str, dict[str, Any]]


@lru_cache(maxsize=1)
def knowledge_base(seed: int = 20240301) -> KnowledgeBase:
    rng = random.Random(seed)
    countries: dict[str, dict[str, Any]] = {}
    cities: dict[str, dict[str, Any]] = {}
    rates: dict[str, float] = {"USD": 1.0}
    continents = ["Norvania", "Austeria", "Easterly Isles", "Westmark"]
    while len(countries) < 30:
        name = _name(rng, rng.choice([2, 3])) + rng.choice(["ia", "land", "stan", "or", "a"])
        if name in countries:
            continue
        code = (name[:2] + rng.choice("XYZQWK")).upper()
        while code in rates:
            code = code[:2] + rng.choice("ABCDEFGHJ")
        rates[code] = round(rng.uniform(0.2, 150.0), 4)
        city_names = []
        for _ in range(rng.randint(2, 4)):
            city = _name(rng, rng.choice([2, 3])) + rng.choice(["", "ton", "burg", "port", "ville"])
            if city in cities:
                continue
            cities[city] = {"name": city, "country": name, "population": rng.randint(20_000, 3_000_000),
                            "elevation_m": rng.randint(0, 2400)}
            city_names.append(city)
        countries[name] = {"name": name, "capital": city_names[0], "population": rng.randint(500_000, 90_000_000),
                           "currency": code, "continent": rng.choice(continents)}
    books: dict[str, dict[str, Any]] = {}
    authors = [f"{_name(rng, 2)} {_name(rng, 3)}" for _ in range(12)]
    while len(books) < 40:
        title = "The " + _name(rng, 2) + " " + rng.choice(["Garden", "Letters", "River", "Clock", "Harbor", "Winter",
                                                           "Archive", "Bridge"])
        if title not in books:
            books[title] = {"title": title, "author": rng.choice(authors), "year": rng.randint(1890, 2023),
                            "pages": rng.randint(90, 900)}
    return KnowledgeBase(countries, cities, rates, books)


# ---- APIs ----------------------------------------------------------------------------------------

class ApiError(Exception):
    pass


@dataclass(frozen=True)
class Api:
    tool: str
    name: str
    description: str
    params: dict[str, dict[str, Any]]
    required: tuple[str, ...]
    fn: Callable[..., Any]

    @property
    def function_name(self) -> str:
        return f"{self.name}_for_{self.tool}"

    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.function_name,
                        description=f'This is the subfunction for tool "{self.tool}": {self.description}',
                        parameters={"type": "object", "properties": self.params, "required": list(self.required)})


def _num(v: Any, field: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ApiError(f"invalid value for '{field}': expected a finite number")
    return float(v)


def _round(x: float) -> float:
    return round(x, 4)


_LENGTH = {"m": 1.0, "km": 1000.0, "mile": 1609.344, "ft": 0.3048, "cm": 0.01}
_MASS = {"kg": 1.0, "g": 0.001, "lb": 0.45359237, "oz": 0.028349523125}


def _convert(table: dict[str, float], value: Any, from_unit: str, to_unit: str) -> dict[str, Any]:
    for u, f in ((from_unit, "from_unit"), (to_unit, "to_unit")):
        if u not in table:
            raise ApiError(f"unknown unit for '{f}': {u!r} (supported: {', '.join(table)})")
    return {"value": _round(_num(value, "value") * table[from_unit] / table[to_unit]), "unit": to_unit}


def _temperature(value: Any, from_unit: str, to_unit: str) -> dict[str, Any]:
    v = _num(value, "value")
    to_c = {"C": lambda x: x, "F": lambda x: (x - 32) * 5 / 9, "K": lambda x: x - 273.15}
    from_c = {"C": lambda x: x, "F": lambda x: x * 9 / 5 + 32, "K": lambda x: x + 273.15}
    if from_unit not in to_c or to_unit not in from_c:
        raise ApiError("units must be one of C, F, K")
    return {"value": _round(from_c[to_unit](to_c[from_unit](v))), "unit": to_unit}


def _lookup(table: dict[str, dict[str, Any]], key: str, what: str) -> dict[str, Any]:
    found = table.get(key) or next((v for k, v in table.items() if k.lower() == key.lower()), None)
    if found is None:
        raise ApiError(f"{what} {key!r} not found")
    return dict(found)


def _date(v: str, field: str) -> dt.date:
    try:
        return dt.date.fromisoformat(v)
    except ValueError as e:
        raise ApiError(f"invalid date for '{field}': expected YYYY-MM-DD") from e


def _numbers(v: Any) -> list[float]:
    if not isinstance(v, list) or not v or len(v) > 1000:
        raise ApiError("invalid value for 'numbers': expected a non-empty list of at most 1000 numbers")
    return [_num(x, "numbers") for x in v]


class Inventory:
    def __init__(self, items: dict[str, int]) -> None:
        self.items = dict(items)

    def add(self, item: str, quantity: Any) -> dict[str, Any]:
        q = _num(quantity, "quantity")
        if q <= 0 or q != int(q):
            raise ApiError("invalid value for 'quantity': expected a positive whole number")
        self.items[item] = self.items.get(item, 0) + int(q)
        return {"item": item, "stock": self.items[item]}

    def remove(self, item: str, quantity: Any) -> dict[str, Any]:
        q = _num(quantity, "quantity")
        if q <= 0 or q != int(q):
            raise ApiError("invalid value for 'quantity': expected a positive whole number")
        if self.items.get(item, 0) < q:
            raise ApiError(f"not enough {item!r} in stock ({self.items.get(item, 0)})")
        self.items[item] -= int(q)
        return {"item": item, "stock": self.items[item]}

    def stock(self, item: str) -> dict[str, Any]:
        return {"item": item, "stock": self.items.get(item, 0)}


def _s(desc: str) -> dict[str, Any]:
    return {"type": "string", "description": desc}


def _n(desc: str) -> dict[str, Any]:
    return {"type": "number", "description": desc}


def build_apis(kb: KnowledgeBase, inventory: Inventory) -> list[Api]:
    return [
        Api("calculator", "add", "Add two numbers.", {"a": _n("first"), "b": _n("second")}, ("a", "b"),
            lambda a, b: {"result": _round(_num(a, "a") + _num(b, "b"))}),
        Api("calculator", "multiply", "Multiply two numbers.", {"a": _n("first"), "b": _n("second")}, ("a", "b"),
            lambda a, b: {"result": _round(_num(a, "a") * _num(b, "b"))}),
        Api("calculator", "divide", "Divide a by b.", {"a": _n("dividend"), "b": _n("divisor")}, ("a", "b"),
            lambda a, b: {"result": _round(_num(a, "a") / _num(b, "b"))} if _num(b, "b") != 0
            else (_ for _ in ()).throw(ApiError("division by zero"))),
        Api("unit_converter", "convert_length", "Convert a length between m, km, mile, ft, cm.",
            {"value": _n("amount"), "from_unit": _s("unit of value"), "to_unit": _s("target unit")},
            ("value", "from_unit", "to_unit"), lambda value, from_unit, to_unit: _convert(_LENGTH, value, from_unit, to_unit)),
        Api("unit_converter", "convert_mass", "Convert a mass between kg, g, lb, oz.",
            {"value": _n("amount"), "from_unit": _s("unit of value"), "to_unit": _s("target unit")},
            ("value", "from_unit", "to_unit"), lambda value, from_unit, to_unit: _convert(_MASS, value, from_unit, to_unit)),
        Api("unit_converter", "convert_temperature", "Convert a temperature between C, F and K.",
            {"value": _n("temperature"), "from_unit": _s("C, F or K"), "to_unit": _s("C, F or K")},
            ("value", "from_unit", "to_unit"), _temperature),
        Api("world_atlas", "get_country", "Facts about a country: capital, population, currency, continent.",
            {"name": _s("country name")}, ("name",), lambda name: _lookup(kb.countries, name, "country")),
        Api("world_atlas", "get_city", "Facts about a city: country, population, elevation.",
            {"name": _s("city name")}, ("name",), lambda name: _lookup(kb.cities, name, "city")),
        Api("world_atlas", "list_cities", "The cities of a country in the atlas.", {"country": _s("country name")},
            ("country",), lambda country: {"country": _lookup(kb.countries, country, "country")["name"], "cities": sorted(
                c for c, v in kb.cities.items() if v["country"].lower() == country.lower())}),
        Api("inventory", "add_item", "Add units of an item to the store's stock.",
            {"item": _s("item name"), "quantity": _n("units to add")}, ("item", "quantity"), inventory.add),
        Api("inventory", "remove_item", "Remove units of an item from the stock.",
            {"item": _s("item name"), "quantity": _n("units to remove")}, ("item", "quantity"), inventory.remove),
        Api("inventory", "get_stock", "Units of an item in stock.", {"item": _s("item name")}, ("item",), inventory.stock),
        Api("text_tools", "word_count", "Count the words of a text.", {"text": _s("the text")}, ("text",),
            lambda text: {"words": len(text.split())}),
        Api("text_tools", "reverse_text", "Reverse a text character by character.", {"text": _s("the text")},
            ("text",), lambda text: {"result": text[::-1]}),
        # held-out tool groups
        Api("calendar", "days_between", "Days from start to end (ISO dates).",
            {"start": _s("YYYY-MM-DD"), "end": _s("YYYY-MM-DD")}, ("start", "end"),
            lambda start, end: {"days": (_date(end, "end") - _date(start, "start")).days}),
        Api("calendar", "add_days", "The date a number of days after a date.",
            {"date": _s("YYYY-MM-DD"), "days": _n("days to add")}, ("date", "days"),
            lambda date, days: {"date": (_date(date, "date") + dt.timedelta(days=int(_num(days, "days")))).isoformat()}),
        Api("calendar", "weekday", "The weekday of a date.", {"date": _s("YYYY-MM-DD")}, ("date",),
            lambda date: {"weekday": _date(date, "date").strftime("%A")}),
        Api("list_tools", "sum_numbers", "The sum of a list of numbers.",
            {"numbers": {"type": "array", "items": {"type": "number"}}}, ("numbers",),
            lambda numbers: {"result": _round(sum(_numbers(numbers)))}),
        Api("list_tools", "average", "The mean of a list of numbers.",
            {"numbers": {"type": "array", "items": {"type": "number"}}}, ("numbers",),
            lambda numbers: {"result": _round(sum(_numbers(numbers)) / len(_numbers(numbers)))}),
        Api("list_tools", "max_number", "The largest of a list of numbers.",
            {"numbers": {"type": "array", "items": {"type": "number"}}}, ("numbers",),
            lambda numbers: {"result": max(_numbers(numbers))}),
        Api("currency_exchange", "convert_currency", "Convert money between currency codes (e.g. USD).",
            {"amount": _n("amount"), "from_currency": _s("code"), "to_currency": _s("code")},
            ("amount", "from_currency", "to_currency"),
            lambda amount, from_currency, to_currency: {"amount": _round(
                _num(amount, "amount") / _rate(kb, from_currency) * _rate(kb, to_currency)), "currency": to_currency}),
        Api("library", "get_book", "Facts about a book: author, year, pages.", {"title": _s("book title")},
            ("title",), lambda title: _lookup(kb.books, title, "book")),
        Api("library", "books_by_author", "Titles of an author's books.", {"author": _s("author name")},
            ("author",), lambda author: {"author": author, "titles": sorted(
                t for t, b in kb.books.items() if b["author"].lower() == author.lower())}),
    ]


def _rate(kb: KnowledgeBase, code: str) -> float:
    if code not in kb.rates:
        raise ApiError(f"unknown currency code {code!r}")
    return kb.rates[code]


TRAIN_TOOLS = ("calculator", "unit_converter", "world_atlas", "inventory", "text_tools")
HELDOUT_TOOLS = ("calendar", "list_tools", "currency_exchange", "library")


def validate(api: Api, args: dict[str, Any]) -> None:
    """Check `args` against the API's schema; raise `ApiError` with the field at fault."""
    unknown = sorted(set(args) - set(api.params))
    if unknown:
        raise ApiError(f"unknown field(s): {', '.join(unknown)} (expected: {', '.join(api.params)})")
    for name in api.required:
        if name not in args:
            raise ApiError(f"missing required field '{name}'")
    for name, value in args.items():
        kind = api.params[name].get("type")
        if kind == "string":
            if not isinstance(value, str):
                raise ApiError(f"invalid type for '{name}': expected string, got {type(value).__name__}")
            if len(value) > MAX_STRING:
                raise ApiError(f"field '{name}' is longer than {MAX_STRING} characters")
            if name != "text" and ("/" in value or "\\" in value or ".." in value or not _SAFE_NAME.match(value)):
                raise ApiError(f"invalid value for '{name}': {value[:40]!r} is not a valid name")
        elif kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ApiError(f"invalid type for '{name}': expected number, got {type(value).__name__}")
        elif kind == "array" and not isinstance(value, list):
            raise ApiError(f"invalid type for '{name}': expected array, got {type(value).__name__}")


class ToolAPIEnvironment(Environment):
    name: ClassVar[str] = "toolapi"

    def __init__(self) -> None:
        self.apis: dict[str, Api] = {}

    def reset(self, task: Task) -> list[Message]:
        inventory = Inventory(task.data.get("inventory", {}))
        self.apis = {a.function_name: a for a in build_apis(knowledge_base(), inventory)}
        return [system_prompt(), user(task.query)]

    def step(self, call: ToolCall) -> ToolMessage:
        api = self.apis.get(call.name)
        if api is None:
            return self.observation(call, {"error": f"No such function name: {call.name}", "response": ""},
                                    self.max_observation_chars)
        try:
            validate(api, call.arguments)
            result = api.fn(**call.arguments)
        except ApiError as e:
            return self.observation(call, {"error": str(e), "response": ""}, self.max_observation_chars)
        except (TypeError, ValueError, OverflowError, ZeroDivisionError) as e:
            return self.observation(call, {"error": f"bad request: {e}", "response": ""}, self.max_observation_chars)
        return self.observation(call, {"error": "", "response": result}, self.max_observation_chars)

    def verify(self, task: Task, final_answer: str | None, transcript: list[Message]) -> Verdict:
        calls = [c.name for m in transcript if isinstance(m, AssistantMessage) for c in m.tool_calls
                 if c.name != self.final_tool]
        if final_answer is None or not final_answer.strip():
            return Verdict(False, "no final answer")
        if task.expected.get("no_tool"):
            if calls:
                return Verdict(False, f"called {calls[0]} although no tool was needed or able to help")
            if task.expected.get("decline") and not re.search(
                    r"can(?:'|no)t|unable|not able|no tool|don't have|do not have", final_answer, re.I):
                return Verdict(False, "did not say the request cannot be done")
        missing = [v for v in task.expected.get("values", []) if not answer_contains(final_answer, v)]
        if missing:
            return Verdict(False, f"answer lacks {missing}")
        state = task.expected.get("inventory")
        if state:
            inv = _final_inventory(self, state)
            if inv != state:
                return Verdict(False, f"inventory is {inv}, expected {state}")
        return Verdict(True, "answer verified")


def _final_inventory(env: ToolAPIEnvironment, expected: dict[str, int]) -> dict[str, int]:
    api = env.apis.get("get_stock_for_inventory")
    if api is None:
        return {}
    return {item: api.fn(item)["stock"] for item in expected}


def answer_contains(answer: str, value: Any) -> bool:
    """Does `answer` state `value`? Numbers may be written with separators or rounded to 2 decimals."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for token in re.findall(r"-?\d[\d,]*(?:\.\d+)?", answer):
            try:
                x = float(token.replace(",", ""))
            except ValueError:
                continue
            if abs(x - value) <= max(0.006, 1e-4 * abs(value)):
                return True
        return False
    return str(value).lower() in answer.lower()


def call(name: str, n: int, thought: str, /, **args: Any) -> AssistantMessage:
    return AssistantMessage(content=thought, tool_calls=[ToolCall(id=f"call_{n}", name=name, arguments=args)])


def finish(n: int, thought: str, answer: str) -> AssistantMessage:
    return AssistantMessage(content=thought, tool_calls=[give_answer(answer, f"call_{n}")])


def response(obs: ToolMessage | None) -> dict[str, Any]:
    payload = json.loads(obs.content) if obs is not None else {}
    if payload.get("error"):
        raise RuntimeError(f"expert call failed: {payload['error']}")
    return payload["response"]  # type: ignore[no-any-return]
