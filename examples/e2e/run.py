#!/usr/bin/env python3
"""The end-to-end benchmark (issue 15): what a user of the `viper` CLI waits for on the GPU machine, next to
the reference anchors run in the same command.

It writes (once; reused while the machine lives) a full-size Viper-Mamba-7B-shaped checkpoint with
`make_checkpoint.py`, makes two test images (2352×2352 and 672×448, seeded noise over a gradient, PNG), and runs
the release `viper` binary as a user would (`--backend cuda --dtype bf16`):

- `cold 2352²`, `cold 672×448`, `cold text`: `viper generate` in a new process each; the time from process start
  to the first answer byte on stdout is measured here, the stages come from `--json`'s `"stats"`;
- `chat`: one `viper chat --json` process, turns: the 2352² image (first question in the process), a text
  follow-up, a second 2352² image (warm), the 672×448 image (warm), a text follow-up.

Then the anchors of `../shared/baselines/anchor` (copy ceiling, mamba-ssm prefill/decode, SDPA CLIP) when
`--anchor DIR` names a copy of that kit. Each figure is one JSON line in OUT/e2e.jsonl, and OUT/e2e.md holds the
table for BENCHMARKS.md. Steps run in priority order and are skipped once `--budget-s` is spent.

Usage: python3 examples/e2e/run.py --viper BIN --out DIR [--checkpoint DIR] [--anchor DIR] [--budget-s S]
       [--autotune LEVEL] [--only STEP,...] [--bench BIN]
"""
import argparse
import json
import os
import random
import struct
import subprocess
import sys
import time
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_NEW = 64

p = argparse.ArgumentParser()
p.add_argument("--viper", required=True)
p.add_argument("--out", required=True)
p.add_argument("--checkpoint", default="/tmp/viper-mamba-7b-random")
p.add_argument("--anchor", default=None)
p.add_argument("--budget-s", type=float, default=540)
p.add_argument("--autotune", default=None, help="CUBECL_AUTOTUNE_LEVEL for the viper processes (minimal, balanced...)")
p.add_argument("--only", default=None, help="comma-separated steps: cold_2352,chat,anchors,cold_text,cold_672x448,bench")
p.add_argument("--bench", default=None, help="the release `bench` binary: its plain-backend decode, for the CLI's")
args = p.parse_args()
VIPER_ENV = dict(os.environ, **({"CUBECL_AUTOTUNE_LEVEL": args.autotune} if args.autotune else {}))
os.makedirs(args.out, exist_ok=True)
start = time.time()
log = open(os.path.join(args.out, "e2e.jsonl"), "a")


def emit(**kw):
    line = json.dumps(kw)
    print(line, flush=True)
    log.write(line + "\n")
    log.flush()


def left():
    return args.budget_s - (time.time() - start)


