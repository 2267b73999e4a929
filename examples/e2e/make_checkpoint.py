#!/usr/bin/env python3
"""Writes a full-size Viper-Mamba-7B-shaped checkpoint directory with random bf16 weights, in the published
layout (docs/spec.md §9.1 and §9.3), for the end-to-end benchmark (`examples/e2e/run.py`).

The layout: 4 safetensors shards + `model.safetensors.index.json`, `config.json` with the `mm_*` keys, AnyRes
pinpoints up to 2352×2352 (x·y ≤ 49 tiles of 336), the CLIP ViT-L/14-336 tower unfrozen inside the checkpoint
(`backbone.vision_tower.vision_tower.vision_model.*`), and a tokenizer whose vocabulary covers the model's
65024 rows (the tiny reference tokenizer's byte-level BPE, its vocabulary padded with plain tokens).

Random weights are scaled so that activations stay finite over 64 layers: the figures are about time and
memory, not answers. Written once: an existing directory with a complete index is reused.

Usage: python3 examples/e2e/make_checkpoint.py OUT_DIR   (needs torch and safetensors; uses CUDA if present)
"""
import json
import math
import os
import sys

import torch
from safetensors.torch import save_file

H, LAYERS, I, N, R, K, V = 4096, 64, 8192, 16, 256, 4, 65024
CLIP_W, CLIP_FF, CLIP_LAYERS, PATCH, IMAGE = 1024, 4096, 24, 14, 336
SHARDS = 4
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TINY = os.path.join(ROOT, "tests", "fixtures", "reference", "mamba-s1")

out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/viper-mamba-7b-random"
index_path = os.path.join(out, "model.safetensors.index.json")
if os.path.exists(index_path) and os.path.exists(os.path.join(out, "tokenizer.json")):
    print(json.dumps({"what": "checkpoint", "dir": out, "reused": True}))
    sys.exit(0)
os.makedirs(out, exist_ok=True)
dev = "cuda" if torch.cuda.is_available() else "cpu"
gen = torch.Generator(device=dev).manual_seed(0)


def randn(*shape, std):
    return (torch.randn(*shape, generator=gen, device=dev, dtype=torch.float32) * std).to(torch.bfloat16).cpu()


def const(*shape, value):
    return torch.full(shape, value, dtype=torch.bfloat16)


