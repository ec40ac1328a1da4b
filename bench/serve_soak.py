"""A bounded soak of `agentflan serve` (loopback only): a few thousand mixed requests (good, bad,
huge, abandoned) against the real CLI server in a subprocess; it must end up, with flat memory,
every good request answered 200, every bad one a 4xx, every huge one 413.

* good: chat, 1-4 generated tokens;
* bad: a malformed or refused request (bad JSON, `n: "abc"`, a lone surrogate, an unknown model,
  `temperature: -1`, deep nesting, an unknown parameter, ...): 4xx;
* huge: a 4 MiB body (the server allows 1 MiB): 413 from the header, before the body is read;
* abandoned: a request for 2,000 tokens whose client hangs up after 50 ms (its generation must stop).

The server's resident memory (VmRSS of its process) is read after a warm-up and at the end.

    python bench/serve_soak.py [--requests 2000] [--no-write]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

BAD = [b"{not json", b'{"messages": [{"role": "user", "content": "x"}], "n": "abc"}',
       b'{"messages": [{"role": "user", "content": "bad \\ud800"}]}',
       b'{"model": "../../etc/passwd", "messages": [{"role": "user", "content": "x"}]}',
       b'{"messages": [{"role": "user", "content": "x"}], "temperature": -1}',
       b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
       b'{"messages": [{"role": "user", "content": "x"}], "wizard": true}',
       b'{"messages": [{"role": "wizard", "content": "x"}]}',
       b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', b"[]"]


def rss_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process, KiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def raw(port: int, head: bytes, body: bytes, hang_up_after: float | None = None) -> int:
    """Send a request over a socket; its status (0 when we hung up on purpose)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(head)
        with contextlib.suppress(OSError):  # the server answered (413) and closed while the body was still going
            s.sendall(body)
        if hang_up_after is not None:
            time.sleep(hang_up_after)
            return 0
        data = b""
        while b"\r\n" not in data:
            got = s.recv(4096)
            if not got:
                break
            data += got
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/") else -1


def request(port: int, body: bytes, length: int | None = None, hang_up_after: float | None = None) -> int:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % (len(body) if length is None else length))
    return raw(port, head, body, hang_up_after)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    import _doc
    from serve_load import tiny_model_folder

    rng = random.Random(0)
    kinds = rng.choices(["good", "bad", "huge", "abandoned"], weights=[50, 25, 10, 15], k=args.requests)
    huge = b'{"messages": [{"role": "user", "content": "' + b"x" * (4 * 2**20) + b'"}]}'
    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_model_folder(Path(tmp) / "model", hidden=64, layers=2)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        proc = subprocess.Popen([sys.executable, "-m", "agentflan.cli.main", "serve", str(folder), "--port", str(port),
                                 "--model-name", "tiny", "--batch-size", "8", "--max-queue", "256", "--max-body-mb", "1",
                                 "--max-new-tokens", "4", "--threads", "1"], env=env, stderr=subprocess.PIPE, text=True)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    urllib.request.urlopen(base + "/health", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.2)

            def one(k: int) -> tuple[str, int]:
                kind = kinds[k]
                if kind == "good":
                    body = {"model": "tiny", "max_tokens": 1 + k % 4,
                            "messages": [{"role": "user", "content": f"hello world {k}"}]}
                    return kind, request(port, json.dumps(body).encode())
                if kind == "bad":
                    return kind, request(port, BAD[k % len(BAD)])
                if kind == "huge":
                    return kind, request(port, huge)
                body = {"model": "tiny", "max_tokens": 2000, "messages": [{"role": "user", "content": f"long {k}"}]}
                return kind, request(port, json.dumps(body).encode(), hang_up_after=0.05)

            warm = min(200, args.requests // 10)
            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                results = list(pool.map(one, range(warm)))
                time.sleep(1)
                before = rss_kib(proc.pid)
                results += list(pool.map(one, range(warm, args.requests)))
            seconds = time.perf_counter() - start
            time.sleep(2)  # abandoned generations leave the batch at the next step
            after = rss_kib(proc.pid)
            with urllib.request.urlopen(base + "/health", timeout=10) as r:
                health = json.loads(r.read())
        finally:
            proc.terminate()
            err = proc.communicate(timeout=60)[1]
    statuses: dict[str, Counter[int]] = {k: Counter() for k in ("good", "bad", "huge", "abandoned")}
    for kind, status in results:
        statuses[kind][status] += 1
    ok = {"good": set(statuses["good"]) == {200}, "bad": all(400 <= s < 500 for s in statuses["bad"]),
          "huge": set(statuses["huge"]) == {413}}
    up = health["status"] == "ok" and health["active"] == 0 and health["waiting"] == 0
    table = ["| requests | good: 200 | bad: 4xx | huge: 413 | abandoned | seconds | server RSS after warm-up | "
             "RSS at the end | peak RSS | up and idle at the end | exit on SIGTERM |", "|---|---|---|---|---|---|---|---|---|---|---|",
             f"| {len(results)} | {statuses['good'][200]}/{sum(statuses['good'].values())} | "
             f"{sum(v for s, v in statuses['bad'].items() if 400 <= s < 500)}/{sum(statuses['bad'].values())} | "
             f"{statuses['huge'][413]}/{sum(statuses['huge'].values())} | {sum(statuses['abandoned'].values())} | "
             f"{seconds:.0f} | {before[0] / 1024:.0f} MiB | {after[0] / 1024:.0f} MiB | {after[1] / 1024:.0f} MiB | "
             f"{'yes' if up else 'NO'} | {proc.returncode} |"]
    print({k: dict(v) for k, v in statuses.items()}, health, ok, err.strip().splitlines()[-1:] if err else "")
    intro = (f"`python bench/serve_soak.py --requests {args.requests}`: the `agentflan serve` CLI (tiny Llama, "
             "`--batch-size 8 --max-queue 256 --max-body-mb 1 --threads 1`) on loopback, "
             f"{args.concurrency} client threads; good chat requests (1-4 tokens), bad ones (malformed or refused), "
             "4 MiB bodies, and 2,000-token requests abandoned after 50 ms, mixed 50/25/10/15 (seeded). Machine: "
             f"{_doc.machine()}.")
    _doc.publish("agentflan serve: soak of mixed good, bad, huge and abandoned requests", intro, "\n".join(table),
                 write=not args.no_write)
    if not (all(ok.values()) and up):
        sys.exit(1)


if __name__ == "__main__":
    main()
