"""The data order: a seeded permutation per epoch, cut into global batches, each split into
this process's rows and then into accumulation micro-batches. Position = optimizer step."""

from __future__ import annotations

import signal

import numpy as np
import torch

from repa.errors import ConfigError


class StepBatchSampler(torch.utils.data.Sampler):
    """Yields this process's micro-batches (index lists) for steps start_step, start_step+1, ..."""

    def __init__(self, size: int, global_batch: int, rank: int, world: int, accum: int, seed: int,
                 start_step: int, max_steps: int):
        if global_batch % (world * accum):
            raise ConfigError([
                f"train.global_batch_size: {global_batch} does not split evenly over {world} processes x "
                f"{accum} accumulation steps; use a multiple of {world * accum}"
            ])
        if size < global_batch:
            raise ConfigError([f"train.global_batch_size: {global_batch} is larger than the dataset ({size} samples)"])
        self.size, self.global_batch, self.rank, self.world, self.accum = size, global_batch, rank, world, accum
        self.seed, self.start_step, self.max_steps = seed, start_step, max_steps
        self.per_process, self.micro = global_batch // world, global_batch // (world * accum)
        self.steps_per_epoch = size // global_batch

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def rows_of(self, micro: int) -> tuple[int, int]:
        """[start, stop) of this micro-batch within the global batch (for the step's random draws)."""
        start = self.rank * self.per_process + micro * self.micro
        return start, start + self.micro

    def __iter__(self):
        epoch, order = -1, None
        for step in range(self.start_step, self.max_steps):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = self.permutation(epoch)
            offset = (step % self.steps_per_epoch) * self.global_batch
            for micro in range(self.accum):
                start, stop = self.rows_of(micro)
                yield order[offset + start : offset + stop].tolist()

    def __len__(self) -> int:
        return (self.max_steps - self.start_step) * self.accum


def _ignore_interrupts(worker_id: int) -> None:
    """Ctrl-C / SIGTERM reach the whole process group: only the main process handles them (it
    finishes the step and checkpoints); a worker dying mid-step would abort the run instead."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset, sampler: StepBatchSampler, num_workers: int, pin_memory: bool):
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=num_workers, pin_memory=pin_memory,
        persistent_workers=False, prefetch_factor=4 if num_workers else None,
        worker_init_fn=_ignore_interrupts if num_workers else None,
    )