def png(path, w, h, seed):
    """A seeded RGB noise-over-gradient PNG (no Pillow needed): photo-like entropy for the decoder."""
    if os.path.exists(path):
        return
    rng = random.Random(seed)
    noise = bytes(rng.getrandbits(8) for _ in range(4096))
    rows = []
    for y in range(h):
        base = (y * 255) // max(h - 1, 1)
        row = bytearray(3 * w)
        for x in range(0, 3 * w, 3):
            n = noise[(x + 7 * y) % 4096] >> 2
            row[x], row[x + 1], row[x + 2] = (base + n) & 255, ((x // 3) * 255 // max(w - 1, 1)) ^ n, n * 3 & 255
        rows.append(b"\0" + bytes(row))
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(
        b"IDAT", zlib.compress(b"".join(rows), 1)) + chunk(b"IEND", b"")
    with open(path + ".tmp", "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + body)
    os.replace(path + ".tmp", path)


def common():
    return ["--model", args.checkpoint, "--backend", "cuda", "--dtype", "bf16", "--max-new-tokens", str(MAX_NEW),
            "--ignore-eos"]


def cold(name, images, prompt):
    """`viper generate` in a new process: wall time to the first stdout byte and to exit, and `--json` stats."""
    out = os.path.join(args.out, f"{name}.json")
    cmd = [args.viper, "generate", *common(), "--prompt", prompt, "--json", out]
    for im in images:
        cmd += ["--image", im]
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=VIPER_ENV)
    first = proc.stdout.read(1)
    t_first = time.time() - t0
    rest, err = proc.communicate(timeout=max(left(), 30))
    t_exit = time.time() - t0
    if proc.returncode != 0:
        emit(what="e2e", scenario=name, error=err.decode(errors="replace")[-2000:])
        return
    stats = json.load(open(out))["stats"]
    emit(what="e2e", scenario=name, process_to_first_byte_s=t_first if first else None, process_s=t_exit,
         stats=stats)


def chat(images):
    big, big2, small = images
    out = os.path.join(args.out, "chat.json")
    script = (f"/image {big}\nDescribe the image.\nWhat colours are in it?\n/image {big2}\nAnd this one?\n"
              f"/image {small}\nAnd this smaller one?\nSummarise what you saw.\n\n")
    t0 = time.time()
    proc = subprocess.run([args.viper, "chat", *common(), "--json", out], input=script.encode(),
                          capture_output=True, timeout=max(left(), 30), env=VIPER_ENV)
    if proc.returncode != 0 or not os.path.exists(out):
        emit(what="e2e", scenario="chat", error=proc.stderr.decode(errors="replace")[-2000:])
        return
    for i, turn in enumerate(json.load(open(out))):
        emit(what="e2e", scenario=f"chat turn {i + 1}", question=turn["question"], images=turn["images"],
             stats=turn["stats"])
    emit(what="e2e", scenario="chat", process_s=time.time() - t0)


def anchors():
    if not args.anchor:
        return
    site = "/tmp/anchor-site"
    subprocess.run([sys.executable, os.path.join(args.anchor, "anchor_build_kernels.py"), args.anchor, site,
                    "--prebuilt", os.path.join(args.anchor, "so")], check=True, stdout=subprocess.DEVNULL)
    env = dict(os.environ, PYTHONPATH=os.path.join(site, "site"))
    proc = subprocess.run([sys.executable, os.path.join(args.anchor, "anchor_gpu.py"), "copy,mambassm,clip"],
                          capture_output=True, env=env, timeout=max(left(), 60))
    for line in proc.stdout.decode().splitlines():
        try:
            emit(what="anchor", **{("anchor" if k == "what" else k): v for k, v in json.loads(line).items()})
        except json.JSONDecodeError:
            pass
    if proc.returncode != 0:
        emit(what="anchor", error=proc.stderr.decode(errors="replace")[-2000:])


def bench():
    """The library benchmark's decode on the same card, 64 layers, for the CLI's decode rate."""
    if not args.bench:
        return
    report = os.path.join(args.out, "bench_decode.md")
    proc = subprocess.run([args.bench, "decode", "--layers", "64", "--steps", "64", "--out", report],
                          capture_output=True, text=True, timeout=max(left(), 30), env=VIPER_ENV)
    emit(what="bench_decode", rc=proc.returncode, tail=(proc.stdout + proc.stderr)[-3000:])


gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip()
emit(what="env", gpu=gpu, autotune=args.autotune)
t0 = time.time()
made = subprocess.run([sys.executable, os.path.join(HERE, "make_checkpoint.py"), args.checkpoint],
                      capture_output=True, text=True)
if made.returncode != 0:
    emit(what="checkpoint", error=made.stderr[-2000:])
    sys.exit(1)
emit(what="checkpoint_written", seconds=time.time() - t0, info=json.loads(made.stdout.strip().splitlines()[-1]))
imgs = [os.path.join(args.checkpoint, n) for n in ("e2e_2352.png", "e2e_2352b.png", "e2e_672x448.png")]
t0 = time.time()
for path, (w, h, seed) in zip(imgs, [(2352, 2352, 1), (2352, 2352, 2), (672, 448, 3)]):
    png(path, w, h, seed)
emit(what="images_written", seconds=time.time() - t0)

steps = [
    ("anchors", anchors),
    ("cold_2352", lambda: cold("cold_2352", [imgs[0]], "Describe the image.")),
    ("chat", lambda: chat(imgs)),
    ("bench", bench),
    ("cold_text", lambda: cold("cold_text", [], "Write a story about a viper.")),
    ("cold_672x448", lambda: cold("cold_672x448", [imgs[2]], "Describe the image.")),
]
if args.only:
    wanted = args.only.split(",")
    steps = [s for s in steps if s[0] in wanted]
for name, step in steps:
    if left() < 45:
        emit(what="skipped", step=name, seconds_left=left())
        continue
    try:
        step()
    except Exception as e:  # one failed step must not lose the others' figures
        emit(what="failed", step=name, error=repr(e))
emit(what="done", seconds=time.time() - start)
