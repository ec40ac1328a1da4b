"""Seeded DB tasks in AgentBench's format, with a scripted SQL expert.

Train and held-out tasks use different tables and templates. The gold SQL is MySQL (AgentBench's
dialect: `CAST(... AS SIGNED / DOUBLE)`, which MySQL 8, MariaDB and, translated, SQLite all run).
Every expected value is computed by running the gold SQL on the task's own table in the `sqlite`
engine (SELECT kinds: the label; INSERT/UPDATE/DELETE: the AgentBench table hash of the resulting
state), so tasks are correct by construction.
"""

from __future__ import annotations

import ast
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agentflan.envs.base import Expert, Task
from agentflan.envs.db import DB_TOOLS, SQLiteEngine
from agentflan.envs.db_engine import quote_name
from agentflan.formats.tflan import pick
from agentflan.schema import AssistantMessage, ToolCall
from agentflan.seeds import task_rng

_FIRST = ["Ana", "Bilal", "Chen", "Dara", "Elif", "Femi", "Goran", "Hana", "Ivo", "Jun", "Kemal", "Lina", "Mato",
          "Nora", "Omar", "Pia", "Quinn", "Rosa", "Sami", "Tove"]
_LAST = ["Berg", "Costa", "Diaz", "Eriksen", "Fischer", "Garcia", "Horvat", "Ito", "Jensen", "Kowal", "Lopez", "Moreau"]


@dataclass(frozen=True)
class Schema:
    name: str
    columns: tuple[str, ...]
    row: Callable[[random.Random, int], list[Any]]


def _employee(rng: random.Random, i: int) -> list[Any]:
    return [f"{rng.choice(_FIRST)} {rng.choice(_LAST)} {i}", rng.choice(["Sales", "R&D", "Support", "Finance"]),
            str(rng.randrange(30_000, 120_000, 500)), rng.choice(["Lyon", "Porto", "Graz", "Tartu", "Split"]),
            str(rng.randint(21, 64))]


def _product(rng: random.Random, i: int) -> list[Any]:
    return [f"{rng.choice(['Desk', 'Lamp', 'Chair', 'Shelf', 'Mug', 'Pen'])} {i}",
            rng.choice(["Office", "Home", "Kitchen"]), f"{rng.randint(2, 400)}.{rng.choice(['00', '50', '99'])}",
            str(rng.randint(0, 300))]


def _student(rng: random.Random, i: int) -> list[Any]:
    return [f"{rng.choice(_FIRST)} {rng.choice(_LAST)} {i}", str(rng.randint(7, 12)), str(rng.randint(40, 100)),
            rng.choice(["Chess", "Robotics", "Drama", "Choir", "Football"])]


def _flight(rng: random.Random, i: int) -> list[Any]:
    cities = ["Oslo", "Lisbon", "Riga", "Naples", "Bergen", "Malaga"]
    o, d = rng.sample(cities, 2)
    return [f"AF{100 + i}", o, d, str(rng.randint(45, 360)), str(rng.randint(40, 600))]


SCHEMAS = {
    "employees": Schema("Employees", ("Name", "Department", "Salary", "City", "Age"), _employee),
    "products": Schema("Product Catalog", ("Product", "Category", "Price", "Stock"), _product),
    "students": Schema("Student Records", ("Name", "Grade", "Score", "Club"), _student),
    "flights": Schema("Flight Schedule", ("Flight", "Origin", "Destination", "Duration min", "Price"), _flight),
}


@dataclass(frozen=True)
class DBTemplate:
    name: str
    split: str
    kind: str
    schema: str
    make: Callable[[random.Random, list[list[Any]], str], tuple[str, str, dict[str, str]]]
    """(question, gold SQL, the task's entities for the expert's thoughts)."""
    plans: tuple[str, ...] = ()
    """The expert's first thought: the plan, with the task's own entities (`{table}` and the slots)."""
    results: tuple[str, ...] = ()
    """The expert's last thought: what the result says (`{result}` and the slots)."""


def _col(rows: list[list[Any]], i: int, rng: random.Random) -> Any:
    return rng.choice(rows)[i]


def _pick(rows: list[list[Any]], i: int, rng: random.Random, changes: Callable[[list[Any]], bool]) -> Any:
    """Column `i` of a random row the update really changes (a no-op update would pass unsolved)."""
    candidates = [r for r in rows if changes(r)] or rows
    return rng.choice(candidates)[i]


def _t(schema: str) -> str:
    return quote_name(SCHEMAS[schema].name)


