#!/usr/bin/env bash
# Run every CPU benchmark (and the GPU ones when a GPU is present); figures in benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
for name in sit sampler train data coco sample digits contention; do
  repa bench "$name" --out "benchmarks/results/$name.json"
done
