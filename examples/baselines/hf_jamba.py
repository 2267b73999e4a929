"""transformers' Jamba with the mamba-ssm / causal-conv1d kernels, at the prefill length of our
`bench_models jamba-full` (the anchor kit's `jamba` figure prefills 4096 positions; issue 17 asks for the
same number of positions on both sides). Jamba-1.5-Mini widths, 8 of its 32 layers (one period), random
bf16 weights, batch 1; one JSON line per figure.

Usage (the kernels from the anchor kit on PYTHONPATH):
    PYTHONPATH=/tmp/anc/site python3 examples/baselines/hf_jamba.py --prefill 9936
"""

import argparse
import json
import time

import torch
from transformers import JambaConfig, JambaForCausalLM


def wall(fn, reps=2):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return min(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prefill", type=int, default=9936)
    ap.add_argument("--layers", type=int, default=8)
    a = ap.parse_args()
    cfg = JambaConfig(vocab_size=65536, hidden_size=4096, intermediate_size=14336, num_hidden_layers=a.layers,
                      num_attention_heads=32, num_key_value_heads=8, num_experts=16, num_experts_per_tok=2,
                      attn_layer_period=8, attn_layer_offset=4, expert_layer_period=2, expert_layer_offset=1,
                      mamba_d_state=16, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=256, use_mamba_kernels=True,
                      tie_word_embeddings=False)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        m = JambaForCausalLM(cfg).eval()
    torch.set_default_dtype(torch.float32)
    scale = 32 / a.layers
    with torch.inference_mode():
        ids = torch.randint(0, 60000, (1, a.prefill), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        s = wall(lambda: m(ids, use_cache=False, logits_to_keep=1).logits.argmax(-1).item())
        print(json.dumps(dict(what="hf_jamba_prefill", layers=a.layers, L=a.prefill, ms=s * 1e3,
                              tokens_per_s=a.prefill / s, extrapolated_32_layers_ms=s * 1e3 * scale,
                              extrapolated_32_layers_tokens_per_s=a.prefill / (s * scale),
                              peak_gib=torch.cuda.max_memory_allocated() / 2**30)), flush=True)
        prompt = ids[:, :64]
        g = lambda n: m.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        t1 = wall(lambda: g(1))
        t2 = wall(lambda: g(33))
        ms = (t2 - t1) / 32 * 1e3
        print(json.dumps(dict(what="hf_jamba_decode_after_64", layers=a.layers, ms_per_token=ms,
                              extrapolated_32_layers_tokens_per_s=1e3 / (ms * scale))), flush=True)


if __name__ == "__main__":
    main()
