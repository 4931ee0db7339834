"""`benchmarks/gpu.sh`: one card's figures in one go, under 8 minutes on an H100/H200-class GPU.

- training: SiT-XL/2 + REPA (dinov2-vit-b architecture at block 8, random weights), bf16, batch 32 and
  64, eager vs regionally compiled, online vs cached encoder features: img/s, peak memory, FLOPs per
  step counted from the model (torch.utils.flop_counter) and MFU against the card's dense bf16 peak;
- the paper's sampler (SDE 250 steps, CFG 1.8 on [0, 0.7]) through `repa sample`, fp32 and bf16,
  with the network evaluations per image it made (the unconditional half is skipped outside the
  interval);
- the packed loader's samples/s on a synthetic ImageNet-shaped set.

Writes benchmarks/results/gpu-<card>.json and prints one table. `--dry-run` runs every eager case
on the CPU at toy size with one timed repeat (compiled cases are listed, not run): it checks the
script, not the figures, and the test suite runs it so it cannot rot.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

# Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets, without sparsity).
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.0,
                    "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}


def peak_tflops(card: str) -> float | None:
    for name, peak in PEAK_BF16_TFLOPS.items():
        if name.lower() in card.lower():
            return peak
    return None


def training_cases(dry_run: bool) -> list[dict]:
    cases = []
    for batch in ((1,) if dry_run else (32, 64)):
        for compiled in (False, "blocks"):
            for features in ("online", "cached"):
                cases.append({"size": "S" if dry_run else "XL", "batch": batch, "precision": "bf16",
                              "compiled": compiled, "features": features})
    return cases


def run_training(device: str, dry_run: bool, peak: float | None) -> list[dict]:
    from repa.bench.timing import isolated
    from repa.bench.train import train_case

    rows = []
    for case in training_cases(dry_run):
        label = (f"train SiT-{case['size']}/2+REPA b{case['batch']} {case['precision']} "
                 f"{'compiled' if case['compiled'] else 'eager'} {case['features']}")
        if dry_run and case["compiled"]:
            rows.append({"case": label, "skipped": "compiled cases do not run in --dry-run"})
            continue
        options = dict(device=device, count_flops=True, repeat=1 if dry_run else 10, **case)
        # each case in its own process (its own peak memory), except in a dry run (start-up time)
        figures = train_case(**options) if dry_run else isolated("repa.bench.train:train_case", **options)
        if peak and "achieved_tflops" in figures:
            figures["mfu"] = figures["achieved_tflops"] / peak
        rows.append({"case": label, **figures})
    return rows


def run_sampling(device: str, dry_run: bool) -> list[dict]:
    from repa.bench.models import sample_case

    rows = []
    for precision in ("fp32", "bf16"):
        for interval in ((0.0, 0.7), (0.0, 1.0)):
            label = f"sample paper SDE{' (toy)' if dry_run else ''} {precision} cfg 1.8 on [{interval[0]}, {interval[1]}]"
            rows.append({"case": label, **sample_case(device, precision, interval, dry_run)})
    return rows


def run_loader(dry_run: bool) -> list[dict]:
    from repa.bench.data import packed_throughput

    count = 256 if dry_run else 8192
    return [{"case": f"packed loader, {count} samples, 256 px + latents", **packed_throughput(count, seconds=2 if dry_run else 20)}]


def table(rows: list[dict]) -> str:
    keys = ("images_per_s", "samples_per_s", "mfu", "peak_memory_gib", "tflops_per_step", "nfe_per_image")
    lines = [f"{'case':<62} " + " ".join(f"{k:>16}" for k in keys)]
    for row in rows:
        cells = []
        for k in keys:
            v = row.get(k)
            cells.append(f"{v:>16.3f}" if isinstance(v, float) else f"{'' if v is None else v:>16}")
        lines.append(f"{row['case']:<62} " + " ".join(cells) + (f"  ({row['skipped']})" if "skipped" in row else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    from repa.bench.timing import device_name

    parser = argparse.ArgumentParser(prog="benchmarks/gpu.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="toy sizes on the CPU: check the script, not the card")
    parser.add_argument("--out", default="benchmarks/results", help="folder of gpu-<card>.json")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("benchmarks/gpu.sh: no CUDA device here; run it on a GPU machine, or --dry-run to check the script")
        return 1
    device = "cpu" if args.dry_run else "cuda"
    card = device_name(device)
    peak = peak_tflops(card) if device == "cuda" else None
    started = time.perf_counter()
    rows = run_training(device, args.dry_run, peak) + run_sampling(device, args.dry_run) + run_loader(args.dry_run)
    result = {"card": card, "dry_run": args.dry_run, "peak_bf16_tflops": peak, "torch": torch.__version__,
              "wall_s": time.perf_counter() - started, "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "dry-run" if args.dry_run else re.sub(r"[^A-Za-z0-9]+", "-", card).strip("-")
    path = out / f"gpu-{name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{card} (peak bf16 {peak or 'unknown'} TFLOP/s), {result['wall_s']:.0f} s")
    print(table(rows))
    print(f"written: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