def tensors():
    """(key, tensor) in checkpoint order; shapes as the published checkpoint's."""
    yield "backbone.embeddings.weight", randn(V, H, std=0.02)
    for i in range(LAYERS):
        p = f"backbone.layers.{i}."
        yield p + "norm.weight", const(H, value=1.0)
        yield p + "mixer.in_proj.weight", randn(2 * I, H, std=1 / math.sqrt(H))
        yield p + "mixer.conv1d.weight", randn(I, 1, K, std=0.5)
        yield p + "mixer.conv1d.bias", randn(I, std=0.1)
        yield p + "mixer.x_proj.weight", randn(R + 2 * N, I, std=1 / math.sqrt(I))
        yield p + "mixer.dt_proj.weight", randn(I, R, std=1 / math.sqrt(R))
        # softplus(bias) ≈ dt in [1e-3, 1e-1], as Mamba initialises it.
        dt = torch.exp(torch.rand(I, generator=gen, device=dev) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        yield p + "mixer.dt_proj.bias", (dt + torch.log(-torch.expm1(-dt))).to(torch.bfloat16).cpu()
        yield p + "mixer.A_log", torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(I, 1).to(torch.bfloat16)
        yield p + "mixer.D", const(I, value=1.0)
        yield p + "mixer.out_proj.weight", randn(H, I, std=0.1 / math.sqrt(I))
    yield "backbone.norm_f.weight", const(H, value=1.0)
    yield "lm_head.weight", randn(V, H, std=0.02)
    yield "backbone.mm_projector.0.weight", randn(H, CLIP_W, std=1 / math.sqrt(CLIP_W))
    yield "backbone.mm_projector.0.bias", const(H, value=0.0)
    yield "backbone.mm_projector.2.weight", randn(H, H, std=1 / math.sqrt(H))
    yield "backbone.mm_projector.2.bias", const(H, value=0.0)
    yield "backbone.image_newline", randn(H, std=0.02)
    c = "backbone.vision_tower.vision_tower.vision_model."
    yield c + "embeddings.class_embedding", randn(CLIP_W, std=0.02)
    yield c + "embeddings.patch_embedding.weight", randn(CLIP_W, 3, PATCH, PATCH, std=0.02)
    yield c + "embeddings.position_embedding.weight", randn((IMAGE // PATCH) ** 2 + 1, CLIP_W, std=0.02)
    yield c + "pre_layrnorm.weight", const(CLIP_W, value=1.0)
    yield c + "pre_layrnorm.bias", const(CLIP_W, value=0.0)
    for j in range(CLIP_LAYERS):
        p = f"{c}encoder.layers.{j}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            yield p + f"self_attn.{proj}.weight", randn(CLIP_W, CLIP_W, std=1 / math.sqrt(CLIP_W))
            yield p + f"self_attn.{proj}.bias", const(CLIP_W, value=0.0)
        for norm in ("layer_norm1", "layer_norm2"):
            yield p + f"{norm}.weight", const(CLIP_W, value=1.0)
            yield p + f"{norm}.bias", const(CLIP_W, value=0.0)
        yield p + "mlp.fc1.weight", randn(CLIP_FF, CLIP_W, std=1 / math.sqrt(CLIP_W))
        yield p + "mlp.fc1.bias", const(CLIP_FF, value=0.0)
        yield p + "mlp.fc2.weight", randn(CLIP_W, CLIP_FF, std=0.1 / math.sqrt(CLIP_FF))
        yield p + "mlp.fc2.bias", const(CLIP_W, value=0.0)
    yield c + "post_layernorm.weight", const(CLIP_W, value=1.0)
    yield c + "post_layernorm.bias", const(CLIP_W, value=0.0)


# Shards of about equal size, in key order, as transformers' save_pretrained splits them.
total = 0
budget = 15.3e9 / SHARDS
weight_map, shard, shard_bytes, names = {}, {}, 0, []


def flush():
    global shard, shard_bytes
    name = f"model-{len(names) + 1:05d}-of-{SHARDS:05d}.safetensors"
    save_file(shard, os.path.join(out, name + ".tmp"), metadata={"format": "pt"})
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
    names.append(name)
    for key in shard:
        weight_map[key] = name
    shard, shard_bytes = {}, 0


for key, t in tensors():
    shard[key] = t.contiguous()
    shard_bytes += t.numel() * 2
    total += t.numel() * 2
    if shard_bytes >= budget and len(names) < SHARDS - 1:
        flush()
flush()

pinpoints = [[x * IMAGE, y * IMAGE] for x in range(1, 8) for y in range(1, 8) if x * y <= 49]
tiny = json.load(open(os.path.join(TINY, "config.json")))
config = dict(tiny)
config.update({
    "hidden_size": H, "num_hidden_layers": LAYERS, "intermediate_size": I, "expand": 16, "state_size": N,
    "time_step_rank": R, "conv_kernel": K, "vocab_size": V, "torch_dtype": "bfloat16",
    "mm_hidden_size": CLIP_W, "mm_vision_tower": "openai/clip-vit-large-patch14-336",
    "unfreeze_mm_vision_tower": True, "image_grid_pinpoints": pinpoints, "tokenizer_model_max_length": 65536,
})
config["vision_config"] = dict(tiny["vision_config"], hidden_size=CLIP_W, intermediate_size=CLIP_FF,
                               num_attention_heads=16, num_hidden_layers=CLIP_LAYERS, image_size=IMAGE,
                               projection_dim=768, torch_dtype="bfloat16", _name_or_path="openai/clip-vit-large-patch14-336")
config["vision_preprocessor_config"] = dict(tiny["vision_preprocessor_config"],
                                            crop_size={"height": IMAGE, "width": IMAGE},
                                            size={"shortest_edge": IMAGE})
json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)

for name in ("generation_config.json", "special_tokens_map.json", "tokenizer_config.json"):
    with open(os.path.join(TINY, name)) as src, open(os.path.join(out, name), "w") as dst:
        dst.write(src.read())
tok = json.load(open(os.path.join(TINY, "tokenizer.json")))
vocab = tok["model"]["vocab"]
taken = set(vocab.values()) | {a["id"] for a in tok["added_tokens"]}
for i in range(V):
    if i not in taken:
        vocab[f"x{i}"] = i
json.dump(tok, open(os.path.join(out, "tokenizer.json"), "w"))

# The index last: its presence marks a complete directory.
json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, open(index_path + ".tmp", "w"), indent=2)
os.replace(index_path + ".tmp", index_path)
print(json.dumps({"what": "checkpoint", "dir": out, "bytes": total, "shards": names, "reused": False}))
