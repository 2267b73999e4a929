#!/usr/bin/env bash
# Session 10, call 4 (the device time left after a refused call 3): `viper serve` on the 7B-shaped
# checkpoint: load, 1/8/32 concurrent clients, a state-cache hit for a 2352² image.
set -u
. examples/e2e/session10/unpack.sh
python3 examples/e2e/make_checkpoint.py /tmp/viper-mamba-7b-random 2>&1 | tail -2
echo "=== viper serve ($SECONDS s)"
timeout $((330 - SECONDS)) python3 -u examples/e2e/serve_load.py --viper /tmp/vb/viper --model /tmp/viper-mamba-7b-random \
    --out "$OUT/serve" --concurrency 1,8,32 --bound-s 150 2>&1 | tail -20
echo "=== done at $SECONDS s"
