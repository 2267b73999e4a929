#!/usr/bin/env python3
"""Fixtures for viper-vision's fidelity tests: tiny random CLIP towers and an extract of the reference dirs.

Reference: transformers' `CLIPVisionModel` / `CLIPModel` (4.45.2, eager attention, CPU), float32.
Pinned environment: torch==2.4.0 transformers==4.45.2 safetensors numpy (tests/generator/requirements.txt).
Run by hand from the repository root:

    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install -r tests/generator/requirements.txt
    /tmp/pyref/bin/python tests/generator/gen_clip.py [--reference /work/shared/reference]

Writes, under tests/fixtures/vision/:

* `clip-<name>/` for each entry of MODELS: `config.json` and `model.safetensors` as `save_pretrained`
  writes them (a `CLIPVisionModel` with `vision_model.*` keys, or a whole `CLIPModel` whose vision
  hyper-parameters sit in `config.json["vision_config"]` and whose checkpoint also holds `text_model.*`,
  `visual_projection`, `text_projection`, `logit_scale`), `fixture.json` (the select layer/feature the
  tests use as the model's own setting) and `expected.safetensors`: `pixel_values` [n, 3, S, S] and every
  `hidden_states.{i}` [n, 1 + P, D] of `output_hidden_states=True` (i = 0 is the `pre_layrnorm` output).
* `projector/`: `model.safetensors` with a `linear` projector under `linear.mm_projector.{weight,bias}` and an
  `mlp3x_gelu` one under `mlp3x.mm_projector.{0,2,4}.{weight,bias}` (upstream `build_vision_projector`'s
  layouts), `expected.safetensors` with an `input` [2, 5, 20] and each projector's `<name>.output`.
* `reference/<family>/` from the upstream reference dirs (when `--reference` exists): the Viper
  `config.json`, `model.safetensors` with only the vision tower, projector and `image_newline` tensors
  (original keys and dtype), `expected.safetensors` with `<case>.{pixel_values, image_sizes,
  clip_features, projected_features, image_features}` of the cases in REFERENCE_CASES, and `cases.json`
  with their anyres geometry from `reference.json`.

Deterministic: fixed seeds, one thread.
"""
import argparse
import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModel

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "vision")

# Odd widths and head dims, non-336 tiles, both activations, bf16 on disk, a legacy `position_ids` buffer.
MODELS = {
    "clip-odd": dict(
        vision=dict(hidden_size=40, intermediate_size=72, num_attention_heads=5, num_hidden_layers=4,
                    image_size=42, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5),
        full_clip=False, dtype="float32", position_ids=True, batch=3,
        select_layer=-2, select_feature="patch", seed=11),
    "clip-gelu-bf16": dict(
        vision=dict(hidden_size=36, intermediate_size=60, num_attention_heads=3, num_hidden_layers=3,
                    image_size=30, patch_size=10, hidden_act="gelu", layer_norm_eps=1e-6),
        full_clip=True, dtype="bfloat16", position_ids=False, batch=4,
        select_layer=1, select_feature="cls_patch", seed=12),
}

REFERENCE_CASES = {"mamba-s1": ["image_97x61", "image_40x120", "image_23x17"],
                   "jamba-s1": ["image_97x61", "image_84x84"]}
REFERENCE_TENSORS = ["pixel_values", "image_sizes", "clip_features", "projected_features", "image_features"]
REFERENCE_GEOMETRY = ["image_size", "num_crops", "best_resolution", "grid_w_h", "feature_grid_before_unpad_h_w",
                      "unpadded_h_w", "base_image_tokens", "num_image_tokens"]


