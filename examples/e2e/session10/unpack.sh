# Sourced by the session-10 call scripts (BENCHMARKS.md, session 10), run from the repository root on
# the GPU machine with `carry` = ["carry", ".anchor"]: carry/*.xz holds the stripped release binaries.
mkdir -p /tmp/vb
for b in carry/*.xz; do n=$(basename "$b" .xz); [ -x /tmp/vb/$n ] || xz -dc "$b" > /tmp/vb/$n & done
wait
chmod +x /tmp/vb/*
export CUBECL_AUTOTUNE_LEVEL="${CUBECL_AUTOTUNE_LEVEL:-minimal}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
