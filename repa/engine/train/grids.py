"""The sample grids of a training run: the EMA model's samples (a balanced grid: column k shows
class k) and, once, the real images."""

from __future__ import annotations

from pathlib import Path

import torch

from repa.config import ExperimentConfig
from repa.engine.build import input_geometry
from repa.engine.generate.denoiser import Denoiser, Interrupted
from repa.engine.generate.generation import class_labels, generate, image_grid, prompt_rows, to_uint8


class SampleGrids:
    def __init__(self, config: ExperimentConfig, acc, parallel, dataset, autoencoder, objective, sampler, guidance):
        self.config, self.acc, self.parallel = config, acc, parallel
        self.dataset, self.autoencoder, self.objective = dataset, autoencoder, objective
        self.sampler, self.guidance = sampler, guidance

    @torch.no_grad()
    def samples(self, ema, step: int, trackers, interrupt=None) -> bool:
        """train.sample_images samples of the EMA model, logged as the step's "samples" image; False when
        `interrupt()` said to stop before the grid was done (nothing is written then)."""
        config, acc, main = self.config, self.acc, self.acc.is_main_process
        if not (main or self.parallel.collective_sampling):
            acc.wait_for_everyone()
            return True
        n = config.train.sample_images
        denoiser = Denoiser(ema, self.objective.prediction, self.objective.path, self.guidance)
        denoiser.interrupt = interrupt
        labels, layout = self.conditions(ema, n)
        side, channels = input_geometry(config)
        try:
            with acc.autocast():
                x0 = generate(denoiser, self.sampler, range(n), labels, config.experiment.seed, (channels, side, side),
                              acc.device, config.sample.state_dtype)
        except Interrupted:
            acc.wait_for_everyone()
            return False
        finally:
            self.parallel.after_inference(ema)
        if main:
            images = to_uint8(self.autoencoder.decode(x0.float()))
            grid = image_grid(images, **layout)
            for tracker in trackers:
                tracker.log_images(step, {"samples": grid})
        acc.wait_for_everyone()
        return True

    def conditions(self, ema, n: int):
        """(what the n grid samples are drawn for, the grid's layout): class labels balanced, one column per
        class; prompts one per row (text)."""
        conditioning = ema.conditioning
        if conditioning.context_shape is not None:
            return prompt_rows(conditioning, self.config.experiment.seed, n)
        labels = class_labels(self.config.experiment.seed, range(n), self.dataset.num_classes, "balanced")
        return labels, class_columns(n, self.dataset.num_classes)

    def ground_truth(self, run_dir: Path) -> None:
        """samples/ground_truth.png: the first train.sample_images real images."""
        if not self.acc.is_main_process:
            return
        from repa.engine.record import RunRecord

        n = min(self.config.train.sample_images, len(self.dataset))
        images = torch.stack([self.dataset[i]["image"] for i in range(n)]).permute(0, 2, 3, 1).numpy()
        RunRecord(run_dir).write_image("ground_truth", image_grid(images))


MAX_LABELLED_CLASSES = 32  # more classes than this make columns too many to read


def class_columns(n: int, num_classes: int) -> dict:
    """A balanced grid (sample i has class i mod C) with one column per class, labelled, when the
    classes fit in a row; else a square grid."""
    if 2 <= num_classes <= min(n, MAX_LABELLED_CLASSES):  # one class: a square grid, not one tall column
        return {"columns": num_classes, "column_labels": [f"class {k}" if num_classes < 8 else str(k)
                                                          for k in range(num_classes)]}
    return {}