TEMPLATES = [
    DBTemplate("count_department", "train", "select", "employees", lambda rng, rows, t: (
        (d := _col(rows, 1, rng)) and f"How many employees work in the {d} department?",
        f"SELECT COUNT(*) FROM {t} WHERE `Department` = '{d}'", {"dept": d}),
        ("To count the employees of the {dept} department, I count the rows of {table} whose Department is "
         "'{dept}'.",
         "The {dept} headcount is the number of rows in {table} with Department = '{dept}', so I count them.",
         "I need how many rows of {table} belong to the {dept} department; COUNT(*) with a filter on "
         "Department gives it."),
        ("The {dept} department has {result} employees, so the answer is {result}.",
         "The count is {result}: {result} employees work in {dept}.",
         "{result} rows match Department = '{dept}', so {result} employees work there.")),
    DBTemplate("max_salary", "train", "select", "employees", lambda rng, rows, t: (
        (c := _col(rows, 3, rng)) and f"What is the highest salary among employees in {c}?",
        f"SELECT MAX(CAST(`Salary` AS SIGNED)) FROM {t} WHERE `City` = '{c}'", {"city": c}),
        ("Salaries are stored as text in {table}, so I cast them to integers and take the maximum over the "
         "employees in {city}.",
         "I take the largest Salary among the rows with City = '{city}', cast to a number because the column "
         "holds text.",
         "For the top salary in {city} I filter {table} on City and take MAX of the salaries as integers."),
        ("The highest salary among the employees in {city} is {result}.",
         "The maximum comes back as {result}, so the top salary in {city} is {result}.",
         "{result} is the largest salary in {city}, which answers the question.")),
    DBTemplate("product_price", "train", "select", "products", lambda rng, rows, t: (
        (p := _col(rows, 0, rng)) and f"What is the price of {p}?",
        f"SELECT `Price` FROM {t} WHERE `Product` = '{p}'", {"product": p}),
        ("I look up the Price of {product} in {table}.",
         "The price of {product} is in its row of {table}, so I select Price where Product is '{product}'.",
         "I select the Price column of the {product} row."),
        ("{product} costs {result}, so the answer is {result}.",
         "The row says {product} is priced {result}.",
         "The price of {product} is {result}.")),
    DBTemplate("insert_product", "train", "insert", "products", lambda rng, rows, t: (
        (p := f"Stool {rng.randint(500, 999)}") and f"Add a new product {p} in the Home category priced 35.00 "
                                                    f"with 12 in stock.",
        f"INSERT INTO {t} (`Product`, `Category`, `Price`, `Stock`) VALUES ('{p}', 'Home', '35.00', '12')",
        {"product": p}),
        ("I insert a row for {product} into {table} with all four columns: Home, 35.00 and a stock of 12.",
         "Adding {product} means one INSERT into {table} with its category, price and stock.",
         "I add {product} to {table} as a new row: category Home, price 35.00, stock 12."),
        ("The row for {product} is inserted, so the change is done.",
         "{product} is now in {table}; nothing else to change.",
         "The insert of {product} succeeded, which completes the request.")),
    DBTemplate("update_city", "train", "update", "employees", lambda rng, rows, t: (
        (n := _pick(rows, 0, rng, lambda r: r[3] != "Tartu")) and f"{n} moved to Tartu. Update their city.",
        f"UPDATE {t} SET `City` = 'Tartu' WHERE `Name` = '{n}'", {"name": n}),
        ("I set the City of {name} to Tartu with an UPDATE on {table}.",
         "Only {name}'s row changes: I update its City to 'Tartu'.",
         "{name} now lives in Tartu, so I update the City column of their row in {table}."),
        ("{name}'s city is now Tartu, so the update is done.",
         "The row of {name} is updated to Tartu; the change is complete.",
         "The UPDATE changed {name}'s city to Tartu, which is all the request needs.")),
    DBTemplate("avg_score", "heldout", "select", "students", lambda rng, rows, t: (
        (c := _col(rows, 3, rng)) and f"What is the average score of the {c} club members?",
        f"SELECT ROUND(AVG(CAST(`Score` AS DOUBLE)), 2) FROM {t} WHERE `Club` = '{c}'", {"club": c}),
        ("I average the scores of the {club} club members in {table}, cast to numbers.",),
        ("The {club} club's average score is {result}.",)),
    DBTemplate("shortest_flight", "heldout", "select", "flights", lambda rng, rows, t: (
        (o := _col(rows, 1, rng)) and f"What is the shortest flight duration in minutes from {o}?",
        f"SELECT MIN(CAST(`Duration min` AS SIGNED)) FROM {t} WHERE `Origin` = '{o}'", {"origin": o}),
        ("I take the minimum duration among the flights from {origin} in {table}.",),
        ("The shortest flight from {origin} takes {result} minutes.",)),
    DBTemplate("student_club", "heldout", "select", "students", lambda rng, rows, t: (
        (n := _col(rows, 0, rng)) and f"Which club is {n} in?", f"SELECT `Club` FROM {t} WHERE `Name` = '{n}'",
        {"name": n}),
        ("I look up the Club of {name} in {table}.",),
        ("{name} is in the {result} club.",)),
    DBTemplate("delete_flight", "heldout", "delete", "flights", lambda rng, rows, t: (
        (f := _col(rows, 0, rng)) and f"Flight {f} was cancelled. Remove it from the schedule.",
        f"DELETE FROM {t} WHERE `Flight` = '{f}'", {"flight": f}),
        ("I delete the row of flight {flight} from {table}.",),
        ("Flight {flight} is removed from the schedule.",)),
    DBTemplate("update_score", "heldout", "update", "students", lambda rng, rows, t: (
        (n := _pick(rows, 0, rng, lambda r: r[2] != "88")) and f"Correct the score of {n} to 88.",
        f"UPDATE {t} SET `Score` = '88' WHERE `Name` = '{n}'", {"name": n}),
        ("I set the Score of {name} to 88 in {table}.",),
        ("{name}'s score is corrected to 88.",)),
]
BY_NAME = {t.name: t for t in TEMPLATES}
SPLIT_SEED = {"train": 3_000_017, "heldout": 4_000_037}


