"""`repa bench NAME`: the performance harness. Each benchmark returns figures (a dict) that are
printed and, with --out, written as JSON; targets are met here, never in timed unit tests.

    sit       forward+backward time and peak memory of SiT-B/2 + one 768-d projector (batch 8, 32x32x4)
    sampler   Euler 50 steps with CFG on a small SiT: images/s
    data      loader throughput, official layout vs packed (10,000 synthetic ImageNet-shaped samples),
              and ADM center-crop throughput
    coco      `repa preprocess coco`'s stages at full size (synthetic 640x480 JPEGs, random SD-VAE and CLIP
              ViT-L/14 text tower): crop, moments, contexts per second, and COCO 2014's time at those rates
    train     training throughput and peak memory: SiT-B/2 + REPA (dinov2-vit-b architecture, random
              weights), online vs cached features; on a GPU also SiT-XL/2 batch 32 bf16, compiled or not
    sample    `repa sample` images/s for a tiny model (CPU) or SiT-XL/2 with the paper's sampler (GPU)
    digits    the offline encoder: training time and linear-probe accuracy on held-out digits
    contention the quickstart's training rate idle and beside another PyTorch process, with repa's
              thread policy and with the thread count fixed at the cores

"Official layout": the dataset layout of the official REPA code (sihyun-yu/REPA @ 67f7145, dataset.py).
"""

from __future__ import annotations

import importlib

BENCHMARKS = {
    "sit": "repa.bench.models:bench_sit",
    "sampler": "repa.bench.models:bench_sampler",
    "data": "repa.bench.data:bench_data",
    "coco": "repa.bench.data:bench_coco",
    "train": "repa.bench.train:bench_train",
    "sample": "repa.bench.models:bench_sample",
    "digits": "repa.bench.models:bench_digits",
    "contention": "repa.bench.contention:bench_contention",
}


def run(name: str, **options) -> dict:
    module, function = BENCHMARKS[name].split(":")
    return getattr(importlib.import_module(module), function)(**options)
