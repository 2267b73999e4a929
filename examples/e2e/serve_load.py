#!/usr/bin/env python3
"""`viper serve` under load on the GPU machine (issue 19, item 5): requests/s and tokens/s at 1, 8 and 32
concurrent clients, and the time a state-cache hit saves for a 2352×2352 image.

Standard library only (the GPU machine has no `openai` package); the CI's `openai_client.py` checks the
protocol with the real client, this script only times. Starts `viper serve --port 0` on the checkpoint,
then:

- `cache` (first: the figure no other server gives): streamed requests about 2352² images: image A
  (first image in the process: kernels compiled), image B (a miss, warm), image B with another question
  (a hit); time to the first content chunk of each, and `/metrics`' state-cache counters;
- `load`: for each concurrency C, 2·C (at least 8) greedy text requests of `--max-tokens` tokens, distinct
  prompts; wall time, requests/s, completion tokens/s (from `usage`), p50/p99 latency.

Each figure is one JSON line in OUT/serve.jsonl; OUT/serve.md holds the table for BENCHMARKS.md.

Usage: python3 examples/e2e/serve_load.py --viper BIN --model DIR --out DIR [--backend cuda] [--dtype bf16]
       [--max-batch 32] [--max-tokens 64] [--concurrency 1,8,32]
"""
import argparse
import base64
import concurrent.futures
import http.client
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import zlib
import struct
import random

p = argparse.ArgumentParser()
p.add_argument("--viper", required=True)
p.add_argument("--model", required=True)
p.add_argument("--out", required=True)
p.add_argument("--backend", default="cuda")
p.add_argument("--dtype", default="bf16")
p.add_argument("--max-batch", type=int, default=32)
p.add_argument("--max-tokens", type=int, default=64)
p.add_argument("--concurrency", default="1,8,32")
p.add_argument("--skip-cache", action="store_true")
p.add_argument("--bound-s", type=float, default=240, help="longest wait for one request")
args = p.parse_args()
os.makedirs(args.out, exist_ok=True)
rows = []


def record(**row):
    rows.append(row)
    print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, "serve.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def png(width, height, seed):
    """Seeded noise over a gradient, as run.py's images (PNG, no compression to speak of)."""
    rng = random.Random(seed)
    noise = bytes(rng.getrandbits(6) for _ in range(251))
    raw = bytearray()
    for y in range(height):
        raw.append(0)
        row = bytearray(3 * width)
        for x in range(width):
            n = noise[(x * 7 + y * 13) % 251]
            row[3 * x] = (x * 255 // max(width - 1, 1) + n) // 2
            row[3 * x + 1] = (y * 255 // max(height - 1, 1) + n) // 2
            row[3 * x + 2] = n
        raw += row

    def chunk(kind, data):
        c = struct.pack(">I", len(data)) + kind + data
        return c + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(raw), 6)) + chunk(b"IEND", b"")


proc = subprocess.Popen(
    [args.viper, "serve", "--model", args.model, "--port", "0", "--backend", args.backend, "--dtype", args.dtype,
     "--max-batch", str(args.max_batch), "--queue", "512", "--state-cache-mb", "8192", "--model-name", "m"],
    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")},
)
found = {}


def read_stderr():
    for line in proc.stderr:
        if "listening on http://" in line and "addr" not in found:
            found["addr"] = line.split("listening on http://", 1)[1].strip()
        elif "listening" not in line:
            sys.stderr.write("serve: " + line)


threading.Thread(target=read_stderr, daemon=True).start()
t0 = time.time()
while "addr" not in found:
    if proc.poll() is not None or time.time() - t0 > 300:
        proc.kill()
        sys.exit("viper serve did not report its address")
    time.sleep(0.05)
record(step="start", seconds=round(time.time() - t0, 2))
host, port = found["addr"].rsplit(":", 1)


def post(body, stream=False):
    """(seconds, seconds to the first content chunk or None, parsed response or chunks)."""
    conn = http.client.HTTPConnection(host, int(port), timeout=args.bound_s)
    start = time.time()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"status {resp.status}: {resp.read()[:300]!r}")
    if not stream:
        out = json.loads(resp.read())
        return time.time() - start, None, out
    first, chunks, buf = None, [], b""
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: "):
            continue
        data = line[6:]
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        chunks.append(chunk)
        delta = chunk["choices"][0]["delta"] if chunk.get("choices") else {}
        if first is None and delta.get("content"):
            first = time.time() - start
    conn.close()
    return time.time() - start, first, chunks


def metrics():
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return {l.split()[0]: float(l.split()[1]) for l in text.splitlines() if l and not l.startswith("#")}


def text_request(i, max_tokens):
    return {"model": "m", "temperature": 0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": f"Request {i}: describe a viper in {i % 7 + 3} words."}]}


try:
    secs, _, out = post(text_request(0, 8))
    record(step="warmup", seconds=round(secs, 3), completion_tokens=out["usage"]["completion_tokens"])
    if not args.skip_cache:
        images = {k: "data:image/png;base64," + base64.b64encode(png(2352, 2352, seed)).decode() for k, seed in (("A", 1), ("B", 2))}

        def image_request(img, question):
            return {"model": "m", "temperature": 0, "max_tokens": 16, "stream": True,
                    "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": images[img]}},
                                                              {"type": "text", "text": question}]}]}

        before = metrics()
        for label, img, q in (("A first image (cold kernels)", "A", "What is this?"),
                              ("B miss (warm)", "B", "What is this?"),
                              ("B hit, another question", "B", "Which colours?")):
            m0 = metrics()
            secs, first, _ = post(image_request(img, q), stream=True)
            m1 = metrics()
            d = {k: m1.get(k, 0) - m0.get(k, 0) for k in m1}
            record(step="cache", request=label, seconds=round(secs, 3), ttft_s=round(first, 3) if first else None,
                   hits=d.get("viper_state_cache_hits_total"), positions_saved=d.get("viper_state_cache_positions_saved_total"),
                   prefill_positions=d.get("viper_prefill_positions_total"))
        after = metrics()
        record(step="cache_totals", **{k: after[k] - before.get(k, 0) for k in after if "state_cache" in k})
    for c in [int(x) for x in args.concurrency.split(",")]:
        n = max(2 * c, 8)
        # Once per concurrency, so the first batch of that size compiles its kernels before timing.
        with concurrent.futures.ThreadPoolExecutor(c) as pool:
            list(pool.map(lambda i: post(text_request(10_000 + i, 4)), range(c)))
        lat, tokens = [], []
        start = time.time()
        with concurrent.futures.ThreadPoolExecutor(c) as pool:
            for secs, _, out in pool.map(lambda i: post(text_request(i, args.max_tokens)), range(n)):
                lat.append(secs)
                tokens.append(out["usage"]["completion_tokens"])
        wall = time.time() - start
        lat.sort()
        record(step="load", concurrency=c, requests=n, wall_s=round(wall, 3), requests_per_s=round(n / wall, 2),
               completion_tokens=sum(tokens), tokens_per_s=round(sum(tokens) / wall, 1),
               p50_s=round(statistics.median(lat), 3), p99_s=round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 3))
finally:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()

with open(os.path.join(args.out, "serve.md"), "w") as f:
    f.write("| step | figures |\n|---|---|\n")
    for r in rows:
        f.write(f"| {r['step']} | " + ", ".join(f"{k} {v}" for k, v in r.items() if k != "step") + " |\n")
