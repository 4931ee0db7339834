"""Evaluation during training (`[eval] every = N`): every N steps the EMA model draws a class-balanced
set of `eval.every_num_samples` samples (sample i: class i mod C, noise from (seed, i), so each point of
the curve scores the same draw), scores them with `eval.metrics` against `eval.reference`, and logs
the figures at that step to metrics.jsonl and the tracker. Sampling is shared by every process (each
draws its share, as `repa sample`), with the [sample] section's precision and TF32; scoring is the main
process's. Its time is logged apart (`eval_seconds`) and left out of `steps_per_s`. A run resumed from
a checkpoint at an evaluation step that has no record yet evaluates it first; records after the
checkpoint are dropped on resume as any other, so each step of the curve is evaluated once."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from repa.config import ExperimentConfig, to_dict
from repa.engine.build import input_geometry
from repa.engine.generate.denoiser import Denoiser, Interrupted
from repa.engine.generate.evaluation import _digest, evaluate_images, metrics_key
from repa.engine.generate.generation import generate, to_uint8
from repa.engine.generate.sampling import condition_arrays, sampling_autocast
from repa.engine.record import RunRecord, read_records
from repa.errors import RepaError
from repa.precision import set_tf32

log = logging.getLogger("repa")

CPU_BATCH = 64  # sample.batch_size = "auto" on a CPU (as `repa sample`)


def during_training_key(config: ExperimentConfig) -> str:
    """Identifies how the curve's samples are drawn (sampler, guidance, count, seed; labels balanced)."""
    sample = {k: v for k, v in to_dict(config)["sample"].items() if k not in ("batch_size", "labels")}
    return _digest({"during_training": True, "sample": sample, "num": num_samples(config), "labels": "balanced",
                    "seed": config.experiment.seed})


def num_samples(config: ExperimentConfig) -> int:
    return config.eval.every_num_samples or config.eval.num_samples


def shares(n: int, processes: int) -> tuple[int, list[list[int]]]:
    """(per, [indices of each process]): process r draws r, r + P, ...; every process draws `per`
    samples (the last index repeated where n does not divide), so all take the same number of
    forward passes (a sharded network's forward is a collective)."""
    per = math.ceil(n / processes)
    return per, [[min(i, n - 1) for i in range(r, r + per * processes, processes)] for r in range(processes)]


def reassemble(gathered: np.ndarray, indices: list[list[int]], n: int) -> np.ndarray:
    """Samples gathered process by process (each its `shares` indices) -> samples 0..n-1 in order."""
    images = np.empty((n, *gathered.shape[1:]), dtype=gathered.dtype)
    images[[i for mine in indices for i in mine]] = gathered  # a repeated last index writes the same sample
    return images


class TrainingEvaluation:
    def __init__(self, config: ExperimentConfig, acc, parallel, grids):
        self.config, self.acc, self.parallel, self.grids = config, acc, parallel, grids
        self.key, self.scored_by = during_training_key(config), metrics_key(config)

    def due(self, step: int) -> bool:
        every = self.config.eval.every
        return bool(every) and step > 0 and step % every == 0

    def probe(self) -> None:
        """Build each metric and read the reference once (cached for the run), so missing weights or a
        missing reference fail before training rather than at the first evaluation."""
        if self.config.eval.every and self.acc.is_main_process:
            for component in self.config.eval.metrics:
                component.build().reference(self.config.eval.reference)

    def recorded(self, run_dir, step: int) -> bool:
        """Whether `step` has its record; decided by the main process, so every process agrees."""
        found = any(r["step"] == step and r.get("eval_settings") == self.key and r.get("eval_metrics") == self.scored_by
                    for r in read_records(run_dir)) if self.acc.is_main_process else False
        if self.acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            found = broadcast_object_list([found])[0]
        return found

    @torch.no_grad()
    def run(self, ema, step: int, trackers, interrupt=None) -> bool:
        """Evaluate the EMA at `step` and log it; False when `interrupt()` stopped it (nothing is logged)
        or scoring failed (a warning says why; training goes on)."""
        started = time.perf_counter()
        device = self.acc.device
        set_tf32(self.config.sample.allow_tf32, device.type)
        try:
            images, arrays = self._draw(ema, interrupt if self.acc.num_processes == 1 else None)
        finally:
            set_tf32(self.config.train.allow_tf32, device.type)
        done = images is not None
        if done and self.acc.is_main_process:
            try:
                scores = evaluate_images(self.config.eval.metrics, images, arrays.get("labels"),
                                         self.config.eval.reference, arrays.get("prompts"))
            except RepaError as exc:
                log.warning("repa: the evaluation of step %d failed (%s); training goes on", step, exc)
                done = False
            else:
                self._log(step, scores, time.perf_counter() - started, trackers)
        self.acc.wait_for_everyone()
        return done

    def _draw(self, ema, interrupt):
        """All processes' samples, uint8 [N,H,W,3], with what they were drawn for (`condition_arrays`: labels,
        prompts) on the main process (None elsewhere); (None, None) if a stop interrupted."""
        config, acc = self.config, self.acc
        n = num_samples(config)
        per, indices = shares(n, acc.num_processes)
        mine = indices[acc.process_index]
        batch = config.sample.batch_size if isinstance(config.sample.batch_size, int) else CPU_BATCH
        objective = self.grids.objective
        denoiser = Denoiser(ema, objective.prediction, objective.path, self.grids.guidance,
                            sampling_autocast(config, acc.device))
        denoiser.interrupt = interrupt
        side, channels = input_geometry(config)
        conditions = ema.conditioning.conditions(config.experiment.seed, range(n), "balanced")
        y = conditions.y
        drawn = []
        try:
            for start in range(0, per, batch):
                chunk = mine[start:start + batch]
                x0 = generate(denoiser, self.grids.sampler, chunk, y[chunk], config.experiment.seed,
                              (channels, side, side), acc.device, config.sample.state_dtype)
                drawn.append(torch.from_numpy(to_uint8(self.grids.autoencoder.decode(x0.float()))).to(acc.device))
        except Interrupted:
            return None, None
        finally:
            self.parallel.after_inference(ema)
        gathered = acc.gather(torch.cat(drawn)) if acc.num_processes > 1 else torch.cat(drawn)
        if not acc.is_main_process:
            return np.zeros(0), {}
        return reassemble(gathered.cpu().numpy(), indices, n), condition_arrays(ema.conditioning, conditions)

    def _log(self, step: int, scores: dict, seconds: float, trackers) -> None:
        record = {"eval": scores, "eval_settings": self.key, "eval_metrics": self.scored_by, "during_training": True,
                  "num_samples": num_samples(self.config), "labels": "balanced", "eval_seconds": seconds}
        flat = {**{f"eval/{k}": v for k, v in scores.items()}, "eval_seconds": seconds}
        for tracker in trackers:
            tracker.log(step, record if isinstance(tracker, RunRecord) else flat)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
        log.info("repa: evaluation at step %d: %s (%d samples, %.1f s, not counted in steps_per_s)", step, shown,
                 num_samples(self.config), seconds)
