"""Fetch BFCL's public data (and, for the agreement check, its checker's source) from PyPI.

The Berkeley Function Calling Leaderboard's data ships inside its `bfcl-eval` package on PyPI
(Apache-2.0, ShishirPatil/gorilla). This downloads that wheel with pip (no dependencies installed,
nothing imported) and extracts:

* the question files of the Python single-turn categories agentflan scores (simple, multiple,
  parallel, parallel_multiple, irrelevance, and their `live_` forms) and their `possible_answer/`
  files, into DEST (default: `$AGENTFLAN_BFCL_DATA`, else ~/.cache/agentflan/bfcl);
* the multi-turn categories (`multi_turn_base`, `miss_func`, `miss_param`, `long_context`), their
  `possible_answer/` files and the function documents `multi_turn_func_doc/` into DEST, and BFCL's
  multi-turn backends (`bfcl_eval/eval_checker/multi_turn_eval/`, with the class table
  `bfcl_eval/constants/executable_backend_config.py`) into DEST/official, which
  `agentflan eval bfcl-multi` executes (nothing else of bfcl-eval is imported);
* the checker's own source (`bfcl_eval/eval_checker/ast_eval/`, `bfcl_eval/constants/`,
  `bfcl_eval/model_handler/utils.py`, `bfcl_eval/utils.py`) into DEST/official, which `tests/unit/test_bfcl_agreement.py`
  runs, unmodified, beside agentflan's checker (`bench/bfcl_agreement.py` reports it).

The repository ships none of it. Then:

    agentflan eval bfcl --model runs/x/merged -n 200            # the four default categories
    agentflan eval bfcl --tasks DEST/BFCL_v4_live_simple.json --model ...
    agentflan eval bfcl-multi --model runs/x/merged -n 20       # the four multi-turn categories

    python bench/fetch_bfcl.py [--dest DIR] [--version 2026.3.23]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "2026.3.23"
CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple",
              "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance", "live_relevance",
              "multi_turn_base", "multi_turn_miss_func", "multi_turn_miss_param", "multi_turn_long_context")
OFFICIAL = ("bfcl_eval/eval_checker/ast_eval/", "bfcl_eval/constants/enums.py", "bfcl_eval/constants/type_mappings.py",
            "bfcl_eval/model_handler/utils.py", "bfcl_eval/utils.py", "bfcl_eval/eval_checker/multi_turn_eval/",
            "bfcl_eval/constants/executable_backend_config.py")


def default_dest() -> Path:
    return Path(os.environ.get("AGENTFLAN_BFCL_DATA", Path.home() / ".cache" / "agentflan" / "bfcl"))


def fetch(dest: Path, version: str = VERSION) -> list[Path]:
    """Download `bfcl-eval==version` and extract the data and checker files into `dest`."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"bfcl-eval=={version}",
                        "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("bfcl_eval-*.whl"))
        written = []
        with zipfile.ZipFile(wheel) as z:
            for name in z.namelist():
                rel = None
                for cat in CATEGORIES:
                    if name in (f"bfcl_eval/data/BFCL_v4_{cat}.json", f"bfcl_eval/data/possible_answer/BFCL_v4_{cat}.json"):
                        rel = Path(name).relative_to("bfcl_eval/data")
                if name.startswith("bfcl_eval/data/multi_turn_func_doc/") and name.endswith(".json"):
                    rel = Path(name).relative_to("bfcl_eval/data")
                if any(name.startswith(p) for p in OFFICIAL) and name.endswith(".py"):
                    rel = Path("official") / name
                if rel is None:
                    continue
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(z.read(name))
                written.append(target)
    (dest / "SOURCE.txt").write_text(
        f"BFCL data and checker source from the bfcl-eval {version} wheel on PyPI (ShishirPatil/gorilla, "
        "berkeley-function-call-leaderboard), Apache-2.0. Fetched by agentflan's bench/fetch_bfcl.py.\n")
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dest", type=Path, default=default_dest())
    ap.add_argument("--version", default=VERSION)
    args = ap.parse_args()
    written = fetch(args.dest, args.version)
    print(f"{len(written)} files in {args.dest}")


if __name__ == "__main__":
    main()