def _db(schema: Schema, rows: list[list[Any]]) -> SQLiteEngine:
    engine = SQLiteEngine()
    engine.build({"name": schema.name, "columns": [{"name": c} for c in schema.columns], "rows": rows})
    return engine


def _run(engine: SQLiteEngine, sql: str) -> list[tuple[Any, ...]]:
    res = engine.execute(sql, 10_000, 60.0)
    if res.error is not None:  # a template's gold SQL: a bug here, never the agent's doing
        raise RuntimeError(f"gold SQL failed: {sql}: {res.error}")
    return res.rows or []


def generate(n: int, split: str, seed: int = 0) -> list[Task]:
    rng = task_rng(seed, SPLIT_SEED[split])
    templates = [t for t in TEMPLATES if t.split == split]
    tasks = []
    for i in range(n):
        tpl = templates[i % len(templates)]
        schema = SCHEMAS[tpl.schema]
        rows = [schema.row(rng, k) for k in range(rng.randint(8, 25))]
        question, sql, slots = tpl.make(rng, rows, quote_name(schema.name))
        engine = _db(schema, rows)
        expected: dict[str, Any] = {"gold_sql": [sql]}
        if tpl.kind == "select":
            expected["label"] = [v for row in _run(engine, sql) for v in row]
        else:
            _run(engine, sql)
            expected["answer_md5"] = engine.table_hash(schema.name, list(schema.columns))
        engine.close()
        tasks.append(Task(id=f"db-{split}-{seed}-{i:05d}", env="db", split=split, kind=tpl.kind,
                          query=question, tools=list(DB_TOOLS), expected=expected, template=tpl.name,
                          data={"table": {"name": schema.name, "rows": rows,
                                          "columns": [{"name": c, "type": "TEXT"} for c in schema.columns]},
                                "slots": slots}))
    return tasks


def expert_for(task: Task, engine: str = "sqlite", sql_mode: str | None = None) -> Expert:
    """Run the task's SQL (the gold query, or one derived on `engine` in `sql_mode`, the episode's,
    for AgentBench tasks), then answer with what it returned (nothing when the query failed: an error is never
    an answer).

    The thoughts say what the expert does with the task's own entities, and what it read: "The
    Finance department has 7 employees, so the answer is 7." (phrasings vary by task id)."""
    from agentflan.envs.db import derive_select_sql

    if task.kind == "select":
        sql = task.expected["gold_sql"][0] if task.split != "dev" else derive_select_sql(task, engine, sql_mode)
        statements = [sql] if sql else []
    else:
        statements = list(task.expected["gold_sql"])
    tpl = BY_NAME.get(task.template)
    slots = {"table": task.data["table"]["name"], **task.data.get("slots", {})}
    if tpl is not None and tpl.plans:
        plan = pick(tpl.plans, task.id, 0).format(**slots)
    else:
        plan = (f"I answer this with one SQL statement on the {slots['table']} table." if task.kind == "select"
                else f"I make this change with one SQL statement on the {slots['table']} table.")
    values: list[Any] = []
    for k, sql in enumerate(statements):
        obs = yield AssistantMessage(content=plan if k == 0 else "Next, the following statement.", tool_calls=[
            ToolCall(id=f"call_{k}", name="operation", arguments={"sql": sql})])
        if task.kind == "select" and obs is not None:
            values = [] if obs.metadata.get("error") else _result_values(obs.content)
    answer = [] if task.kind != "select" else (values or ["none"])
    result = ", ".join(str(v) for v in answer) or "done"
    if tpl is not None and tpl.results:
        conclusion = pick(tpl.results, task.id, 1).format(result=result, **slots)
    elif task.kind == "select":
        conclusion = f"The query returns {result}, which answers the question."
    else:
        conclusion = f"The statement changed the {slots['table']} table as asked, so the change is done."
    yield AssistantMessage(content=conclusion, tool_calls=[
        ToolCall(id=f"call_{len(statements)}", name="answer", arguments={"answer": answer})])


def _result_values(content: str) -> list[Any]:
    """The values of a printed result (`[('a', 1)]`), flattened; [] for anything else."""
    text = re.sub(r"Decimal\('([^']*)'\)", r"'\1'", content.split(" [only the first", 1)[0])  # MariaDB's exact numbers
    try:
        rows = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return []
    if not isinstance(rows, list) or not all(isinstance(row, tuple) for row in rows):
        return []
    return [v for row in rows for v in row]
