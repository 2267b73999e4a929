#!/usr/bin/env python3
"""Pillow's verdict on every prefix of the decode fixtures, for viper-processor's truncation rules.

Pinned environment (the verdicts depend on the Pillow version and its bundled libjpeg-turbo/libwebp):
    python3 -m venv /tmp/pyproc && /tmp/pyproc/bin/pip install pillow==10.4.0

Run from the repository root:
    /tmp/pyproc/bin/python tests/generator/gen_truncation.py [--jpeg-rule]

Writes `tests/fixtures/processor/truncation.json`: for each file of `decode/`, its length and the
ranges `[first, last]` of prefix lengths that `Image.open(BytesIO(prefix)).convert("RGB")` accepts
(every other prefix raises). The Rust test `truncated_prefixes_fail_like_pillow` requires viper to
refuse every prefix Pillow refuses.

`--jpeg-rule` also checks the JPEG rule of `viper_processor::ImageLoader` (the entropy-coded data of the
last scan must be ended by an EOI, after at least one SOS) against Pillow on every prefix of 32
synthesized JPEGs (baseline/progressive, L/RGB, 4:4:4/4:2:0, four sizes) plus the two fixtures, and
prints the prefixes where they disagree (412,568 prefixes; 2 disagreements with Pillow 10.4, both
grey.jpg missing only its EOI marker).
"""

import argparse
import io
import json
import os
import random
import warnings

from PIL import Image, ImageFile

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "processor")
ImageFile.MAXBLOCK = 1 << 24
warnings.simplefilter("ignore")


def pillow_accepts(data):
    try:
        Image.open(io.BytesIO(data)).convert("RGB")
        return True
    except Exception:
        return False


def ranges(values):
    out = []
    for v in values:
        if out and out[-1][1] == v - 1:
            out[-1][1] = v
        else:
            out.append([v, v])
    return out


def jpeg_complete(d):
    """The rule of viper_processor's `jpeg_complete`, in Python."""
    if d[:2] != b"\xff\xd8":
        return False
    p, n, scans = 2, len(d), 0
    while True:
        while p < n and d[p] != 0xFF:
            p += 1
        while p < n and d[p] == 0xFF:
            p += 1
        if p >= n:
            return False
        marker = d[p]
        p += 1
        if marker == 0xD9:
            return scans > 0
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        if p + 2 > n:
            return False
        length = d[p] << 8 | d[p + 1]
        if length < 2 or p + length > n:
            return False
        p += length
        if marker == 0xDA:
            scans += 1
            while True:
                while p < n and d[p] != 0xFF:
                    p += 1
                if p + 1 >= n:
                    return False
                if d[p + 1] == 0 or 0xD0 <= d[p + 1] <= 0xD7:
                    p += 2
                    continue
                break


def check_jpeg_rule():
    rng = random.Random(1)
    jpegs = []
    for w, h in [(29, 17), (97, 61), (300, 200), (64, 64)]:
        for mode in ["RGB", "L"]:
            for progressive in [False, True]:
                for subsampling in [0, 2]:
                    im = Image.new(mode, (w, h))
                    pixel = (lambda: tuple(rng.randrange(256) for _ in range(3))) if mode == "RGB" else (lambda: rng.randrange(256))
                    im.putdata([pixel() for _ in range(w * h)])
                    buf = io.BytesIO()
                    im.save(buf, "JPEG", progressive=progressive, subsampling=subsampling, quality=rng.choice([50, 90]))
                    jpegs.append((f"{w}x{h} {mode} progressive={progressive} subsampling={subsampling}", buf.getvalue()))
    for name in ["rgb.jpg", "grey.jpg"]:
        jpegs.append((name, open(os.path.join(ROOT, "decode", name), "rb").read()))
    total = 0
    for name, data in jpegs:
        disagree = [len(data) - cut for cut in range(2, len(data) + 1) if jpeg_complete(data[:cut]) != pillow_accepts(data[:cut])]
        total += len(data) - 1
        print(f"{name}: {len(data)} bytes, disagreements at (bytes cut): {disagree}")
    print(f"{total} prefixes checked")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--jpeg-rule", action="store_true")
    args = parser.parse_args()
    table = {}
    decode = os.path.join(ROOT, "decode")
    for name in sorted(os.listdir(decode)):
        if name.endswith(".rgb"):
            continue
        data = open(os.path.join(decode, name), "rb").read()
        accepted = [cut for cut in range(1, len(data) + 1) if pillow_accepts(data[:cut])]
        table[name] = {"len": len(data), "pillow_accepts": ranges(accepted)}
    with open(os.path.join(ROOT, "truncation.json"), "w") as f:
        json.dump(table, f, indent=1, sort_keys=True)
        f.write("\n")
    if args.jpeg_rule:
        check_jpeg_rule()


if __name__ == "__main__":
    main()
