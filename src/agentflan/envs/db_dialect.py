"""MySQL on the embedded SQLite engine: the agent's SQL translated, MySQL's comparisons registered.

AgentBench's agent writes MySQL for a `mysql:8` server. The `sqlite` engine runs that SQL on
SQLite after four adaptations, so AgentBench's tasks come out as they do on MySQL:

* **Dialect**: each statement is parsed as MySQL and written as SQLite by `sqlglot` (a
  maintained SQL parser, a core dependency): backslash escapes in string literals
  (`'Formby\\nUrban'` holds a newline), double-quoted strings, unquoted names that start with a
  digit (`1952_British_Grand_Prix_0`), `LIMIT a, b`, `INSERT ... SET`, `DIV`, decimal `/`,
  `IFNULL`, `CONCAT`, `CAST(... AS SIGNED / DOUBLE / CHAR)`, `<=>`. Names come out in backticks
  (a double-quoted name SQLite does not know would silently become a string).
* **Numbers against text**: MySQL compares a string with a number as two doubles, so on the
  all-TEXT tables `WHERE No = 16` matches `'16'` and `'16.0'` and `WHERE Year > 999` compares
  numerically; SQLite would compare text. A column compared with a numeric literal (`=`, `<>`,
  `<`, `<=`, `>`, `>=`, `<=>`, `IN`, `BETWEEN`) is cast to `REAL`, which reads a string as MySQL
  does (leading number, else 0).
* **Case- and accent-insensitive text**: the task's columns are created `COLLATE MYSQL_AI_CI`, a
  collation registered on the connection that compares NFKD-decomposed, case-folded text without
  combining marks (`Montreal` = `Montréal` = `MONTREAL`, `Straße` = `STRASSE`), as MySQL 8's
  `utf8mb4_0900_ai_ci` does at its primary level, with no padding (trailing spaces count). It
  serves `=`, `IN`, `ORDER BY`, `GROUP BY`, `DISTINCT`, `MIN`/`MAX` on those columns. `LIKE` is
  replaced by the same folding (and `\\` is its default escape, as in MySQL); `REGEXP` is
  registered, case-insensitive.
* **Non-strict mode**: SQLite never refuses a statement for a value it has to convert, which is
  what MySQL without `STRICT_TRANS_TABLES` does (the mode AgentBench's labels were made in).

What stays different (docs/eval.md lists it): the order of punctuation and digits against letters
under `ORDER BY` on text (UCA vs code points of the folded text), comparisons between two
literals (no column, so no collation), MySQL-only functions `sqlglot` cannot map, `SHOW` and
`DESCRIBE`, integer display of exact decimals (`7/2` is `3.5`, MySQL prints `3.5000`).
"""

from __future__ import annotations

import functools
import re
import sqlite3
import unicodedata
from typing import Any

from agentflan.errors import MissingDependencyError

COLLATION = "MYSQL_AI_CI"
_NO_DECOMPOSITION = str.maketrans({"ø": "o", "đ": "d", "ł": "l", "ı": "i", "ħ": "h", "ŧ": "t", "æ": "ae", "œ": "oe"})
"""Letters UCA gives the primary weight of a base letter (or two) that NFKD does not decompose."""


@functools.lru_cache(maxsize=65536)
def fold(text: str) -> str:
    """Text as MySQL's `utf8mb4_0900_ai_ci` compares it at the primary level (approximately): case
    folded, compatibility-decomposed, combining marks dropped.

    Examples:
        >>> fold("Montréal") == fold("MONTREAL"), fold("Straße") == fold("strasse"), fold("a ") == fold("a")
        (True, True, False)
    """
    decomposed = unicodedata.normalize("NFKD", text.casefold().translate(_NO_DECOMPOSITION))
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def collate(a: str, b: str) -> int:
    """The `MYSQL_AI_CI` collation: -1, 0 or 1."""
    x, y = fold(a), fold(b)
    return (x > y) - (x < y)


@functools.lru_cache(maxsize=4096)
def _like_pattern(pattern: str, escape: str) -> re.Pattern[str]:
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if escape and ch == escape and i + 1 < len(pattern):
            out.append(re.escape(fold(pattern[i + 1])))
            i += 2
            continue
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(fold(ch)))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def like(pattern: Any, value: Any, escape: Any = "\\") -> int | None:
    """MySQL's `value LIKE pattern [ESCAPE e]` under the collation (SQLite calls `like(pattern,
    value[, escape])` for the operator once a function of that name is registered)."""
    if pattern is None or value is None or escape is None:
        return None
    esc = str(escape)
    if len(esc) > 1:
        raise ValueError("ESCAPE must be one character")
    return int(_like_pattern(str(pattern), esc).fullmatch(fold(str(value))) is not None)


