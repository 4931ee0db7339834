"""Timing and memory helpers shared by the benchmarks."""

from __future__ import annotations

import resource
import statistics
import time

import torch

from repa.precision import autocast as precision_autocast


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, warmup: int = 2, repeat: int = 5) -> dict:
    """Median seconds per call after warm-up."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return {"median_s": statistics.median(times), "min_s": min(times)}


def reset_peak(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device) -> float:
    """CUDA: peak allocated; CPU: the process's peak resident set (includes everything loaded)."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def autocast(device, precision: str):
    return precision_autocast(torch.device(device).type, precision)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def device_name(device) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _child(target: str, kwargs: dict, queue) -> None:
    import importlib

    module, function = target.split(":")
    try:
        queue.put(getattr(importlib.import_module(module), function)(**kwargs))
    except BaseException as exc:  # report, do not hang the parent
        queue.put({"error": f"{type(exc).__name__}: {exc}"})


def isolated(target: str, **kwargs) -> dict:
    """Run `module:function(**kwargs)` in a fresh process, so that its peak memory is its own."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(target, kwargs, queue))
    process.start()
    result = queue.get()
    process.join()
    return result
