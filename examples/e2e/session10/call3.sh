#!/usr/bin/env bash
# Session 10, call 3: the full-shape Jamba LM next to transformers' Jamba (anchor kernels), then
# `viper serve` on the 7B-shaped checkpoint: load, concurrency, a state-cache hit for a 2352² image.
set -u
. examples/e2e/session10/unpack.sh
left() { echo $((465 - SECONDS)); }
(python3 examples/e2e/make_checkpoint.py /tmp/viper-mamba-7b-random > /tmp/mk.log 2>&1; echo "checkpoint written at $SECONDS s" >> /tmp/mk.log) &
echo "=== transformers Jamba (anchor kernels), prefill 9936"
python3 .anchor/anchor_build_kernels.py .anchor /tmp/anchor-site --prebuilt .anchor/so >/dev/null 2>&1
PYTHONPATH=/tmp/anchor-site/site timeout 90 python3 examples/baselines/hf_jamba.py --prefill 9936 2>&1 | tail -4
wait
tail -2 /tmp/mk.log
echo "=== bench_models jamba-full ($SECONDS s)"
timeout 150 /tmp/vb/bench_models jamba-full --layers 32 --prompt 9936 --steps 32 --out "$OUT/jamba-full.md" 2>&1 | tail -14
echo "=== viper serve ($SECONDS s)"
timeout "$(left)" python3 -u examples/e2e/serve_load.py --viper /tmp/vb/viper --model /tmp/viper-mamba-7b-random \
    --out "$OUT/serve" --concurrency 1,8,32 --bound-s 200 2>&1 | tail -20
echo "=== done at $SECONDS s"