@torch.no_grad()
def init_weights(model, gen):
    """Non-degenerate weights: every layer changes the hidden state visibly (HF's init barely does)."""
    for name, p in model.named_parameters():
        if "norm" in name and name.endswith("weight"):
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
        elif name.endswith("class_embedding") or "position_embedding" in name or "token_embedding" in name:
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
        elif p.dim() >= 2:
            fan_in = p[0].numel()
            p.copy_(1.2 / fan_in ** 0.5 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@torch.no_grad()
def build_clip(name, spec):
    gen = torch.Generator().manual_seed(spec["seed"])
    vision = dict(spec["vision"], attn_implementation="eager")
    if spec["full_clip"]:
        text = dict(hidden_size=24, intermediate_size=40, num_attention_heads=2, num_hidden_layers=1,
                    vocab_size=50, max_position_embeddings=16)
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=20)
        model = CLIPModel(config).eval()
        tower = model.vision_model
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**vision)).eval()
        tower = model.vision_model
    init_weights(model, gen)
    if spec["dtype"] == "bfloat16":
        # What is stored is bf16; the reference computes in f32 from the rounded values.
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))

    s = vision["image_size"]
    pixels = torch.randn((spec["batch"], 3, s, s), generator=gen)
    states = tower(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(states) == vision["num_hidden_layers"] + 1
    expected = {"pixel_values": pixels.contiguous()}
    for i, h in enumerate(states):
        expected[f"hidden_states.{i}"] = h.float().contiguous()
    # Every layer must move the features: a skipped or repeated layer would then fail the 1e-4 tolerance.
    for i in range(1, len(states)):
        change = (states[i] - states[i - 1]).abs().max() / states[i].abs().max()
        assert change > 0.05, f"{name}: layer {i} barely changes the hidden state ({change:.3g})"

    out = os.path.join(OUT, name)
    os.makedirs(out, exist_ok=True)
    model.to(torch.bfloat16 if spec["dtype"] == "bfloat16" else torch.float32).save_pretrained(out)
    if spec["position_ids"]:
        # Old CLIP files store the `position_ids` buffer; a reader must ignore it.
        path = os.path.join(out, "model.safetensors")
        weights = load_file(path)
        weights["vision_model.embeddings.position_ids"] = torch.arange((s // vision["patch_size"]) ** 2 + 1)[None]
        save_file(weights, path, metadata={"format": "pt"})
    meta = {"seed": str(spec["seed"]), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__}
    save_file(expected, os.path.join(out, "expected.safetensors"), metadata=meta)
    with open(os.path.join(out, "fixture.json"), "w") as f:
        json.dump({"select_layer": spec["select_layer"], "select_feature": spec["select_feature"]}, f, indent=2)
    print(f"{name}: {len(states)} hidden states, batch {spec['batch']}, dtype {spec['dtype']}")


@torch.no_grad()
def build_projectors():
    """Upstream `build_vision_projector`: `nn.Linear`, or `nn.Sequential(Linear, GELU(), Linear, ...)`."""
    gen = torch.Generator().manual_seed(13)
    mm_hidden, hidden = 20, 12
    projectors = {
        "linear": torch.nn.Linear(mm_hidden, hidden),
        "mlp3x": torch.nn.Sequential(torch.nn.Linear(mm_hidden, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden),
                                     torch.nn.GELU(), torch.nn.Linear(hidden, hidden)),
    }
    x = torch.randn((2, 5, mm_hidden), generator=gen)
    weights, expected = {}, {"input": x}
    for name, module in projectors.items():
        for key, p in module.named_parameters():
            p.copy_(1.5 / p.shape[-1] ** 0.5 * torch.randn(p.shape, generator=gen))
            weights[f"{name}.mm_projector.{key}"] = p.detach().clone()
        expected[f"{name}.output"] = module(x)
    out = os.path.join(OUT, "projector")
    os.makedirs(out, exist_ok=True)
    save_file(weights, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    save_file(expected, os.path.join(out, "expected.safetensors"))
    print(f"projector: {sorted(weights)}")


def extract_reference(root):
    for family, cases in REFERENCE_CASES.items():
        src, out = os.path.join(root, family), os.path.join(OUT, "reference", family)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(src, "config.json")) as f:
            config = json.load(f)
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump(config, f, indent=2)

        keep = (".vision_tower.vision_tower.", ".mm_projector.")
        with safe_open(os.path.join(src, "model.safetensors"), "pt") as f:
            weights = {k: f.get_tensor(k) for k in f.keys() if any(s in k for s in keep) or k.endswith("image_newline")}
        save_file(weights, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})

        with safe_open(os.path.join(src, "reference.safetensors"), "pt") as f:
            tensors = {f"{c}.{t}": f.get_tensor(f"{c}.{t}") for c in cases for t in REFERENCE_TENSORS}
        save_file(tensors, os.path.join(out, "expected.safetensors"), metadata={"source": f"{family}/reference.safetensors"})

        with open(os.path.join(src, "reference.json")) as f:
            reference = json.load(f)
        geometry = [{k: c[k] for k in ["name"] + REFERENCE_GEOMETRY} for c in reference["cases"] if c["name"] in cases]
        assert len(geometry) == len(cases)
        with open(os.path.join(out, "cases.json"), "w") as f:
            json.dump({"source": f"{family}/reference.json", "versions": reference["versions"], "cases": geometry},
                      f, indent=2)
        print(f"reference/{family}: {len(weights)} weights, cases {cases}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="/work/shared/reference",
                        help="directory holding the upstream reference dirs mamba-s1/ and jamba-s1/")
    args = parser.parse_args()
    for name, spec in MODELS.items():
        build_clip(name, spec)
    build_projectors()
    if os.path.isdir(args.reference):
        extract_reference(args.reference)
    else:
        print(f"{args.reference} not found: reference extract left as is")


if __name__ == "__main__":
    main()
