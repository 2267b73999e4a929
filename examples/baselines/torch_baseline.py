"""PyTorch baseline on the GPU machine, run in the same call as `bench` so both sets of figures come from
one card and one session (see BENCHMARKS.md).

Uses whatever torch/transformers the GPU machine has (no mamba-ssm there: transformers' PyTorch path,
which is what a Python user gets without compiling the CUDA kernels). falcon-mamba-7b shapes, random
bf16 weights, batch 1. Prints one markdown row per measurement.
"""

import time

import torch
import transformers
from transformers import FalconMambaConfig, FalconMambaForCausalLM


def timed(fn, reps=3):
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2]


def main():
    dev = torch.device("cuda")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.cuda.get_device_name()}")
    x = torch.empty(1 << 28, dtype=torch.float32, device=dev)
    s = timed(lambda: x.clone(), reps=10)
    print(f"| torch device-to-device copy, 1 GiB (read + write) | {2 * x.numel() * 4 / s / 1e9:.0f} GB/s |")
    del x

    cfg = FalconMambaConfig(
        hidden_size=4096, num_hidden_layers=64, vocab_size=65024, state_size=16, conv_kernel=4,
        time_step_rank=256, intermediate_size=8192, use_conv_bias=True, residual_in_fp32=True,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    with torch.device(dev):
        model = FalconMambaForCausalLM(cfg).to(torch.bfloat16).eval()
    with torch.no_grad():
        for length in (2048,):
            ids = torch.randint(0, 60000, (1, length), device=dev)
            s = timed(lambda: model(ids).logits[:, -1].argmax(-1).item(), reps=2)
            print(f"| transformers eager | prefill L = {length} | {length / s:.0f} tokens/s | {s * 1e3:.1f} ms |")
        prompt = torch.arange(1, 33, device=dev).unsqueeze(0)
        new = 64
        gen = lambda: model.generate(prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False, use_cache=True)
        s = timed(gen, reps=1)
        print(f"| transformers eager | decode, batch 1 ({new} new tokens, generate) | {new / s:.1f} tokens/s | {s * 1e3 / new:.2f} ms/token |")
    print(f"| torch peak memory allocated | {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB |")


if __name__ == "__main__":
    main()
