"""Where a convert's work goes, in CPU instructions counted by valgrind (callgrind).

Wall-clock ratios on a shared 2-core machine move by +-0.05 from run to run; instruction counts do
not, so they tell what a change saves and how far the design is from the stdlib baseline. Each
part runs 1 and 3 times in a fresh process under `valgrind --tool=callgrind`; the difference over
two runs is the instructions of one (imports and set-up cancel out). Parts:

- `baseline`: `json.loads` + `json.dumps` of every record, written (bench/convert_throughput.py's);
- `convert`: `agentflan.io.convert(..., to="native")`, one process;
- `decode`: the reader's records read from the file (`iter_records`: line numbers, checks);
- `parse`: the reader's `parse` of every record (pydantic validation included);
- `validate`: pydantic's validation alone, of what the reader hands pydantic's validator
  (of each native record for a reader that makes the models itself);
- `check`: `agentflan.schema.check` of every trajectory;
- `encode`: the native writer's `encode_counted` (`to_json_dict` + JSON, as UTF-8);
- `json`: the JSON encoding alone of the native records (`encode_data`, the writer's engine);
- `stdlib decode`, `stdlib dumps`: the baseline's decoding alone, its encoding alone.

The floor is what any converter through the schema pays at least, with no Python of ours at all:
`stdlib decode` + `validate` + `json` + the baseline's writing (`baseline` - `stdlib decode` -
`stdlib dumps`).

    python bench/convert_instructions.py [--shared ../shared/data] [--no-write]

Needs valgrind (`apt install valgrind`); takes about 3 minutes per input on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _doc import machine, publish

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys
src, fmt, part, reps, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
if part == "baseline":
    def run():
        with open(out, "w") as w:
            if src.endswith(".jsonl"):
                for line in open(src):
                    w.write(json.dumps(json.loads(line), ensure_ascii=False) + "\n")
            else:
                for rec in json.load(open(src)):
                    w.write(json.dumps(rec, ensure_ascii=False) + "\n")
elif part == "stdlib decode":
    def run():
        if src.endswith(".jsonl"):
            [json.loads(line) for line in open(src)]
        else:
            json.load(open(src))
elif part == "stdlib dumps":
    recs = [json.loads(line) for line in open(src)] if src.endswith(".jsonl") else json.load(open(src))
    def run():
        [json.dumps(rec, ensure_ascii=False) for rec in recs]
else:
    from agentflan.io import READERS, WRITERS, convert, make_reader
    from agentflan.io.base import RecordContext
    from agentflan.io.files import iter_records
    from agentflan.io.writers.base import encode_data
    from agentflan.schema import Trajectory, check
    READERS.get(fmt), WRITERS.get("native")
    reader = make_reader(src, fmt)
    writer = WRITERS.get("native")()
    raws = list(iter_records(src))
    given = []  # what the reader hands pydantic (its tool specs may be models already)
    validator = Trajectory.__pydantic_validator__
    class Capture:
        def validate_python(self, d, *args, **kwargs):
            given.append(d)
            return validator.validate_python(d, *args, **kwargs)
    Trajectory.__pydantic_validator__ = Capture()
    trajs = [reader.parse(r.value, RecordContext(r, reader.name, None)) for r in raws]
    Trajectory.__pydantic_validator__ = validator  # pydantic's again
    dicts = [t.to_json_dict() for t in trajs]
    given = given if len(given) == len(trajs) else dicts  # a reader that makes the models itself
    run = {
        "convert": lambda: convert(src, out, fmt=fmt, to="native"),
        "decode": lambda: list(iter_records(src)),
        "parse": lambda: [reader.parse(r.value, RecordContext(r, reader.name, None)) for r in raws],
        "validate": lambda: [validator.validate_python(d) for d in given],
        "check": lambda: [check(t, nesting=r.may_nest_deep) for t, r in zip(trajs, raws)],
        "encode": lambda: [writer.encode_counted(t) for t in trajs],
        "json": lambda: [encode_data(d) for d in dicts],
    }[part]
for _ in range(reps):
    run()
"""

PARTS = ["baseline", "convert", "decode", "parse", "validate", "check", "encode", "json", "stdlib decode",
         "stdlib dumps"]


def instructions(src: Path, fmt: str, part: str, reps: int, tmp: Path) -> int:
    out = tmp / f"out-{part.replace(' ', '_')}-{reps}.jsonl"
    env = dict(os.environ, PYTHONHASHSEED="0")
    p = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c",
                        CHILD, str(src), fmt, part, str(reps), str(out)], capture_output=True, text=True, env=env)
    m = re.search(r"Collected : (\d+)", p.stderr)
    if p.returncode or not m:
        raise SystemExit(f"valgrind failed on {part}: {p.stderr[-2000:]}")
    return int(m.group(1))


def per_run(src: Path, fmt: str, part: str, tmp: Path) -> float:
    return (instructions(src, fmt, part, 3, tmp) - instructions(src, fmt, part, 1, tmp)) / 2


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--no-write", action="store_true", help="print only, do not append to docs/benchmarks.md")
    args = ap.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt install valgrind)")
    cases = [("alpaca_en_demo.json", args.shared / "llamafactory/alpaca_en_demo.json", "alpaca"),
             ("hotpotqa_react.jsonl", args.shared / "fireact/hotpotqa_react.jsonl", "react")]
    rows = []
    with tempfile.TemporaryDirectory() as d, ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        tmp = Path(d)
        for label, src, fmt in cases:
            print(f"{label}: {len(PARTS)} parts under callgrind ...", file=sys.stderr)
            counts = dict(zip(PARTS, pool.map(lambda part, s=src, f=fmt: per_run(s, f, part, tmp), PARTS),
                              strict=True))
            rows.append((label, fmt, counts))
    header = ("| input | --from | baseline M | agentflan M | ratio | decode M | parse M (validate M) | check M "
              "| encode M (JSON M) | floor M | floor ratio |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [header]
    for label, fmt, c in rows:
        write = c["baseline"] - c["stdlib decode"] - c["stdlib dumps"]  # the baseline's writing
        floor = c["stdlib decode"] + c["validate"] + c["json"] + write
        m = 1e6
        lines.append(f"| {label} | {fmt} | {c['baseline'] / m:.0f} | {c['convert'] / m:.0f} | "
                     f"{c['baseline'] / c['convert']:.2f} | {c['decode'] / m:.0f} | {c['parse'] / m:.0f} "
                     f"({c['validate'] / m:.0f}) | {c['check'] / m:.0f} | {c['encode'] / m:.0f} ({c['json'] / m:.0f}) "
                     f"| {floor / m:.0f} | {c['baseline'] / floor:.2f} |")
    publish("Convert instructions (callgrind)",
            f"Command: `python bench/convert_instructions.py`  \nMachine: {machine()}; millions of instructions "
            "per run (one process, valgrind's count, deterministic). Ratio: baseline / agentflan, as in the "
            "throughput table. Floor: stdlib decode + pydantic validation of what the reader builds + the JSON "
            "encoding of the native records + the baseline's writing: what a convert through the schema costs "
            "with no Python of ours.", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
