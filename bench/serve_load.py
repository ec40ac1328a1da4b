"""`agentflan serve` under load (loopback only, bounded): throughput and p50/p99 latency at
concurrency 1, 8 and 32, continuous batching against one request at a time, same tiny model.

The server runs in this process (uvicorn on 127.0.0.1, a free port); clients are threads posting
chat completions over HTTP. Every request asks for a reply of a fixed, seeded length (8 to 64
tokens; the model's end-of-turn token is disabled so each reply has exactly `max_tokens` tokens:
both arms generate the same tokens, only the scheduling differs):

* **one at a time**: `--batch-size 1`: each request is generated alone, the others wait in the queue;
* **continuous**: `--batch-size 32`: each request joins the running batch at the next decoding step
  and leaves it when its reply is done (`agentflan.models.batching`).

    python bench/serve_load.py [--requests 64] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))


def tiny_model_folder(folder: Path, hidden: int = 256, layers: int = 4) -> Path:
    """A tiny Llama (random weights) with a BPE tokenizer and the agentflan template, saved as `train` saves."""
    from agentflan.training.models import INFO_FILE, tiny_model, tiny_tokenizer

    words = ["Thought: I need a tool", "Action: Finish", 'Action Input: {"final_answer": "x"}',
             "the weather in Paris is sunny", "hello world"]
    tok = tiny_tokenizer(words * 20)
    model = tiny_model(len(tok), {"hidden_size": hidden, "intermediate_size": 4 * hidden, "num_hidden_layers": layers,
                                  "num_attention_heads": 4, "num_key_value_heads": 2})
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / INFO_FILE).write_text(json.dumps({"template": "agentflan", "protocols": {"react": 1}}))
    return folder


def start(folder: Path, batch: int, queue: int, max_tokens_limit: int = 4096, **limits: Any) -> tuple[Any, str, Any]:
    """An in-process server on a free loopback port: (uvicorn server, base url, agentflan Server)."""
    import uvicorn

    from agentflan.models.engines import HFEngine
    from agentflan.serve import Limits, Server, create_app

    engine = HFEngine(folder, batch_size=batch, prefix_cache_gb=0)
    engine.stop_ids, engine.end_stops = set(), ()  # replies run to max_tokens: equal work in both arms
    server = Server(engine, model_name="tiny", max_active=batch, max_queue=queue,
                    limits=Limits(max_tokens_limit=max_tokens_limit, **limits))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="error"))
    threading.Thread(target=uv.run, daemon=True).start()
    while not uv.started:
        time.sleep(0.05)
    return uv, f"http://127.0.0.1:{port}", server


def post(url: str, body: dict[str, Any], timeout: float = 600) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def load(url: str, concurrency: int, lengths: list[int]) -> dict[str, float]:
    """Post one request per length with `concurrency` clients; throughput and latency percentiles."""
    latencies: list[float] = []
    tokens = 0

    def one(k: int) -> None:
        nonlocal tokens
        t = time.perf_counter()
        status, reply = post(url, {"model": "tiny", "max_tokens": lengths[k],
                                   "messages": [{"role": "user", "content": f"hello world {k}"}]})
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {reply}")
        latencies.append(time.perf_counter() - t)
        tokens += reply["usage"]["completion_tokens"]

    start_t = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(lengths))))
    wall = time.perf_counter() - start_t
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"requests": len(lengths), "seconds": wall, "req_s": len(lengths) / wall, "tok_s": tokens / wall,
            "p50": statistics.median(latencies), "p99": q[98]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64, help="Requests per (arm, concurrency); at least 32.")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: a shared machine's cores are busy).")
    ap.add_argument("--no-write", action="store_true", help="Print only; do not append to docs/benchmarks.md.")
    args = ap.parse_args()
    import os

    import torch

    torch.set_num_threads(args.threads)

    import _doc

    rng = random.Random(0)
    levels = [int(c) for c in args.concurrency.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = tiny_model_folder(Path(tmp) / "model")
        for arm, batch in (("one at a time", 1), ("continuous", 32)):
            uv, url, server = start(folder, batch=batch, queue=256)
            post(url, {"model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "warm up"}]})
            for c in levels:
                n = max(args.requests, c) if c > 1 else max(8, args.requests // 4)
                lengths = [rng.randint(8, 64) for _ in range(n)]
                r = load(url, c, lengths)
                rows.append((arm, c, r))
                print(f"{arm:14} c={c:<3} {r['requests']} requests {r['seconds']:.1f}s {r['req_s']:.2f} req/s "
                      f"{r['tok_s']:.0f} tok/s p50 {r['p50']:.2f}s p99 {r['p99']:.2f}s", flush=True)
            uv.should_exit = True
            server.close()
            time.sleep(0.5)
    base = {c: r for arm, c, r in rows if arm == "one at a time"}
    table = ["| scheduling | concurrency | requests | req/s | tokens/s | p50 latency (s) | p99 latency (s) | "
             "throughput vs one at a time |", "|---|---|---|---|---|---|---|---|"]
    for arm, c, r in rows:
        table.append(f"| {arm} | {c} | {r['requests']} | {r['req_s']:.2f} | {r['tok_s']:.0f} | {r['p50']:.2f} | "
                     f"{r['p99']:.2f} | {r['tok_s'] / base[c]['tok_s']:.2f}x |")
    load_avg = os.getloadavg()[0]
    intro = (f"`python bench/serve_load.py --requests {args.requests}`: `agentflan serve` on loopback, a tiny "
             "Llama (hidden 256, 4 layers, random weights, float32, CPU), chat requests of 8-64 generated tokens "
             "(seeded; end of turn disabled so both arms generate the same tokens), clients as threads. "
             f"Machine: {_doc.machine(f'torch {torch.__version__}, {torch.get_num_threads()} threads')}; load "
             f"average {load_avg:.1f} at the end (the machine was shared: absolute figures are noisy, the "
             "ratio between arms at one concurrency is the result).")
    _doc.publish("agentflan serve: continuous batching vs one request at a time", intro, "\n".join(table),
                 write=not args.no_write)


if __name__ == "__main__":
    main()
