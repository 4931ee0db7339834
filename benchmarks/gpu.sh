#!/usr/bin/env bash
# One card's figures in one go (under 8 minutes on an H100/H200-class GPU): SiT-XL/2 + REPA training
# img/s, MFU and peak memory (batch 32 and 64, bf16, eager vs compiled, online vs cached features),
# the paper sampler's img/s (fp32, bf16), the packed loader's samples/s. See repa/bench/gpu.py.
#   bash benchmarks/gpu.sh             # on the GPU machine: benchmarks/results/gpu-<card>.json + a table
#   bash benchmarks/gpu.sh --dry-run   # toy sizes on the CPU: checks the script (the test suite runs it)
set -euo pipefail
cd "$(dirname "$0")/.."
exec python -m repa.bench.gpu "$@"
