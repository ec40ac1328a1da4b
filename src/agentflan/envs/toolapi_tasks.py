"""Seeded task generators for the Tool-API environment, each with a scripted expert and a verifier.

Kinds: `single` (one call), `multi` (independent calls), `dependent` (a call needs an earlier
result), `stateful` (the inventory changes and is checked), `no_tool` (a request the offered
tools need not serve: any call fails it), `unserviceable` (no offered tool can serve it: the
answer must say so, without calls). Train and held-out templates are disjoint, and so are their
tool groups (`TRAIN_TOOLS` vs `HELDOUT_TOOLS`) and seeds. Every task offers the tools it needs plus
a distractor tool group of the same split (`DISTRACTORS`).

The expert solves a task by really calling the tools and reading the observations: it is a
generator that yields assistant messages (a thought and a call) and receives each result.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentflan.envs.base import Expert, Task
from agentflan.envs.toolapi import (
    HELDOUT_TOOLS,
    TRAIN_TOOLS,
    Inventory,
    KnowledgeBase,
    build_apis,
    call,
    finish,
    knowledge_base,
    response,
)
from agentflan.formats.tflan import pick
from agentflan.seeds import task_rng


def _fmt(x: float) -> str:
    return f"{x:,.2f}".rstrip("0").rstrip(".") if isinstance(x, float) and not x.is_integer() else f"{int(x):,}"


def _say(task: Task, k: int, *options: str, **extra: Any) -> str:
    """The expert's `k`-th thought: one of `options` (varied by task id), filled with the task's
    data and `extra` (the results it read)."""
    values = {**task.data, **extra}
    d = task.data
    if "value" in d:
        values.setdefault("v", d["value"])
    return pick(options, task.id, k).format(**values)


@dataclass(frozen=True)
class Template:
    name: str
    split: str
    kind: str
    tools: tuple[str, ...]
    texts: tuple[str, ...]
    make: Callable[[random.Random, KnowledgeBase], tuple[dict[str, Any], dict[str, Any]]]
    """(data for the texts and the expert, expected values for the verifier)."""
    expert: Callable[[Task], Expert]


# ---- train templates -----------------------------------------------------------------------------

def _make_convert(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    u1, u2 = rng.sample(["km", "mile", "m", "ft"], 2)
    v = rng.choice([rng.randint(2, 500), round(rng.uniform(1, 100), 1)])
    from agentflan.envs.toolapi import _LENGTH
    r = round(v * _LENGTH[u1] / _LENGTH[u2], 4)
    return {"value": v, "u1": u1, "u2": u2}, {"values": [r]}


def _expert_convert(task: Task) -> Expert:
    d = task.data
    obs = yield call("convert_length_for_unit_converter", 0, _say(
        task, 0, "I need to convert {v} {u1} into {u2}, so I'll use the length converter.",
        "Converting {v} {u1} to {u2} is a job for the unit converter's length conversion.",
        "The length converter turns {v} {u1} into {u2} for me."), value=d["value"], from_unit=d["u1"], to_unit=d["u2"])
    r = _fmt(response(obs)["value"])
    yield finish(1, _say(task, 1, "The converter says {v} {u1} is {r} {u2}, so I can answer.",
                         "The converter returned {r} {u2} for {v} {u1}.",
                         "{v} {u1} comes out as {r} {u2}; that answers the question.", r=r),
                 f"{d['value']} {d['u1']} is {r} {d['u2']}.")


def _make_capital(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    c = rng.choice(sorted(kb.countries))
    return {"country": c}, {"values": [kb.countries[c]["capital"]]}


def _expert_capital(task: Task) -> Expert:
    c = task.data["country"]
    obs = yield call("get_country_for_world_atlas", 0, _say(
        task, 0, "The atlas has facts about countries; I'll look up {country} to find its capital.",
        "To find the capital of {country}, I ask the world atlas about that country.",
        "The world atlas's country facts include the capital, so I look up {country}."), name=c)
    cap = response(obs)["capital"]
    yield finish(1, _say(task, 1, "The atlas says the capital of {country} is {cap}.",
                         "According to the atlas, {cap} is the capital of {country}.",
                         "The country record names {cap} as the capital of {country}, which answers it.", cap=cap),
                 f"The capital of {c} is {cap}.")


def _make_two_cities(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    a, b = rng.sample(sorted(kb.cities), 2)
    return {"a": a, "b": b}, {"values": [kb.cities[a]["population"], kb.cities[b]["population"]]}


def _expert_two_cities(task: Task) -> Expert:
    a, b = task.data["a"], task.data["b"]
    pa = response((yield call("get_city_for_world_atlas", 0, _say(
        task, 0, "I need the population of {a} and of {b}. First {a}.",
        "I look up both cities in the atlas, starting with {a}.",
        "The atlas gives a city's population; {a} first, then {b}."), name=a)))["population"]
    pb = response((yield call("get_city_for_world_atlas", 1, _say(
        task, 1, "{a} has {pa} people. Now {b}.", "The atlas lists {pa} inhabitants for {a}; next, {b}.",
        "{a}: {pa} people. I still need {b}.", pa=_fmt(pa)), name=b)))["population"]
    yield finish(2, _say(task, 2, "{a} has {pa} people and {b} has {pb}, so I have both populations.",
                         "Both are in: {pa} for {a} and {pb} for {b}.",
                         "The atlas gives {pb} for {b}, and {a} had {pa}; that answers both parts.",
                         pa=_fmt(pa), pb=_fmt(pb)),
                 f"{a} has {_fmt(pa)} inhabitants and {b} has {_fmt(pb)}.")


def _make_capital_population(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    c = rng.choice(sorted(kb.countries))
    cap = kb.countries[c]["capital"]
    return {"country": c}, {"values": [kb.cities[cap]["population"]]}


def _expert_capital_population(task: Task) -> Expert:
    c = task.data["country"]
    cap = response((yield call("get_country_for_world_atlas", 0, _say(
        task, 0, "First I need the capital of {country}, then that city's population.",
        "The atlas can tell me the capital of {country}; I look that up first.",
        "Two lookups: the capital of {country}, then its population. The country comes first."), name=c)))["capital"]
    pop = response((yield call("get_city_for_world_atlas", 1, _say(
        task, 1, "The capital of {country} is {cap}; now I look up its population.",
        "{cap} is the capital, so I ask the atlas about {cap}.",
        "The atlas names {cap} as the capital of {country}. Next, the population of {cap}.", cap=cap),
                               name=cap)))["population"]
    yield finish(2, _say(task, 2, "{cap}, the capital of {country}, has {pop} inhabitants.",
                         "The atlas gives {pop} people for {cap}, which is the capital of {country}.",
                         "{cap} has a population of {pop}; that is the answer.", cap=cap, pop=_fmt(pop)),
                 f"The capital of {c}, {cap}, has {_fmt(pop)} inhabitants.")


def _make_double_population(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    city = rng.choice(sorted(kb.cities))
    k = rng.choice([2, 3, 4])
    return {"city": city, "k": k}, {"values": [kb.cities[city]["population"] * k]}


def _expert_double_population(task: Task) -> Expert:
    city, k = task.data["city"], task.data["k"]
    pop = response((yield call("get_city_for_world_atlas", 0, _say(
        task, 0, "I need the population of {city} first, then I multiply it by {k}.",
        "The atlas gives the population of {city}; after that, the calculator multiplies.",
        "First {city}'s population from the atlas."), name=city)))["population"]
    r = response((yield call("multiply_for_calculator", 1, _say(
        task, 1, "{city} has {pop} people; I multiply by {k}.", "The population is {pop}, so I compute {pop} x {k}.",
        "With {pop} inhabitants in {city}, the calculator multiplies by {k}.", pop=_fmt(pop)),
                             a=pop, b=k)))["result"]
    yield finish(2, _say(task, 2, "{k} times {pop} is {r}, which answers the question.",
                         "The calculator gives {r} for {pop} x {k}.",
                         "{r} is {k} times the population of {city}.", pop=_fmt(pop), r=_fmt(r)),
                 f"{k} times the population of {city} is {_fmt(r)}.")


def _make_inventory(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    item = rng.choice(["apples", "bolts", "lamps", "notebooks", "cables", "mugs"])
    start, add, remove = rng.randint(0, 20), rng.randint(5, 40), rng.randint(1, 5)
    final = start + add - remove
    return ({"item": item, "add": add, "remove": remove, "inventory": {item: start}},
            {"values": [final], "inventory": {item: final}})


def _expert_inventory(task: Task) -> Expert:
    d = task.data
    s1 = response((yield call("add_item_for_inventory", 0, _say(
        task, 0, "I add {add} {item} to the stock first, then remove {remove}.",
        "Two inventory changes: +{add} {item}, then -{remove}. The addition first.",
        "First I record the {add} {item} that came in."), item=d["item"], quantity=d["add"])))["stock"]
    s2 = response((yield call("remove_item_for_inventory", 1, _say(
        task, 1, "Stock is now {s1} {item}; next I remove {remove}.", "After the addition there are {s1}; now I take "
        "out {remove}.", "The inventory shows {s1} {item}. Next, the {remove} removed.", s1=s1),
                              item=d["item"], quantity=d["remove"])))["stock"]
    yield finish(2, _say(task, 2, "Both changes are done: {s2} {item} are left.",
                         "After removing {remove}, the stock of {item} is {s2}.",
                         "The inventory now holds {s2} {item}, which is what the user asked for.", s2=s2),
                 f"Done: {s2} {d['item']} are left in stock.")


_NAMES = ["Ana", "Bilal", "Chen", "Dara", "Elif", "Femi", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lina"]


def _make_greeting(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    n = rng.choice(_NAMES)
    return {"name": n}, {"values": [n], "no_tool": True}


def _expert_greeting(task: Task) -> Expert:
    n = task.data["name"]
    yield finish(0, _say(task, 0, "A welcome for {name} needs no tool; I write it myself.",
                         "This needs no tool: I can greet {name} directly.",
                         "None of the tools is needed to say hello to {name}."),
                 f"Hello {n}, it's great to have you on the team!")
    return


def _make_booking(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    return ({"n": rng.randint(2, 8), "city": rng.choice(sorted(kb.cities))}, {"no_tool": True, "decline": True})


def _expert_booking(task: Task) -> Expert:
    yield finish(0, _say(task, 0, "None of my tools can make a restaurant reservation in {city}.",
                         "Booking a table is not something any offered tool does, so I say so.",
                         "No tool here can reserve a table for {n}; I explain that instead of calling one."),
                 "I can't book a table: none of my tools can make restaurant reservations. I can help you with "
                 "unit conversions, facts about places or calculations instead.")
    return


# ---- held-out templates --------------------------------------------------------------------------

def _make_days(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    import datetime as dt
    a = dt.date(2020, 1, 1) + dt.timedelta(days=rng.randint(0, 1500))
    b = a + dt.timedelta(days=rng.randint(1, 400))
    return {"a": a.isoformat(), "b": b.isoformat()}, {"values": [(b - a).days]}


def _expert_days(task: Task) -> Expert:
    d = task.data
    n = response((yield call("days_between_for_calendar", 0, _say(
        task, 0, "The calendar can count the days from {a} to {b}.", "I ask the calendar for the days between {a} "
        "and {b}."), start=d["a"], end=d["b"])))["days"]
    yield finish(1, _say(task, 1, "The calendar counts {n} days from {a} to {b}.", "{n} days separate {a} and {b}.",
                         n=n), f"There are {n} days from {d['a']} to {d['b']}.")


def _make_author(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    t = rng.choice(sorted(kb.books))
    return {"title": t}, {"values": [kb.books[t]["author"]]}


def _expert_author(task: Task) -> Expert:
    t = task.data["title"]
    a = response((yield call("get_book_for_library", 0, _say(
        task, 0, "I look up {title} in the library to find its author.", "The library's book record names the "
        "author of {title}."), title=t)))["author"]
    yield finish(1, _say(task, 1, "The library says {title} is by {author}.", "{author} wrote {title}.", author=a),
                 f"{t} was written by {a}.")


def _make_weekdays(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    import datetime as dt
    a, b = (dt.date(2021, 1, 1) + dt.timedelta(days=rng.randint(0, 2000)) for _ in range(2))
    return {"a": a.isoformat(), "b": b.isoformat()}, {"values": [a.strftime("%A"), b.strftime("%A")]}


def _expert_weekdays(task: Task) -> Expert:
    d = task.data
    w1 = response((yield call("weekday_for_calendar", 0, _say(
        task, 0, "I check the weekday of {a} first, then {b}.", "Two dates to check; {a} first."),
        date=d["a"])))["weekday"]
    w2 = response((yield call("weekday_for_calendar", 1, _say(
        task, 1, "{a} is a {w1}; now {b}.", "The calendar says {a} is a {w1}. Next, {b}.", w1=w1),
        date=d["b"])))["weekday"]
    yield finish(2, _say(task, 2, "{a} is a {w1} and {b} is a {w2}.", "I have both: a {w1} and a {w2}.",
                         w1=w1, w2=w2), f"{d['a']} is a {w1} and {d['b']} is a {w2}.")


def _make_author_books(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    t = rng.choice(sorted(kb.books))
    author = kb.books[t]["author"]
    return {"title": t}, {"values": [sum(b["author"] == author for b in kb.books.values())]}


def _expert_author_books(task: Task) -> Expert:
    t = task.data["title"]
    a = response((yield call("get_book_for_library", 0, _say(
        task, 0, "First I need the author of {title}, then their books.", "The author of {title} comes first."),
        title=t)))["author"]
    titles = response((yield call("books_by_author_for_library", 1, _say(
        task, 1, "{title} is by {author}; now I list their books.", "{author} wrote {title}, so I ask for all of "
        "{author}'s books.", author=a), author=a)))["titles"]
    yield finish(2, _say(task, 2, "The library lists {n} books by {author}.", "{author} has {n} titles in the "
                         "library.", author=a, n=len(titles)), f"The library has {len(titles)} books by {a}.")


def _make_weekday_after(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    import datetime as dt
    d = dt.date(2022, 1, 1) + dt.timedelta(days=rng.randint(0, 1000))
    n = rng.randint(3, 200)
    return {"date": d.isoformat(), "n": n}, {"values": [(d + dt.timedelta(days=n)).strftime("%A")]}


def _expert_weekday_after(task: Task) -> Expert:
    d = task.data
    day = response((yield call("add_days_for_calendar", 0, _say(
        task, 0, "First the date {n} days after {date}, then its weekday.", "I add {n} days to {date} first."),
        date=d["date"], days=d["n"])))["date"]
    w = response((yield call("weekday_for_calendar", 1, _say(
        task, 1, "That is {day}; now its weekday.", "{n} days after {date} is {day}. Which weekday is it?", day=day),
        date=day)))["weekday"]
    yield finish(2, _say(task, 2, "{day} is a {w}.", "The calendar says {day} falls on a {w}.", day=day, w=w),
                 f"{d['n']} days after {d['date']} is {day}, a {w}.")


def _make_average(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    nums = [rng.randint(1, 99) for _ in range(rng.randint(3, 7))]
    return {"nums": nums, "nums_text": ", ".join(map(str, nums))}, {"values": [round(sum(nums) / len(nums), 4)]}


def _expert_average(task: Task) -> Expert:
    r = response((yield call("average_for_list_tools", 0, _say(
        task, 0, "The list tools compute the mean of {nums_text}.", "I ask the list tools for the average of "
        "{nums_text}."), numbers=task.data["nums"])))["result"]
    yield finish(1, _say(task, 1, "The mean of {nums_text} is {r}.", "The average comes out as {r}.", r=_fmt(r)),
                 f"The average is {_fmt(r)}.")


def _make_currency(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    code = rng.choice(sorted(c for c in kb.rates if c != "USD"))
    amount = rng.randint(5, 900)
    return {"amount": amount, "code": code}, {"values": [round(amount * kb.rates[code], 4)]}


def _expert_currency(task: Task) -> Expert:
    d = task.data
    r = response((yield call("convert_currency_for_currency_exchange", 0, _say(
        task, 0, "I convert {amount} USD to {code} with the currency exchange.", "The exchange converts {amount} "
        "USD into {code}."), amount=d["amount"], from_currency="USD", to_currency=d["code"])))["amount"]
    yield finish(1, _say(task, 1, "{amount} USD is {r} {code}.", "The exchange gives {r} {code} for {amount} USD.",
                         r=_fmt(r)), f"{d['amount']} USD is {_fmt(r)} {d['code']}.")


_WORDS = ["ready", "acknowledged", "blue", "sunrise", "lantern", "copper"]


def _make_echo(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    w = rng.choice(_WORDS)
    return {"word": w}, {"values": [w], "no_tool": True}


def _expert_echo(task: Task) -> Expert:
    yield finish(0, _say(task, 0, "A plain reply is enough here: just the word {word}.",
                         "No tool is needed to reply with {word}."), task.data["word"])
    return


def _make_email(rng: random.Random, kb: KnowledgeBase) -> tuple[dict[str, Any], dict[str, Any]]:
    return {"name": rng.choice(_NAMES)}, {"no_tool": True, "decline": True}


def _expert_email(task: Task) -> Expert:
    yield finish(0, _say(task, 0, "No tool here can send an email to {name}.", "Sending email is not something any "
                         "offered tool does."),
                 f"I can't send an email to {task.data['name']}: none of my tools can send messages. I can help you "
                 "draft the text instead.")
    return


TEMPLATES: list[Template] = [
    Template("convert_length", "train", "single", ("unit_converter",),
             ("Convert {value} {u1} to {u2}.", "How many {u2} is {value} {u1}?",
              "I walked {value} {u1} today. What is that in {u2}?"), _make_convert, _expert_convert),
    Template("capital", "train", "single", ("world_atlas",),
             ("What is the capital of {country}?", "Which city is the capital of {country}?"),
             _make_capital, _expert_capital),
    Template("two_cities", "train", "multi", ("world_atlas",),
             ("What are the populations of {a} and {b}?", "How many people live in {a} and how many in {b}?"),
             _make_two_cities, _expert_two_cities),
    Template("capital_population", "train", "dependent", ("world_atlas",),
             ("What is the population of the capital of {country}?",
              "How many people live in the capital city of {country}?"), _make_capital_population,
             _expert_capital_population),
    Template("population_times", "train", "dependent", ("world_atlas", "calculator"),
             ("What would {k} times the population of {city} be?",), _make_double_population,
             _expert_double_population),
    Template("inventory", "train", "stateful", ("inventory",),
             ("Add {add} {item} to the inventory, then remove {remove}, and tell me how many are left.",
              "We received {add} {item} and sold {remove}. Update the stock and tell me the new count."),
             _make_inventory, _expert_inventory),
    Template("greeting", "train", "no_tool", (),
             ("Please write a one-line welcome message for our new colleague {name}.",
              "Say hello to {name} in one friendly sentence."), _make_greeting, _expert_greeting),
    Template("booking", "train", "unserviceable", (),
             ("Book a table for {n} at a restaurant in {city} tonight.",
              "Reserve a table for {n} people in {city} for this evening, please."), _make_booking, _expert_booking),
    Template("days_between", "heldout", "single", ("calendar",),
             ("How many days are there from {a} to {b}?", "Count the days between {a} and {b}."),
             _make_days, _expert_days),
    Template("author", "heldout", "single", ("library",), ("Who wrote {title}?",), _make_author, _expert_author),
    Template("weekdays", "heldout", "multi", ("calendar",), ("On which weekdays do {a} and {b} fall?",),
             _make_weekdays, _expert_weekdays),
    Template("author_books", "heldout", "dependent", ("library",),
             ("How many books by the author of {title} does the library hold?",), _make_author_books,
             _expert_author_books),
    Template("weekday_after", "heldout", "dependent", ("calendar",), ("What weekday is it {n} days after {date}?",),
             _make_weekday_after, _expert_weekday_after),
    Template("average", "heldout", "single", ("list_tools",), ("What is the average of {nums_text}?",),
             _make_average, _expert_average),
    Template("currency", "heldout", "single", ("currency_exchange",), ("How much is {amount} USD in {code}?",),
             _make_currency, _expert_currency),
    Template("echo", "heldout", "no_tool", (), ("Reply with only the word '{word}', nothing else.",),
             _make_echo, _expert_echo),
    Template("email", "heldout", "unserviceable", (), ("Send an email to {name} about tomorrow's meeting.",),
             _make_email, _expert_email),
]
BY_NAME = {t.name: t for t in TEMPLATES}
SPLIT_SEED = {"train": 1_000_003, "heldout": 2_000_003}


DISTRACTORS = 1
"""Tool groups offered beside the ones a task needs. One keeps a prompt near 400 tokens (every API
is listed with its JSON schema): two doubled the cost of every training and evaluation step on a
CPU for little extra retrieval difficulty."""


def generate(n: int, split: str, seed: int = 0) -> list[Task]:
    """`n` tasks of `split`, cycling through its templates; same arguments, same tasks."""
    kb = knowledge_base()
    groups = TRAIN_TOOLS if split == "train" else HELDOUT_TOOLS
    templates = [t for t in TEMPLATES if t.split == split]
    rng = task_rng(seed, SPLIT_SEED[split])
    apis = build_apis(kb, Inventory({}))
    tasks = []
    for i in range(n):
        tpl = templates[i % len(templates)]
        data, expected = tpl.make(rng, kb)
        distractors = rng.sample([g for g in groups if g not in tpl.tools], k=min(DISTRACTORS, len(groups) - len(tpl.tools)))
        offered = [*tpl.tools, *distractors]
        tools = [a.spec() for a in apis if a.tool in offered]
        text = rng.choice(tpl.texts)
        tasks.append(Task(id=f"toolapi-{split}-{seed}-{i:05d}", env="toolapi", split=split, kind=tpl.kind,
                          query=text.format(**data), tools=tools, expected=expected, data=data,
                          template=f"{tpl.name}#{tpl.texts.index(text)}"))
    return tasks


def expert_for(task: Task) -> Expert:
    return BY_NAME[task.template.split("#")[0]].expert(task)
