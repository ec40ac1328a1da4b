"""Build throughput and peak memory of `agentflan data build agent-flan` as the corpus grows.

The corpus is the shared samples replicated k times with new ids (ToolBench answer files copied
under new names, FireAct lines with new ids, chat records with a replica marker appended to the
first user turn so that exact-duplicate removal does not simply discard them). Each build runs in
a fresh process; peak RSS is that process's (and its workers') maximum resident set. Every build
is repeated `--repeat` times, the worker counts interleaved (a change of machine load hits them
alike), and the fastest is kept.

    python bench/build_scale.py [--scales 1 10 50 100] [--workers 1 2] [--repeat 3] [--kill-test]

Results are appended to docs/benchmarks.md with the command, the machine and its load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _doc import append_section, machine

REPO = Path(__file__).resolve().parents[1]


def replicate(shared: Path, k: int, dest: Path) -> Path:
    for f in sorted((shared / "toolbench/answer").glob("*/*.json")):
        for r in range(k):
            target = dest / "toolbench/answer" / f.parent.name / f"r{r}_{f.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, target)
    (dest / "fireact").mkdir(parents=True, exist_ok=True)
    lines = (shared / "fireact/hotpotqa_react.jsonl").read_text().splitlines()
    with (dest / "fireact/hotpotqa_react.jsonl").open("w") as w:
        for r in range(k):
            for i, line in enumerate(lines):
                rec = json.loads(line)
                rec["id"] = f"r{r}-{i}"
                w.write(json.dumps(rec) + "\n")
    (dest / "llamafactory").mkdir(parents=True, exist_ok=True)
    for name, key in (("alpaca_en_demo.json", "instruction"), ("glaive_toolcall_en_demo.json", "conversations")):
        recs = json.loads((shared / "llamafactory" / name).read_text())
        out = []
        for r in range(k):
            for rec in recs:
                rec = json.loads(json.dumps(rec))
                if r:
                    if key == "instruction":
                        rec["instruction"] += f" [r{r}]"
                    else:
                        rec["conversations"][0]["value"] += f" [r{r}]"
                out.append(rec)
        (dest / "llamafactory" / name).write_text(json.dumps(out))
    return dest


# Peak RSS of the build and its workers. Not ru_maxrss of the build process: Linux keeps in it the
# resident set of the process that started it, at the fork (here this script, which held the
# replicated corpus: 300 MB at x100). VmHWM is the build process's own peak; its workers are
# forked from it, so their ru_maxrss is theirs.
CHILD = """
import resource, sys, time
from agentflan.cli.main import main
t = time.perf_counter()
try:
    main()
except SystemExit:
    pass
