#!/usr/bin/env python3
"""Generate the Pillow fixtures for the `viper-processor` crate.

Pinned environment (the outputs depend on the exact Pillow version):
    python3 -m venv /tmp/pyproc && /tmp/pyproc/bin/pip install pillow==10.4.0 numpy==1.26.4

Run from the repository root:
    /tmp/pyproc/bin/python tests/generator/gen_processor.py [--reference DIR]

Writes `tests/fixtures/processor/` (deterministic: fixed seeds, no timestamps):
  manifest.json         index of everything below, read by the Rust tests
  resize/*.rgb          raw RGB8 (row-major, interleaved) sources and their Pillow BICUBIC resizes
  decode/*              one small image encoded in several formats / modes, plus `*.rgb`, the raw
                        output of Pillow's `Image.open(f).convert("RGB")` for each
  anyres/*.png, *.f32   small images and their anyres `pixel_values` (raw little-endian f32,
                        shape in the manifest), computed with a port of upstream `viper/mm_utils.py`
                        (`process_anyres_image`) and CLIPImageProcessor's rescale + normalise
  bad/*.png             hostile headers: 0x0, and a decompression bomb
  mamba-s1/             copied from the upstream reference dir (`--reference`, default
                        /work/shared/reference/mamba-s1): its PNGs, config.json, the anyres geometry
                        of each case (cases.json) and its `<case>.pixel_values` tensors
                        (pixel_values.safetensors); skipped with a warning when the dir is absent
"""

import argparse
import io
import json
import math
import shutil
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

assert Image.__version__ == "10.4.0", f"needs pillow==10.4.0, found {Image.__version__}"

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "processor"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def rgb_bytes(im):
    return np.asarray(im.convert("RGB"), dtype=np.uint8).tobytes()


def write(rel, data):
    path = OUT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return rel


def png_file(width, height, bit_depth, color_type, raw):
    """A PNG with the given header and (already filtered) scanline bytes."""
    def chunk(tag, data):
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def png16(arr, color_type):
    """16-bit PNG (Pillow cannot save 16-bit RGB/RGBA)."""
    h, w = arr.shape[:2]
    return png_file(w, h, 16, color_type, b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h)))


def gen_bad():
    """Hostile PNGs: a 0x0 header, and a 60000x60000 header (3.6 GP) over a few bytes of data."""
    write("bad/zero.png", png_file(0, 0, 8, 2, b""))
    write("bad/bomb.png", png_file(60000, 60000, 8, 2, b"\x00" * 1000))


