#!/usr/bin/env python3
"""Tiny random Jamba checkpoints and their reference outputs, for viper's fidelity tests.

Reference: transformers' `JambaForCausalLM` (4.45.2, PyTorch path on CPU, eager attention), float32.
Environment: tests/generator/requirements.txt. Run by hand from the repository root:

    /tmp/pyref/bin/python tests/generator/gen_jamba.py

Writes tests/fixtures/jamba/<name>/{config.json, model.safetensors, expected.safetensors}; per case j:
  case{j}.input_ids [L] i64, case{j}.logits [L, V] f32 (one forward without cache),
  case{j}.generated_ids [16] i64 (greedy argmax by re-running the sequence, EOS ignored).
Seeds are accepted only when every greedy step has a top-1/top-2 logit gap >= 1e-2 and every routing
decision a gap >= 1e-4 between the 2nd and 3rd expert probability.
"""
import os
import sys

import torch
from safetensors.torch import save_file
from common import NEW_TOKENS, greedy, init_mamba_param
from transformers import JambaConfig, JambaForCausalLM

torch.set_num_threads(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "jamba")

MODELS = {
    # GQA 4/2, attention at layers 1 and 3, MoE (5 experts, top-2) at layers 0 and 2, odd sizes.
    "jb-gqa": dict(hidden_size=48, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=40, num_experts=5, num_experts_per_tok=2, expert_layer_period=2,
                   expert_layer_offset=0, attn_layer_period=2, attn_layer_offset=1, mamba_d_state=6,
                   mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=5, vocab_size=83, dtype="float32"),
    # MQA (one kv head), attention first, MoE on the last layer only, bf16 on disk, dt_rank "auto".
    "jb-mqa-bf16": dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=1,
                        intermediate_size=24, num_experts=4, num_experts_per_tok=2, expert_layer_period=3,
                        expert_layer_offset=2, attn_layer_period=3, attn_layer_offset=0, mamba_d_state=16,
                        mamba_d_conv=3, mamba_expand=2, mamba_dt_rank="auto", vocab_size=71, dtype="bfloat16"),
}
PROMPT_LENGTHS = [9, 1, 3, 40]


def init_weights(model, gen):
    for name, p in model.named_parameters():
        with torch.no_grad():
            if init_mamba_param(name, p, gen):
                continue
            if "norm" in name and p.dim() == 1:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2:
                fan_in = p.shape[-1]
                scale = 1.0 if "embed_tokens" in name else 1.2 / fan_in ** 0.5
                if "router" in name:
                    scale = 3.0 / fan_in ** 0.5
                if name.startswith("lm_head"):
                    scale = 4.0 / fan_in ** 0.5
                p.copy_(scale * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def router_margins(model):
    """Smallest gap between the k-th and (k+1)-th routing probability, over all MoE calls."""
    gaps = []

    def hook(mod, inp, out):
        x = inp[0].reshape(-1, inp[0].shape[-1])
        probs = torch.softmax(mod.router(x).float(), dim=-1)
        top = probs.topk(mod.top_k + 1, dim=-1).values
        gaps.append(float((top[:, mod.top_k - 1] - top[:, mod.top_k]).min()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if type(m).__name__ == "JambaSparseMoeBlock"]
    return gaps, handles


@torch.no_grad()
def build(spec, seed):
    spec = dict(spec)
    dtype = spec.pop("dtype")
    cfg = JambaConfig(**spec, use_mamba_kernels=False, tie_word_embeddings=False, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2, attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed)
    model = JambaForCausalLM(cfg).eval()
    init_weights(model, gen)
    if dtype == "bfloat16":
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    gaps, handles = router_margins(model)
    expected, margins = {}, []
    for j, length in enumerate(PROMPT_LENGTHS):
        ids = torch.randint(3, cfg.vocab_size, (1, length), generator=gen)
        logits = model(ids).logits[0]
        new, margin = greedy(model, ids)
        margins.append(margin)
        expected[f"case{j}.input_ids"] = ids[0].clone()
        expected[f"case{j}.logits"] = logits.float().contiguous()
        expected[f"case{j}.generated_ids"] = new.clone()
    for h in handles:
        h.remove()
    return model, cfg, expected, dtype, min(margins), min(gaps)


def main():
    for idx, (name, spec) in enumerate(MODELS.items()):
        for seed in range(2000 + 100 * idx, 2000 + 100 * idx + 60):
            model, cfg, expected, dtype, margin, gap = build(spec, seed)
            distinct = min(len(set(expected[f"case{j}.generated_ids"].tolist())) for j in range(len(PROMPT_LENGTHS)))
            if margin >= 1e-2 and gap >= 1e-4 and distinct >= 4:
                break
            print(f"{name}: seed {seed} rejected (margin {margin:.2e}, router gap {gap:.2e}, distinct {distinct})", file=sys.stderr)
        else:
            raise SystemExit(f"{name}: no acceptable seed")
        out = os.path.join(OUT, name)
        os.makedirs(out, exist_ok=True)
        model.to(torch.bfloat16 if dtype == "bfloat16" else torch.float32).save_pretrained(out, safe_serialization=True)
        gen_cfg = os.path.join(out, "generation_config.json")
        if os.path.exists(gen_cfg):
            os.remove(gen_cfg)
        meta = {"seed": str(seed), "min_greedy_margin": f"{margin:.4g}", "min_router_gap": f"{gap:.4g}",
                "torch": torch.__version__, "transformers": __import__("transformers").__version__}
        save_file(expected, os.path.join(out, "expected.safetensors"), metadata=meta)
        print(f"{name}: seed {seed}, min margin {margin:.3g}, router gap {gap:.3g}, dtype {dtype}")


if __name__ == "__main__":
    main()