secs = time.perf_counter() - t
hwm = next((int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM:")),
           resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime  # the build's and its (joined) workers'
print("BENCH", secs, max(hwm, kids.ru_maxrss) / 1024, cpu, file=sys.stderr)
"""


def run_build(data: Path, out: Path, workers: int) -> tuple[float, float, float]:
    cmd = [sys.executable, "-c", CHILD, "data", "build", "agent-flan", "-o", str(out), f"vars.data_dir={data}",
           "vars.react_sources=[fireact]", "--workers", str(workers), "--no-resume"]
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = next(x for x in p.stderr.splitlines() if x.startswith("BENCH"))
    _, secs, rss, cpu = line.split()
    return float(secs), float(rss), float(cpu)


def count_input(data: Path) -> int:
    n = len(list((data / "toolbench/answer").glob("*/*.json")))
    n += sum(1 for _ in (data / "fireact/hotpotqa_react.jsonl").open())
    n += sum(len(json.loads((data / "llamafactory" / f).read_text()))
             for f in ("alpaca_en_demo.json", "glaive_toolcall_en_demo.json"))
    return n


def kill_test(data: Path, tmp: Path) -> str:
    ref = tmp / "ref"
    run_build(data, ref, 1)
    out = tmp / "killed"
    base = [sys.executable, "-m", "agentflan.cli.main", "data", "build", "agent-flan", "-o", str(out),
            f"vars.data_dir={data}", "vars.react_sources=[fireact]"]
    p = subprocess.Popen(base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and len(list((out / ".state").glob("output.*.done"))) < 2:
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    done_before = sorted(x.name for x in (out / ".state").glob("*.done"))
    subprocess.run(base, check=True, capture_output=True)

    def files(root: Path) -> dict[str, bytes]:
        return {str(x.relative_to(root)): x.read_bytes() for x in sorted(root.rglob("*"))
                if x.is_file() and ".state" not in x.parts and x.suffix != ".png"}
    same = files(out) == files(ref)
    return (f"killed with SIGKILL after {len(done_before)} stages were marked done; the rerun resumed and "
            f"its {len(files(out))} files are {'byte-identical' if same else 'DIFFERENT'} to an uninterrupted build")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10, 50, 100])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--kill-test", action="store_true")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--replicate-only", nargs=2, metavar=("K", "DEST"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.replicate_only:
        replicate(args.shared, int(args.replicate_only[0]), Path(args.replicate_only[1]))
        return
    rows = []
    kill = None
    loads = [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for k in args.scales:
            data = tmp / f"data{k}"  # replicated in a process of its own: this one stays small
            subprocess.run([sys.executable, __file__, "--replicate-only", str(k), str(data),
                            "--shared", str(args.shared)], check=True)
            n = count_input(data)
            best: dict[int, tuple[float, float, float]] = {}
            train: dict[int, int] = {}
            for _ in range(args.repeat):
                for w in args.workers:
                    secs, rss, cpu = run_build(data, tmp / f"out{k}-{w}", w)
                    if w not in best or secs < best[w][0]:
                        best[w] = (secs, rss, cpu)
                    train[w] = sum(1 for _ in (tmp / f"out{k}-{w}" / "native" / "train.jsonl").open())
                    shutil.rmtree(tmp / f"out{k}-{w}")
            for w in args.workers:
                secs, rss, cpu = best[w]
                rows.append((k, n, w, secs, n / secs, rss, train[w], best[args.workers[0]][0] / secs, cpu))
                print(rows[-1], flush=True)
            loads.append(os.getloadavg()[0])
            if not args.kill_test or k != args.scales[-1]:
                shutil.rmtree(data)
        if args.kill_test:
            kill = kill_test(tmp / f"data{args.scales[-1]}", tmp / "kill")
            print(kill)
    base_rss = {w: next(r[5] for r in rows if r[2] == w) for w in args.workers}
    table = ["| scale | input records | workers | seconds | input records/s | speed-up vs 1 worker | CPU seconds "
             f"| peak RSS MB | RSS vs x{args.scales[0]} | train records |", "|---|---|---|---|---|---|---|---|---|---|"]
    table += [f"| x{k} | {n:,} | {w} | {s:.1f} | {r:,.0f} | {sp:.2f} | {c:.1f} | {m:.0f} | {m / base_rss[w]:.2f} | {t:,} |"
              for k, n, w, s, r, m, t, sp, c in rows]
    text = "\n".join(table)
    print(text)
    print("load average (1 min) at the start and after each scale:", ", ".join(f"{x:.2f}" for x in loads))
    if args.no_write:
        return
    cmd = "python bench/build_scale.py --scales " + " ".join(map(str, args.scales)) + " --workers " + " ".join(
        map(str, args.workers)) + f" --repeat {args.repeat}" + (" --kill-test" if args.kill_test else "")
    append_section("Build throughput and memory vs corpus size",
                   f"Command: `{cmd}`  \nMachine: {machine()}; load average (1 min) at the start and after each "
                   f"scale: {', '.join(f'{x:.2f}' for x in loads)}. Recipe `agent-flan` (FireAct as its react "
                   f"source: `vars.react_sources=[fireact]`) on the shared samples "
                   f"replicated k times with new ids; whole build (ingest, 8 outputs, mix, report with charts) in "
                   f"a fresh process, best of {args.repeat}. CPU seconds: user + system of the build and its "
                   f"workers (the work done, whatever else the machine runs).\n\n{text}\n"
                   + (f"\nResume: {kill}.\n" if kill else ""))


if __name__ == "__main__":
    main()
