#!/usr/bin/env bash
# Session 10, call 2: the cuBLAS attention's correctness (kernel tests, CLI parity f32/bf16, the attention
# check) and speed (CLIP next to SDPA, full-shape Jamba next to transformers), one command.
set -u
. examples/e2e/session10/unpack.sh
left() { echo $((575 - SECONDS)); }
echo "=== CUDA kernel tests"
timeout 150 /tmp/vb/it kernels:: --test-threads 1 2>&1 | grep -v "^test .* ok$" | grep -E "attention|test result|FAIL|panick|rel err .*attention" | tail -30
echo "=== parity, cuda f32 ($SECONDS s)"
timeout 170 python3 -u examples/e2e/parity.py --viper /tmp/vb/viper --backend cuda --dtype f32 \
    carry/reference/jamba-s1 carry/reference/mamba-s1 2>&1 | grep -v "^    \(input_ids\|inputs_embeds_len\) OK" | tail -40
echo "=== anchors: copy, SDPA CLIP ($SECONDS s)"
python3 .anchor/anchor_build_kernels.py .anchor /tmp/anchor-site --prebuilt .anchor/so >/dev/null 2>&1
PYTHONPATH=/tmp/anchor-site/site timeout 90 python3 .anchor/anchor_gpu.py copy,clip 2>&1 | tail -4
echo "=== bench_models clip ($SECONDS s)"
timeout 120 /tmp/vb/bench_models clip --out "$OUT/clip.md" 2>&1 | tail -8
if [ "$(left)" -gt 100 ]; then
  echo "=== check-attention ($SECONDS s)"
  timeout "$(left)" /tmp/vb/bench_models check-attention --out "$OUT/attention.md" 2>&1 | grep -v "^|" | grep -v "flash accelerated" | tail -60
fi
echo "=== done at $SECONDS s"
