"""What every bench script does with its result: a dated section appended to docs/benchmarks.md,
with the machine it ran on. (Imported as `_doc`: the scripts run as `python bench/<name>.py`.)"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def machine(extra: str = "") -> str:
    """`x86_64, 2 cores, Python 3.11.7` (and `extra`)."""
    text = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    return f"{text}, {extra}" if extra else text


def append_section(title: str, body: str) -> None:
    """`## <title> (<date>)` and `body` at the end of docs/benchmarks.md (made, with its heading, if absent)."""
    if not DOC.exists():
        DOC.write_text("# Benchmarks\n\nEvery number here comes from a script in `bench/`; the command and the "
                       "machine are given with each table.\n")
    with DOC.open("a") as f:
        f.write(f"\n## {title} ({time.strftime('%Y-%m-%d')})\n\n{body}")


def publish(title: str, intro: str, table: str, write: bool = True) -> None:
    """Print `table`; unless not `write`, append it after `intro` as a dated section of docs/benchmarks.md."""
    print(table)
    if write:
        append_section(title, f"{intro}\n\n{table}\n")
