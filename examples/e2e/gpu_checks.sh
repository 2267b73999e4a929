#!/usr/bin/env bash
# One GPU-machine call: the reference checkpoints through the CLI on CUDA (f32), every strategy of Burn's
# attention against a host reference, the full-shape Jamba LM next to transformers' Jamba with the anchor
# kit's kernels (same command, as BENCHMARKS.md asks). See examples/README.md.
#
# Usage: examples/e2e/gpu_checks.sh BIN_DIR REFERENCE_DIR ANCHOR_DIR OUT_DIR
#   BIN_DIR: the release `viper` and `bench_models` (features cuda,fusion,autotune)
#   REFERENCE_DIR: a copy of the shared reference checkpoints (mamba-s1/, jamba-s1/)
#   ANCHOR_DIR: a copy of the anchor kit (anchor_build_kernels.py, so/)
set -u
bin=$1 ref=$2 anchor=$3 out=$4
mkdir -p "$out"
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
echo "=== parity, cuda f32"
timeout 200 python3 examples/e2e/parity.py --viper "$bin/viper" --backend cuda --dtype f32 \
    "$ref/jamba-s1" "$ref/mamba-s1" 2>&1 | grep -v "^    \(input_ids\|inputs_embeds_len\) OK"
echo "=== check-attention"
timeout 150 "$bin/bench_models" check-attention --out "$out/attention.md" 2>&1 | grep -v "^|"
echo "=== transformers Jamba (anchor kernels), prefill 9936"
python3 "$anchor/anchor_build_kernels.py" "$anchor" /tmp/anchor-site --prebuilt "$anchor/so" >/dev/null 2>&1
PYTHONPATH=/tmp/anchor-site/site timeout 120 python3 examples/baselines/hf_jamba.py --prefill 9936 2>&1 | tail -4
echo "=== bench_models jamba-full"
timeout 240 "$bin/bench_models" jamba-full --layers 32 --prompt 9936 --steps 32 --out "$out/jamba-full.md" 2>&1 | tail -12
