"""`repa bench contention`: the quickstart's training rate on an idle machine and beside another PyTorch
process that this benchmark starts (matmuls on every core with PyTorch's default threads, as another
user's job would run), with repa's thread policy (REPA_THREADS=auto) and with the thread count fixed at the
cores in the TOML (train.threads: PyTorch's default, what repa did before the policy); beside the other
process also fixed by REPA_THREADS (read before PyTorch loads, so waiting threads sleep: OMP_WAIT_POLICY).
CPU only; run it on an idle machine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Another job: large matmuls in a loop on PyTorch's default thread count, until it is killed.
COMPETITOR = """
import torch
a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
while True:
    a @ b
"""
QUICKSTART = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.toml"


def bench_contention(steps: int = 400, **_) -> dict:
    from repa.threads import usable_cores

    cores = usable_cores()
    results = {"device": "cpu", "cores": cores, "steps": steps, "model": "the quickstart (4-block SiT, batch 32)"}
    with tempfile.TemporaryDirectory() as tmp:
        _train(Path(tmp), "warm-up", 20, "auto", busy=False)  # the digits encoder trained and cached first
        cases = {"threads auto (the policy)": ("auto", None), f"train.threads = {cores}": ("auto", cores),
                 f"REPA_THREADS={cores}": (str(cores), None)}
        for busy in (False, True):
            for case, (variable, in_toml) in cases.items():
                if not busy and in_toml is None and variable != "auto":
                    continue  # idle, REPA_THREADS and train.threads are the same run
                name = f"{'busy' if busy else 'idle'}, {case}"
                results[name] = _train(Path(tmp), f"run-{len(results)}", steps, variable, busy, in_toml)
    rate = {name: r["steps_per_s"] for name, r in results.items() if isinstance(r, dict)}
    idle, fixed = rate["idle, threads auto (the policy)"], rate[f"idle, train.threads = {cores}"]
    results["busy / idle with the policy"] = rate["busy, threads auto (the policy)"] / idle
    results[f"busy / idle with train.threads = {cores}"] = rate[f"busy, train.threads = {cores}"] / fixed
    results[f"busy / idle with REPA_THREADS={cores}"] = rate[f"busy, REPA_THREADS={cores}"] / fixed
    results["idle: policy / fixed"] = idle / fixed
    return results


def _train(root: Path, name: str, steps: int, threads: str, busy: bool, in_toml: int | None = None) -> dict:
    """One `repa run` of the quickstart for `steps` steps; its training rate (grids and checkpoints excluded)
    over the records after the first (the first includes the first steps' one-time costs)."""
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR], env=_without_thread_settings()) if busy else None
    try:
        if competitor is not None:
            time.sleep(2.0)  # it is computing before the run starts
        env = {**_without_thread_settings(), "REPA_THREADS": threads}
        command = [sys.executable, "-m", "repa.cli", "run", str(QUICKSTART), "--no-progress",
                   "--set", f"train.max_steps={steps}", "--set", "train.log_every=50", "--set", "train.sample_every=1000000",
                   "--set", "train.checkpoint_every=1000000", "--set", f'experiment.output_dir="{root}"',
                   "--set", f'experiment.name="{name}"'] + (["--set", f"train.threads={in_toml}"] if in_toml else [])
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    if result.returncode != 0:
        raise RuntimeError(f"{name}: repa run failed: {result.stderr.strip().splitlines()[-1:]}")
    records = [json.loads(line) for line in (root / name / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in records if "steps_per_s" in r][1:] or [records[-1]["steps_per_s"]]
    chosen = [line for line in result.stderr.splitlines() if "thread(s)" in line]
    # Steps over time: the windows have equal steps, so their harmonic mean (an arithmetic mean of rates
    # would weigh a fast window as much as a slow one that took five times as long).
    return {"steps_per_s": len(rates) / sum(1 / r for r in rates), "window_rates": [round(r, 2) for r in rates],
            "wall_s": wall, "policy": chosen}


def _without_thread_settings() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "REPA_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}

