"""Convert throughput and peak memory, against a plain JSON load+dump of the same files.

Each measurement runs in a fresh subprocess so that its peak RSS is its own. The baseline does the
least any converter must do (decode every record, encode it again) with the standard library, in
one process; the ratio says what schema validation, parsing of actions and accounting cost on
top. agentflan runs with each `--workers` count (`convert(..., workers=n)`: this process reads,
n forked processes convert; peak RSS is then the largest of them). Imports are not timed on either
side: `import json` for the baseline; agentflan's modules, the reader's and writer's included,
which the registries import on first use (about 4 ms, a tenth of alpaca's convert).

    python bench/convert_throughput.py [--shared ../shared/data] [--repeat 3] [--scale 20] [--workers 1 2]

Results are appended to docs/benchmarks.md with the command, the machine and its load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _doc import machine, publish

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, resource, sys, time
mode, src, fmt, to, out, workers = sys.argv[1:7]
if mode == "agentflan":
    from agentflan.io import READERS, WRITERS, convert  # imports are not timed: the reader's and
    READERS.get(fmt), WRITERS.get(to)  # writer's modules neither (the registry imports them on first use)
t = time.perf_counter()
if mode == "agentflan":
    r = convert(src, out, fmt=fmt, to=to, workers=int(workers))
    n = r.read.records
else:
    n = 0
    with open(out, "w") as w:
        if src.endswith(".jsonl"):
            for line in open(src):
                w.write(json.dumps(json.loads(line), ensure_ascii=False) + "\n"); n += 1
        else:
            for rec in json.load(open(src)):
                w.write(json.dumps(rec, ensure_ascii=False) + "\n"); n += 1
dt = time.perf_counter() - t
rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print(json.dumps({"records": n, "seconds": dt, "peak_rss_mb": rss / 1024}))
"""


def run(mode: str, src: Path, fmt: str, to: str, tmp: Path, workers: int = 1) -> dict[str, float]:
    out = tmp / f"out-{mode}.jsonl"
    p = subprocess.run([sys.executable, "-c", CHILD, mode, str(src), fmt, to, str(out), str(workers)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)  # type: ignore[no-any-return]


def replicate(src: Path, times: int, dest: Path) -> Path:
    """A corpus `times` larger: every record repeated with a new id."""
    with dest.open("w") as w:
        lines = src.read_text().splitlines()
        for k in range(times):
            for i, line in enumerate(lines):
                rec = json.loads(line)
                rec["id"] = f"rep{k}-{i}"
                w.write(json.dumps(rec, ensure_ascii=False) + "\n")
    return dest


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--scale", type=int, default=20)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-write", action="store_true", help="print only, do not append to docs/benchmarks.md")
    args = ap.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cases = [
            ("alpaca_en_demo.json (largest file)", args.shared / "llamafactory/alpaca_en_demo.json", "alpaca", "native"),
            ("glaive_toolcall_en_demo.json", args.shared / "llamafactory/glaive_toolcall_en_demo.json", "sharegpt", "native"),
            ("hotpotqa_react.jsonl", args.shared / "fireact/hotpotqa_react.jsonl", "react", "native"),
            (f"hotpotqa_react x{args.scale}", replicate(args.shared / "fireact/hotpotqa_react.jsonl", args.scale,
                                                       tmp / "big.jsonl"), "react", "native"),
        ]
        rows = []
        for label, src, fmt, to in cases:
            # interleaved, so that a change of machine load hits both sides alike
            runs: dict[object, list[dict[str, float]]] = {}
            for _ in range(args.repeat):
                runs.setdefault("baseline", []).append(run("baseline", src, fmt, to, tmp))
                for w in args.workers:
                    runs.setdefault(w, []).append(run("agentflan", src, fmt, to, tmp, w))
            b = min(runs["baseline"], key=lambda r: r["seconds"])
            for w in args.workers:
                a = min(runs[w], key=lambda r: r["seconds"])
                rows.append((label, fmt, w, src.stat().st_size / 1e6, int(a["records"]), a["records"] / a["seconds"],
                             a["peak_rss_mb"], b["records"] / b["seconds"], b["peak_rss_mb"],
                             (a["records"] / a["seconds"]) / (b["records"] / b["seconds"])))
    load_after = os.getloadavg()[0]
    header = ("| input | --from | workers | MB | records | agentflan rec/s | agentflan peak RSS MB | json load+dump rec/s "
              "| baseline peak RSS MB | speed ratio |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [header] + [f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]} | {r[5]:,.0f} | {r[6]:.0f} | {r[7]:,.0f} "
                        f"| {r[8]:.0f} | {r[9]:.2f} |" for r in rows]
    publish("Convert throughput",
            f"Command: `python bench/convert_throughput.py --repeat {args.repeat} --scale {args.scale} --workers "
            f"{' '.join(map(str, args.workers))}`  \n"
            f"Machine: {machine()}; load average {load_before:.2f} before, {load_after:.2f} after. Best of "
            f"{args.repeat} runs, each in a fresh process (peak RSS is the whole process, interpreter and "
            f"imports included, and its workers'). Baseline: `json.loads` + `json.dumps` of the same records "
            f"in one process, the least a converter must do.", "\n".join(lines), write=not args.no_write)
    print(f"load average (1 min) before {load_before:.2f}, after {load_after:.2f}")


if __name__ == "__main__":
    main()
