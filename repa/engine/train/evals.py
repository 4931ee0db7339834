"""Evaluation during training (`[eval] every = N`): every N steps the EMA model draws a class-balanced
set of `eval.every_num_samples` samples (sample i: class i mod C, noise from (seed, i), so each point of
the curve scores the same draw), scores them with `eval.metrics` against `eval.reference`, and logs
the figures at that step to metrics.jsonl and the tracker. Its time is logged apart (`eval_seconds`)
and left out of `steps_per_s`. A run resumed from a checkpoint at an evaluation step that has no
record yet evaluates it first; records after the checkpoint are dropped on resume as any other, so
each step of the curve is evaluated once."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from repa.config import ExperimentConfig, to_dict
from repa.engine.build import input_geometry
from repa.engine.generate.denoiser import Denoiser, Interrupted
from repa.engine.generate.evaluation import _digest, evaluate_images, metrics_key
from repa.engine.generate.generation import class_labels, generate, to_uint8
from repa.engine.record import RunRecord, read_records

log = logging.getLogger("repa")

CPU_BATCH = 64  # sample.batch_size = "auto" on a CPU (as `repa sample`)


def during_training_key(config: ExperimentConfig) -> str:
    """Identifies how the curve's samples are drawn (sampler, guidance, count, seed; labels balanced)."""
    sample = {k: v for k, v in to_dict(config)["sample"].items() if k not in ("batch_size", "labels")}
    return _digest({"during_training": True, "sample": sample, "num": num_samples(config), "labels": "balanced",
                    "seed": config.experiment.seed})


def num_samples(config: ExperimentConfig) -> int:
    return config.eval.every_num_samples or config.eval.num_samples


class TrainingEvaluation:
    def __init__(self, config: ExperimentConfig, acc, parallel, grids):
        self.config, self.acc, self.parallel, self.grids = config, acc, parallel, grids
        self.key, self.scored_by = during_training_key(config), metrics_key(config)

    def due(self, step: int) -> bool:
        every = self.config.eval.every
        return bool(every) and step > 0 and step % every == 0

    def recorded(self, run_dir, step: int) -> bool:
        return any(r["step"] == step and r.get("eval_settings") == self.key and r.get("eval_metrics") == self.scored_by
                   for r in read_records(run_dir))

    @torch.no_grad()
    def run(self, ema, step: int, trackers, interrupt=None) -> bool:
        """Evaluate the EMA at `step` and log it; False when `interrupt()` stopped it (nothing is logged)."""
        started = time.perf_counter()
        acc, main = self.acc, self.acc.is_main_process
        if not (main or self.parallel.collective_sampling):  # the main process samples alone (DDP)
            acc.wait_for_everyone()
            return True
        images, labels = self._draw(ema, interrupt)
        if images is not None and main:
            scores = evaluate_images(self.config.eval.metrics, images, labels.numpy(), self.config.eval.reference)
            self._log(step, scores, time.perf_counter() - started, trackers)
        acc.wait_for_everyone()
        return images is not None

    def _draw(self, ema, interrupt):
        """uint8 [N,H,W,3] images and their labels, drawn in batches; (None, None) if a stop interrupted."""
        config, acc = self.config, self.acc
        n, classes = num_samples(config), self.grids.dataset.num_classes
        batch = config.sample.batch_size if isinstance(config.sample.batch_size, int) else CPU_BATCH
        objective = self.grids.objective
        denoiser = Denoiser(ema, objective.prediction, objective.path, self.grids.guidance)
        denoiser.interrupt = interrupt
        side, channels = input_geometry(config)
        labels = class_labels(config.experiment.seed, range(n), classes, "balanced")
        images = []
        try:
            for start in range(0, n, batch):
                indices = range(start, min(n, start + batch))
                with acc.autocast():
                    x0 = generate(denoiser, self.grids.sampler, indices, labels[start:start + len(indices)],
                                  config.experiment.seed, (channels, side, side), acc.device, config.sample.state_dtype)
                images.append(to_uint8(self.grids.autoencoder.decode(x0.float())))
        except Interrupted:
            return None, None
        finally:
            self.parallel.after_inference(ema)
        return np.concatenate(images), labels

    def _log(self, step: int, scores: dict, seconds: float, trackers) -> None:
        record = {"eval": scores, "eval_settings": self.key, "eval_metrics": self.scored_by, "during_training": True,
                  "num_samples": num_samples(self.config), "labels": "balanced", "eval_seconds": seconds}
        flat = {**{f"eval/{k}": v for k, v in scores.items()}, "eval_seconds": seconds}
        for tracker in trackers:
            tracker.log(step, record if isinstance(tracker, RunRecord) else flat)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in scores.items())
        log.info("repa: evaluation at step %d: %s (%d samples, %.1f s, not counted in steps_per_s)", step, shown,
                 num_samples(self.config), seconds)