def regexp(pattern: Any, value: Any) -> int | None:
    """MySQL's `value REGEXP pattern`: a search, case-insensitive (its collation's)."""
    if pattern is None or value is None:
        return None
    return int(_regex(str(pattern)).search(str(value)) is not None)


@functools.lru_cache(maxsize=1024)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


def register(conn: sqlite3.Connection) -> None:
    """Register the collation and the `LIKE`/`REGEXP` functions on `conn`."""
    conn.create_collation(COLLATION, collate)
    conn.create_function("like", 2, like, deterministic=True)
    conn.create_function("like", 3, like, deterministic=True)
    conn.create_function("regexp", 2, regexp, deterministic=True)


def check() -> None:
    """`MissingDependencyError` (with the install line) unless `sqlglot` (a core dependency) is installed."""
    import importlib.util

    if importlib.util.find_spec("sqlglot") is None:
        raise MissingDependencyError("the db environment's sqlite engine needs the 'sqlglot' package (a dependency "
                                     "of agentflan): pip install 'sqlglot>=25'")


@functools.lru_cache(maxsize=1)
def _dialect() -> Any:
    check()
    import logging

    from sqlglot.dialects.sqlite import SQLite

    # sqlglot logs each statement it cannot translate; that statement then runs as written
    logging.getLogger("sqlglot").setLevel(logging.ERROR)

    class AgentflanSQLite(SQLite):
        """SQLite written with backtick names (SQLite reads a double-quoted unknown name as a string)."""

        class Tokenizer(SQLite.Tokenizer):
            IDENTIFIERS = ["`", '"', ("[", "]")]  # noqa: RUF012 (sqlglot's own attribute type)

    return AgentflanSQLite


def _translated() -> tuple[type, ...]:
    """The statements translated: those MySQL and SQLite both have."""
    from sqlglot import exp

    return (exp.Query, exp.Insert, exp.Update, exp.Delete, exp.Create, exp.Drop, exp.Alter, exp.TruncateTable)


def _numeric(node: Any) -> bool:
    from sqlglot import exp

    if isinstance(node, exp.Neg):
        node = node.this
    return isinstance(node, exp.Literal) and node.is_number


def _numeric_comparisons(node: Any) -> Any:
    """A column compared with a number, cast to REAL (MySQL compares a string and a number as doubles)."""
    from sqlglot import exp

    def cast(col: Any) -> Any:
        return exp.Cast(this=col.copy(), to=exp.DataType.build("REAL"))

    assignment = isinstance(node.parent, exp.SetItem) or (
        node.arg_key == "expressions" and isinstance(node.parent, (exp.Update, exp.OnConflict)))
    if assignment:  # `SET col = 2` assigns, it does not compare
        return node
    if isinstance(node, (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.NullSafeEQ)):
        left, right = node.this, node.expression
        if isinstance(left, exp.Column) and _numeric(right):
            node.set("this", cast(left))
        elif isinstance(right, exp.Column) and _numeric(left):
            node.set("expression", cast(right))
    elif isinstance(node, (exp.In, exp.Between)) and isinstance(node.this, exp.Column):
        bounds = node.expressions if isinstance(node, exp.In) else [node.args.get("low"), node.args.get("high")]
        if bounds and all(_numeric(e) for e in bounds):
            node.set("this", cast(node.this))
    return node


def to_sqlite(sql: str) -> str:
    """One MySQL statement as SQLite runs it (see the module docstring); `sql` unchanged when it is
    not one statement `sqlglot` reads as MySQL (SQLite then gives its own error, or runs it)."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ErrorLevel, SqlglotError

    dialect = _dialect()
    try:
        parsed = [e for e in sqlglot.parse(sql, read="mysql", error_level=ErrorLevel.RAISE) if e is not None]
        if len(parsed) != 1 or not isinstance(parsed[0], _translated()):
            return sql  # PRAGMA, SHOW, what sqlglot keeps as an opaque command: SQLite answers as itself
        tree = parsed[0]
        if isinstance(tree, exp.TruncateTable) and len(tree.expressions) == 1:
            tree = exp.Delete(this=tree.expressions[0])  # SQLite has no TRUNCATE
        tree = tree.transform(_numeric_comparisons)
        out = tree.sql(dialect=dialect, unsupported_level=ErrorLevel.RAISE)
    except (SqlglotError, ValueError, TypeError, KeyError, AttributeError, RecursionError):
        return sql
    return out or sql