def smooth_image(rng, w, h):
    """Gradients plus noise: realistic enough for lossy codecs, still full of edges."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1),
                     127.5 + 127.5 * np.sin((x + 2 * y) / 3.0)], axis=-1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def gen_resize(rng):
    """Pillow BICUBIC resizes of random sources, down and up, odd sizes, one axis at a time."""
    cases = []
    plan = {
        (37, 23): [(13, 7), (101, 67), (37, 51), (19, 23), (1, 1), (3, 97), (36, 22)],
        (160, 120): [(56, 56), (23, 17), (7, 5), (161, 121), (160, 11)],
        (1, 40): [(5, 9), (3, 1), (1, 97)],
    }
    for (sw, sh), targets in plan.items():
        src = Image.fromarray(rng.integers(0, 256, (sh, sw, 3), dtype=np.uint8))
        src_rel = write(f"resize/src_{sw}x{sh}.rgb", rgb_bytes(src))
        for tw, th in targets:
            dst = src.resize((tw, th), Image.Resampling.BICUBIC)
            rel = write(f"resize/src_{sw}x{sh}_to_{tw}x{th}.rgb", rgb_bytes(dst))
            cases.append({"src": src_rel, "src_size": [sw, sh], "dst": rel, "dst_size": [tw, th]})
    return cases


def gen_decode(rng):
    """One 29x17 picture in many containers; expected = Pillow's `open(f).convert("RGB")`."""
    w, h = 29, 17
    rgb = smooth_image(rng, w, h)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    grey16 = (np.arange(w * h, dtype=np.uint32).reshape(h, w) * 151 % 65536).astype(np.uint16)
    im = Image.fromarray(rgb)

    def saved(image, fmt, **kw):
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kw)
        return buf.getvalue()

    frame2 = Image.fromarray(255 - rgb).quantize(64)
    files = {
        # name: (encoded bytes, pixels must match Pillow bit for bit)
        "rgb.png": (saved(im, "PNG"), True),
        "rgba.png": (saved(Image.fromarray(np.dstack([rgb, alpha])), "PNG"), True),
        "la.png": (saved(Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA"), "PNG"), True),
        "l1.png": (saved(im.convert("1"), "PNG"), True),
        "p_trns.png": (saved(im.quantize(16), "PNG", transparency=3), True),
        "l16.png": (saved(Image.fromarray(grey16), "PNG"), True),
        "rgb16.png": (png16(rgb.astype(np.uint16) * 256 + rng.integers(0, 256, rgb.shape).astype(np.uint16), 2), True),
        "rgba16.png": (png16(np.dstack([rgb, alpha]).astype(np.uint16) * 256 + 255, 6), True),
        "rgb.jpg": (saved(im, "JPEG", quality=90), False),
        "grey.jpg": (saved(im.convert("L"), "JPEG", quality=90), False),
        "lossless.webp": (saved(im, "WEBP", lossless=True), True),
        "lossy.webp": (saved(im, "WEBP", quality=80), True),
        "anim.gif": (saved(im.quantize(64), "GIF", save_all=True, append_images=[frame2],
                           duration=100, loop=0), True),
        "rgb.bmp": (saved(im, "BMP"), True),
        "p.bmp": (saved(im.quantize(16), "BMP"), True),
        "rgb.tif": (saved(im, "TIFF"), True),
        "rgb_lzw.tif": (saved(im, "TIFF", compression="tiff_lzw"), True),
        "l16.tif": (saved(Image.fromarray(grey16), "TIFF"), True),
    }
    cases = []
    for name, (data, exact) in files.items():
        rel = write(f"decode/{name}", data)
        expected = Image.open(io.BytesIO(data))
        assert expected.size == (w, h)
        cases.append({"file": rel, "expected": write(f"decode/{name}.rgb", rgb_bytes(expected)),
                      "size": [w, h], "exact": exact})
    return cases


def select_best_resolution(size, pinpoints):
    # Verbatim logic of upstream viper/mm_utils.py.
    ow, oh = size
    best, max_eff, min_waste = None, 0, float("inf")
    for w, h in pinpoints:
        scale = min(w / ow, h / oh)
        eff = min(int(ow * scale) * int(oh * scale), ow * oh)
        waste = w * h - eff
        if eff > max_eff or (eff == max_eff and waste < min_waste):
            best, max_eff, min_waste = (w, h), eff, waste
    return best


def resize_and_pad(image, target):
    ow, oh = image.size
    tw, th = target
    sw, sh = tw / ow, th / oh
    if sw < sh:
        nw, nh = tw, min(math.ceil(oh * sw), th)
    else:
        nw, nh = min(math.ceil(ow * sh), tw), th
    canvas = Image.new("RGB", (tw, th), (0, 0, 0))
    canvas.paste(image.resize((nw, nh)), ((tw - nw) // 2, (th - nh) // 2))
    return canvas


def clip_normalize(image):
    # CLIPImageProcessor: rescale in float64, cast to float32, normalise in float32, CHW.
    x = (np.asarray(image, dtype=np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return x.transpose(2, 0, 1)


def unpad(size, grid, side):
    # upstream unpad_image on a (rows*side, cols*side) feature grid: kept rows, kept cols.
    ow, oh = size
    cols, rows = grid
    cur_h, cur_w = rows * side, cols * side
    if ow / oh > cur_w / cur_h:
        pad = (cur_h - int(oh * (cur_w / ow))) // 2
        return [pad, cur_h - pad], [0, cur_w]
    pad = (cur_w - int(ow * (cur_h / oh))) // 2
    return [0, cur_h], [pad, cur_w - pad]


def gen_anyres(rng):
    tile, patch = 56, 14
    pinpoints_literal = "[(56, 56), (56, 112), (112, 56), (112, 112), (56, 168), (168, 56)]"
    pinpoints = [tuple(p) for p in json.loads(pinpoints_literal.replace("(", "[").replace(")", "]"))]
    cases = []
    for w, h in [(131, 45), (15, 29), (1, 200)]:  # 1x200: no pinpoint keeps a whole pixel
        image = Image.fromarray(smooth_image(rng, w, h))
        best = select_best_resolution(image.size, pinpoints)
        padded = resize_and_pad(image, best)
        tiles = [padded.crop((x, y, x + tile, y + tile))
                 for y in range(0, best[1], tile) for x in range(0, best[0], tile)]
        crops = [image.resize((tile, tile))] + tiles
        pixel_values = np.stack([clip_normalize(c) for c in crops]).astype("<f4")
        grid = [best[0] // tile, best[1] // tile]
        rows, cols = unpad((w, h), grid, tile // patch)
        kept_h, kept_w = rows[1] - rows[0], cols[1] - cols[0]
        cases.append({
            "image": write(f"anyres/image_{w}x{h}.png", _png(image)),
            "pixel_values": write(f"anyres/image_{w}x{h}.f32", pixel_values.tobytes()),
            "shape": list(pixel_values.shape),
            "best_resolution": list(best),
            "grid": grid,
            "kept_rows": rows,
            "kept_cols": cols,
            "num_image_tokens": (tile // patch) ** 2 + kept_h * (kept_w + 1),
        })
    return {"tile_size": tile, "patch_size": patch, "pinpoints": pinpoints_literal, "cases": cases}


def _png(image):
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def read_safetensors(path):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header.pop("__metadata__", None)
    return header, data[8 + n:]


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, blob) in sorted(tensors.items()):
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def copy_reference(ref):
    """Copy what the tests need from the upstream reference dir (absent in CI, so copied here)."""
    if not ref.is_dir():
        print(f"warning: {ref} not found, keeping the existing mamba-s1 fixtures", file=sys.stderr)
        return
    dst = OUT / "mamba-s1"
    (dst / "images").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ref / "config.json", dst / "config.json")
    meta = json.loads((ref / "reference.json").read_text())
    header, blob = read_safetensors(ref / "reference.safetensors")
    keys = ["name", "image", "image_size", "best_resolution", "grid_w_h",
            "feature_grid_before_unpad_h_w", "unpadded_h_w", "base_image_tokens", "num_image_tokens"]
    cases, tensors = [], {}
    for case in meta["cases"]:
        if case.get("image") is None:
            continue
        shutil.copyfile(ref / case["image"], dst / case["image"])
        cases.append({k: case[k] for k in keys})
        t = header[f"{case['name']}.pixel_values"]
        start, end = t["data_offsets"]
        tensors[f"{case['name']}.pixel_values"] = (t["dtype"], t["shape"], blob[start:end])
    write_safetensors(dst / "pixel_values.safetensors", tensors)
    (dst / "cases.json").write_text(json.dumps(cases, indent=1) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, default=Path("/work/shared/reference/mamba-s1"))
    args = parser.parse_args()
    for sub in ["resize", "decode", "anyres", "bad"]:
        shutil.rmtree(OUT / sub, ignore_errors=True)
    rng = np.random.default_rng(20240610)
    manifest = {
        "pillow": Image.__version__,
        "resize": gen_resize(rng),
        "decode": gen_decode(rng),
        "anyres": gen_anyres(rng),
    }
    gen_bad()
    copy_reference(args.reference)
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
