#!/usr/bin/env python3
"""Tiny random FalconMamba checkpoints and their reference outputs, for viper's fidelity tests.

Reference: transformers' `FalconMambaForCausalLM` (4.45.2, PyTorch path on CPU), float32.
Environment: tests/generator/requirements.txt. Run by hand from the repository root:

    python3 -m venv /tmp/pyref && /tmp/pyref/bin/pip install -r tests/generator/requirements.txt
    /tmp/pyref/bin/python tests/generator/gen_falcon_mamba.py

Writes tests/fixtures/falcon_mamba/<name>/{config.json, model.safetensors, expected.safetensors}.
Deterministic: fixed seeds, one thread. `expected.safetensors` holds, per case j:
  case{j}.input_ids [L] i64, case{j}.logits [L, V] f32 (one forward without cache),
  case{j}.generated_ids [16] i64 (greedy argmax, EOS ignored, uncached loop: see `greedy`),
  case{j}.conv.{layer} [I, K] and case{j}.ssm.{layer} [I, N] (HF cache after the prefill).
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file
from common import NEW_TOKENS, greedy, init_mamba_param
from transformers import FalconMambaConfig, FalconMambaForCausalLM

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "falcon_mamba")

# Odd sizes on purpose: d_inner, d_state, dt_rank not powers of two; a tied model; a bf16-on-disk model;
# sequences of length 1 and shorter than the conv window.
MODELS = {
    "fm-odd": dict(hidden_size=48, num_hidden_layers=2, intermediate_size=80, state_size=5, conv_kernel=4,
                   time_step_rank=6, vocab_size=97, tie_word_embeddings=False, mixer_rms_eps=1e-6,
                   layer_norm_epsilon=1e-5, expand=16, dtype="float32"),
    "fm-tied-bf16": dict(hidden_size=32, num_hidden_layers=3, intermediate_size=64, state_size=16, conv_kernel=3,
                         time_step_rank=4, vocab_size=61, tie_word_embeddings=True, mixer_rms_eps=1e-6,
                         layer_norm_epsilon=1e-5, expand=2, dtype="bfloat16"),
}
PROMPT_LENGTHS = [11, 1, 2, 70]


def init_weights(model, gen):
    """Non-degenerate weights: logits that vary enough for greedy decoding to be robust to 1e-4 errors."""
    for name, p in model.named_parameters():
        with torch.no_grad():
            if init_mamba_param(name, p, gen):
                continue
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2:
                fan_in = p.shape[-1]
                scale = 1.0 if "embeddings" in name else 1.5 / fan_in ** 0.5
                if name.startswith("lm_head"):
                    scale = 4.0 / fan_in ** 0.5
                p.copy_(scale * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


@torch.no_grad()
def build(name, spec, seed):
    spec = dict(spec)
    dtype = spec.pop("dtype")
    cfg = FalconMambaConfig(**spec, use_cache=True, bos_token_id=0, eos_token_id=1, pad_token_id=0)
    # 4.45 recomputes intermediate_size from expand only when absent; make sure ours won.
    assert cfg.intermediate_size == spec["intermediate_size"]
    gen = torch.Generator().manual_seed(seed)
    model = FalconMambaForCausalLM(cfg).eval()
    init_weights(model, gen)
    if cfg.tie_word_embeddings:
        model.tie_weights()
    if dtype == "bfloat16":
        # Round weights to bf16 (what is stored); the reference computes in f32 from the rounded values.
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))

    expected, margins = {}, []
    for j, length in enumerate(PROMPT_LENGTHS):
        ids = torch.randint(0, cfg.vocab_size, (1, length), generator=gen)
        logits = model(ids).logits[0]
        out = model(ids, use_cache=True)
        assert torch.allclose(out.logits[0], logits)
        new, margin = greedy(model, ids)
        margins.append(margin)
        expected[f"case{j}.input_ids"] = ids[0].clone()
        expected[f"case{j}.logits"] = logits.float().contiguous()
        expected[f"case{j}.generated_ids"] = new.clone()
        for layer in range(cfg.num_hidden_layers):
            expected[f"case{j}.conv.{layer}"] = out.cache_params.conv_states[layer][0].float().contiguous()
            expected[f"case{j}.ssm.{layer}"] = out.cache_params.ssm_states[layer][0].float().contiguous()
    return model, cfg, expected, dtype, margins


def main():
    for idx, (name, spec) in enumerate(MODELS.items()):
        for seed in range(1000 + 100 * idx, 1000 + 100 * idx + 50):
            model, cfg, expected, dtype, margins = build(name, spec, seed)
            distinct = [len(set(expected[f"case{j}.generated_ids"].tolist())) for j in range(len(PROMPT_LENGTHS))]
            if min(margins) >= 1e-2 and min(distinct) >= 4:
                break
            print(f"{name}: seed {seed} rejected (margin {min(margins):.2e}, distinct {distinct})", file=sys.stderr)
        else:
            raise SystemExit(f"{name}: no acceptable seed")
        out = os.path.join(OUT, name)
        os.makedirs(out, exist_ok=True)
        save_dtype = torch.bfloat16 if dtype == "bfloat16" else torch.float32
        model.to(save_dtype).save_pretrained(out, safe_serialization=True)
        meta = {"seed": str(seed), "min_greedy_margin": f"{min(margins):.4g}", "torch": torch.__version__,
                "transformers": __import__("transformers").__version__}
        save_file(expected, os.path.join(out, "expected.safetensors"), metadata=meta)
        for f in ("generation_config.json",):
            if os.path.exists(os.path.join(out, f)):
                os.remove(os.path.join(out, f))
        print(f"{name}: seed {seed}, min margin {min(margins):.3g}, dtype {dtype}")


if __name__ == "__main__":
    main()
