"""Convert time of this checkout against another revision's, in one process, interleaved (A/B).

On a shared machine the host's speed moves by a third between runs, so two runs of
bench/convert_throughput.py (one per revision) compare badly: a change of 10% is lost in them.
Here both versions are imported side by side (the other revision's package is exported with
`git archive` and imported under another name), and each input is converted in turn by the
stdlib baseline, the other revision and this checkout, `--repeat` times; the fastest run and the
first quartile are kept. The two outputs must be byte-identical, or the script stops.

    python bench/convert_ab.py --base HEAD [--repeat 40] [--shared ../shared/data] [--no-write]

Results are appended to docs/benchmarks.md with the command and the machine.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from _doc import machine, publish

REPO = Path(__file__).resolve().parents[1]
BASE = "agentflan_base"


def export_base(rev: str, dest: Path) -> str:
    """The package of revision `rev`, under `dest/agentflan_base`, its own imports renamed; its commit."""
    commit = subprocess.run(["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    archive = subprocess.run(["git", "archive", rev, "src/agentflan"], cwd=REPO, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    pkg = dest / BASE
    (dest / "src" / "agentflan").rename(pkg)
    for py in pkg.rglob("*.py"):
        text = py.read_text()
        py.write_text(re.sub(r"\bagentflan(?=[.\s])", BASE, text))
    return commit


def baseline(src: str, out: str) -> None:
    """bench/convert_throughput.py's baseline: `json.loads` + `json.dumps` of every record, written."""
    with open(out, "w") as w, open(src) as f:
        if src.endswith(".jsonl"):
            for line in f:
                w.write(json.dumps(json.loads(line), ensure_ascii=False) + "\n")
        else:
            for rec in json.load(f):
                w.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="HEAD", help="the git revision to compare with (default: HEAD)")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--repeat", type=int, default=40)
    ap.add_argument("--no-write", action="store_true", help="print only, do not append to docs/benchmarks.md")
    args = ap.parse_args()
    cases = [("alpaca_en_demo.json", args.shared / "llamafactory/alpaca_en_demo.json", "alpaca"),
             ("glaive_toolcall_en_demo.json", args.shared / "llamafactory/glaive_toolcall_en_demo.json", "sharegpt"),
             ("hotpotqa_react.jsonl", args.shared / "fireact/hotpotqa_react.jsonl", "react")]
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        commit = export_base(args.base, tmp)
        sys.path.insert(0, str(tmp))
        new = importlib.import_module("agentflan.io")
        old = importlib.import_module(f"{BASE}.io")
        for label, src, fmt in cases:
            runs: dict[str, Callable[[], object]] = {
                "baseline": partial(baseline, str(src), str(tmp / "b.jsonl")),
                "base": partial(old.convert, str(src), tmp / "o.jsonl", fmt=fmt, to="native"),
                "this": partial(new.convert, str(src), tmp / "n.jsonl", fmt=fmt, to="native"),
            }
            for run in runs.values():
                run()  # first use (imports, caches) outside the timing
            if (tmp / "o.jsonl").read_bytes() != (tmp / "n.jsonl").read_bytes():
                raise SystemExit(f"{label}: this checkout writes otherwise than {args.base}")
            times: dict[str, list[float]] = {k: [] for k in runs}
            for _ in range(args.repeat):
                for k, run in runs.items():
                    t = time.perf_counter()
                    run()
                    times[k].append(time.perf_counter() - t)
            best = {k: min(v) for k, v in times.items()}
            p25 = {k: sorted(v)[len(v) // 4] for k, v in times.items()}
            rows.append((label, fmt, best, p25))
    header = (f"| input | --from | json load+dump ms | {args.base} ({commit}) ms | this checkout ms | this / base (best) "
              "| this / base (first quartile) | ratio to stdlib, base | ratio to stdlib, this |\n"
              "|---|---|---|---|---|---|---|---|---|")
    lines = [header] + [
        f"| {label} | {fmt} | {b['baseline'] * 1e3:.2f} | {b['base'] * 1e3:.2f} | {b['this'] * 1e3:.2f} | "
        f"{b['this'] / b['base']:.2f} | {q['this'] / q['base']:.2f} | {b['baseline'] / b['base']:.2f} | "
        f"{b['baseline'] / b['this']:.2f} |" for label, fmt, b, q in rows]
    publish("Convert A/B in one process",
            f"Command: `python bench/convert_ab.py --base {args.base} --repeat {args.repeat}`  \n"
            f"Machine: {machine()}. Both versions imported in one process and run in turn with the baseline, "
            f"{args.repeat} times each, warm (first use outside the timing); fastest run, and the first quartile "
            "for the time ratio. Outputs checked byte-identical.", "\n".join(lines), write=not args.no_write)


if __name__ == "__main__":
    main()
