#!/usr/bin/env bash
# Correctness on CUDA: the kernel tests, the reference checkpoints through the CLI (f32 and bf16), every
# attention strategy against a host f64 reference.
set -u
. examples/e2e/session10/unpack.sh
echo "=== CUDA kernel tests"
[ -x /tmp/vb/it ] && timeout 120 /tmp/vb/it kernels:: --test-threads 1 2>&1 | tail -6
echo "=== parity, cuda f32"
timeout 150 python3 examples/e2e/parity.py --viper /tmp/vb/viper --backend cuda --dtype f32 \
    carry/reference/jamba-s1 carry/reference/mamba-s1 2>&1 | grep -v "^    \(input_ids\|inputs_embeds_len\) OK" | tail -40
echo "=== check-attention"
timeout 240 /tmp/vb/bench_models check-attention --out "$OUT/attention.md" 2>&1 | grep -v "^|" | tail -80
echo "=== parity, cuda bf16"
timeout 60 python3 examples/e2e/parity.py --viper /tmp/vb/viper --backend cuda --dtype bf16 \
    carry/reference/jamba-s1 carry/reference/mamba-s1 2>&1 | grep -v "^    \(input_ids\|inputs_embeds_len\) OK" | tail -25
left() { echo $((570 - SECONDS)); }
if [ "$(left)" -gt 200 ]; then
    echo "=== transformers Jamba (anchor kernels), prefill 9936 ($SECONDS s in)"
    python3 .anchor/anchor_build_kernels.py .anchor /tmp/anchor-site --prebuilt .anchor/so >/dev/null 2>&1
    PYTHONPATH=/tmp/anchor-site/site timeout 120 python3 examples/baselines/hf_jamba.py --prefill 9936 2>&1 | tail -4
    echo "=== bench_models jamba-full ($SECONDS s in)"
    timeout "$(left)" /tmp/vb/bench_models jamba-full --layers 32 --prompt 9936 --steps 32 --out "$OUT/jamba-full.md" 2>&1 | tail -14
fi
echo "=== done at $SECONDS s"
