"""`repa run`: the training loop. One code path from a laptop CPU to many GPUs (accelerate/DDP)."""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from repa.config import ExperimentConfig, to_dict
from repa.engine import checkpoint as ckpt
from repa.engine.build import (
    build_conditioning, build_objective_parts, build_sampling, build_training, check_term_needs, compile_network, input_geometry,
    probe_alignment, probe_attention, probe_data, probe_generation, probe_network,
)
from repa.engine.prep.features import FeatureCache, WithFeatures, describe
from repa.engine.train.context import StepInputs, TrainingContext
from repa.engine.train.data import StepBatchSampler, make_loader
from repa.engine.train.ema import make_ema, update_ema
from repa.engine.train.phema import PowerEMA
from repa.engine.network import checkpoint_layout
from repa.engine.train.evals import TrainingEvaluation
from repa.engine.train.grids import SampleGrids
from repa.engine.generate.sampling import load_network
from repa.engine.train.objective import Objective
from repa.engine.train.optimizer import OptimizerGroups
from repa.engine.train.parallel import STRATEGIES
from repa.engine.train.randomness import draw_step
from repa.engine.record import RunRecord
from repa.engine.processes import STOP_SIGNALS
from repa.engine.train.run_checkpoints import Counters, RunCheckpoints
from repa.errors import DataError, RepaError
from repa.precision import autocast_dtype, effective_precision, on_cpu, set_tf32
from repa.threads import policy as thread_policy

log = logging.getLogger("repa")
record_log = logging.getLogger("repa.record")  # log.txt only (run.attach_log_file); the console has the bar
record_log.propagate = False


class StepFailed(RepaError):
    """A training step raised; the last completed step is checkpointed."""


class TrainingStopped(RepaError):
    """Training stopped on purpose (non-finite losses); the message says what was saved."""


STOP_CHECK_EVERY = 10  # steps between the processes' agreement on a stop request (several processes)
OK, NONFINITE_LOSS, NONFINITE_GRADIENT = 0, 1, 2  # a step's outcome, kept on the device until the log
PROBLEMS = {NONFINITE_LOSS: "loss", NONFINITE_GRADIENT: "gradient norm"}


@dataclass
class Window:
    """The steps since the last log line, as device tensors: nothing is read to the host until
    `means()` or `outcomes()` (one synchronisation each), so a step never waits for the device."""

    values: list = field(default_factory=list)
    codes: list = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)
    paused: float = 0.0  # seconds spent on grids and checkpoints: not training, not in steps_per_s
    carried: int = 0  # steps restored from a checkpoint: in the means, not in this process's time

    @classmethod
    def resumed(cls, unlogged: list, device) -> "Window":
        """The window a checkpoint saved between two log steps."""
        values = [{k: torch.tensor(v, dtype=torch.float64, device=device) for k, v in step.items()} for step in unlogged]
        return cls(values=values, carried=len(values))

    def unlogged(self) -> list[dict[str, float]]:
        """The values of its steps, read to the host (for a checkpoint)."""
        if not self.values:
            return []
        flat = torch.stack([v.double() for step in self.values for v in step.values()]).tolist()  # one read
        values, at = [], 0
        for step in self.values:
            values.append(dict(zip(step, flat[at:at + len(step)])))
            at += len(step)
        return values

    @property
    def steps(self) -> int:
        return len(self.values)

    def add(self, values: dict, code: torch.Tensor) -> None:
        self.values.append(values)
        self.codes.append(code)

    def outcomes(self) -> list[int]:
        """Each unsettled step's outcome (OK / NONFINITE_*), then forgets them."""
        codes, self.codes = self.codes, []
        return torch.stack(codes).tolist() if codes else []

    def means(self) -> dict:
        """Means of each value over the window's steps, non-finite values left out; NaN for a key
        with no finite value. Every key on every rank, so the gathers line up."""
        keys = list(self.values[-1]) if self.values else []
        if not keys:
            return {}
        missing = torch.tensor(float("nan"), dtype=torch.float64, device=self.values[-1][keys[0]].device)
        # (a step restored from a checkpoint of another config may lack a key: left out like a non-finite value)
        stacked = torch.stack([torch.stack([v.get(k, missing).double() for v in self.values]) for k in keys])
        finite = torch.isfinite(stacked)
        sums, counts = torch.where(finite, stacked, 0).sum(1), finite.sum(1)
        means = torch.where(counts > 0, sums / counts.clamp(min=1), torch.full_like(sums, float("nan")))
        return dict(zip(keys, means.tolist()))


def shown_losses(values: dict) -> dict[str, float]:
    """A step's losses for the progress line (a read from the device)."""
    return {k: float(v) for k, v in values.items() if k == "loss" or k.startswith("align_loss_")}


def skips_on_device(optimizer) -> bool:
    """Whether the optimizer's step takes `found_inf` (fused Adam/AdamW/SGD): then a step can be
    skipped on the device. `optimizer` may be accelerate's wrapper."""
    inner = getattr(optimizer, "optimizer", optimizer)
    return bool(getattr(inner, "_step_supports_amp_scaling", False))


def apply_step(optimizer, ema, network, decay: float, ok: torch.Tensor, device_side: bool,
               copied: frozenset = frozenset()) -> None:
    """Optimizer step and EMA update where `ok` (a bool tensor), then zero the gradients. Device side:
    nothing is read (found_inf, EMA decay 1 on a skip); otherwise `ok` is read once. `copied`: names
    the EMA follows instead of averaging (TrainedModule(ema=False))."""
    if device_side:
        inner = getattr(optimizer, "optimizer", optimizer)
        inner.found_inf = (~ok).float()
        try:
            optimizer.step()
        finally:
            del inner.found_inf
        update_ema(ema, network, decay, ok, copied)
    elif bool(ok):
        optimizer.step()
        update_ema(ema, network, decay, copied=copied)
    optimizer.zero_grad(set_to_none=True)


def learning_rate(base: float, step: int, max_steps: int, schedule: str, warmup: int) -> float:
    """The learning rate of optimizer step `step` (0-based): a function of the step only, so a
    resumed run continues the schedule exactly."""
    if step < warmup:
        return base * (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, max_steps - warmup)
        return base * 0.5 * (1.0 + math.cos(math.pi * progress))
    return base


def _accumulate(values: dict, key: str, value: torch.Tensor) -> None:
    values[key] = values[key] + value if key in values else value


def check_stored_moments(config: ExperimentConfig, dataset) -> None:
    """Moments stored with the data must be the configured autoencoder's (e.g. SD-VAE moments
    under `autoencoder = "identity"` would fail at the first step)."""
    moments = dataset[0].get("moments") if len(dataset) else None
    if moments is None:
        return
    side, channels = input_geometry(config)
    expected = [2 * channels, side, side]
    if list(moments.shape) != expected:
        kind, where = config.autoencoder.kind, config.data.params.location() or config.data.kind
        raise DataError(
            f"{where}: stored latent moments are {list(moments.shape)} but the {kind} autoencoder at "
            f"{config.data.params.resolution} px needs {expected}; prepare them with `repa preprocess latents "
            f"--autoencoder {kind}`, or (folder datasets) set data.latents = \"\" to encode on the fly")


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def make_accelerator(config: ExperimentConfig):
    from accelerate import Accelerator

    precision = effective_precision(config.train.mixed_precision, config.train.device)
    cpu = on_cpu(config.train.device)
    if precision != config.train.mixed_precision:
        log.warning("repa: fp16 autocast needs a GPU; using bf16 on this CPU (set train.mixed_precision to silence)")
    set_tf32(config.train.allow_tf32, "cpu" if cpu else "cuda")
    return Accelerator(mixed_precision=precision, cpu=cpu)


class Trainer:
    def __init__(self, config: ExperimentConfig, run_dir: Path, resume: str | bool | None = None,
                 progress: bool = True):
        self.config, self.run_dir, self.resume, self.show_progress = config, Path(run_dir), resume, progress
        self.acc = make_accelerator(config)
        self.device = self.acc.device
        self.parallel = STRATEGIES[config.train.distributed](self.acc)
        self.counters = Counters()
        self.stop_requested = self.stopped = False
        self.checkpoints = RunCheckpoints(config, self.acc, self.parallel, self.run_dir / "checkpoints")

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Everything that can fail on bad input (data, weights, a plugin breaking its contract)
        fails here, before the run folder is written."""
        config, acc = self.config, self.acc
        self.dataset = config.data.build(split="train")
        torch.manual_seed(config.experiment.seed + 1)  # an autoencoder that trains starts from seeded weights
        self.autoencoder = config.autoencoder.build().to(self.device)
        probe_data(config, self.dataset, self.autoencoder, self.device)
        check_stored_moments(config, self.dataset)
        torch.manual_seed(config.experiment.seed)
        self.conditioning = build_conditioning(config, self.dataset.num_classes)
        model, slots = build_training(config, self.dataset.num_classes, autoencoder=self.autoencoder,
                                      conditioning=self.conditioning)
        model = model.to(self.device)
        check_term_needs(config, slots, self.autoencoder)
        with acc.main_process_first():
            self.encoders, caches = self._open_encoders(slots)
        if caches:
            self.dataset = WithFeatures(self.dataset, caches)
        path, prediction, weighting = build_objective_parts(config)
        self.objective = Objective(path, prediction, weighting, slots)
        alignment_encoders = [self.encoders.get(entry.encoder.identity()) if entry.features == "online" else None
                              for entry in config.alignment]
        probe_network(config, model, slots, self.device)
        probe_alignment(config, slots, alignment_encoders, self.device)
        probe_attention(config, model, alignment_encoders, self.device)
        sampler, guidance = build_sampling(config, lambda folder: load_network(config, folder, self.device))
        probe_generation(config, sampler, guidance, path)
        ema = make_ema(model)
        self.phema = PowerEMA(model, config.train.posthoc_ema) if config.train.posthoc_ema else None
        self._probe_terms(model, ema)
        if config.train.compile:  # after the EMA's copy (which stays eager), before DDP/FSDP wrap the blocks
            compile_network(model, config.train.compile)
        self.groups = OptimizerGroups(model, config.optim.params)
        self.copied = frozenset(model.unaveraged())
        self.model, self.ema, self.optimizer = self.parallel.wrap(
            model, ema, lambda network: config.optim.build(parameters=self.groups.torch_groups(network)))
        self.grids = SampleGrids(config, acc, self.parallel, self.dataset, self.autoencoder, self.objective,
                                 sampler, guidance)
        self.evals = TrainingEvaluation(config, acc, self.parallel, self.grids)
        self.evals.probe()
        if self.resume:  # run_experiment refuses to start a fresh run over existing checkpoints
            self.counters = (self.checkpoints.restore(self.resume, self.model, self.ema, self.optimizer, self.phema)
                             or Counters())

    def _open_encoders(self, slots) -> tuple[dict, dict]:
        """Every encoder the terms read, built once per choice (frozen: terms naming one share it), and
        the feature caches they read instead (checked against the encoder that made them)."""
        encoders, caches = {}, {}
        for slot in slots:
            for need in slot.term.needs().encoders:
                if need.features != "online":
                    if need.features not in caches:
                        caches[need.features] = self._open_cache(need)
                elif need.encoder.identity() not in encoders:
                    encoders[need.encoder.identity()] = self._build_encoder(need.encoder)
        return encoders, caches

    def _build_encoder(self, component):
        encoder = component.build(resolution=self.config.data.params.resolution).to(self.device)
        encoder.autocast_dtype = autocast_dtype(self.acc.mixed_precision)
        return encoder

    def _open_cache(self, need) -> FeatureCache:
        """The cache must come from this encoder, weights, resolution, precision and dataset."""
        cache = FeatureCache(Path(need.features))
        encoder = need.encoder.build(resolution=self.config.data.params.resolution)
        cache.check(describe(self.config, need, encoder, self.dataset, self.acc.mixed_precision))
        return cache

    def _probe_terms(self, model, ema) -> None:
        """One step's losses on two samples, every term held to its contract (one line each), before
        anything is written; the network's buffers are put back as they were (a BatchNorm's statistics)."""
        buffers = {name: b.clone() for name, b in model.named_buffers()}
        probe = [self.dataset[i] for i in range(min(2, len(self.dataset)))]
        batch = {key: [item[key] for item in probe] if key == "y" else torch.stack([torch.as_tensor(item[key])
                                                                                   for item in probe])
                 for key in probe[0]}
        step = self.counters.step
        draws = self._draws(step, len(probe))
        ctx = self._context(batch, draws, (0, len(probe)), len(probe), ema, step)
        try:
            ctx.prepare()
            with torch.no_grad(), self.acc.autocast():
                model(lambda network: self.objective(network, ctx, check=True))
        except RepaError:
            raise
        except Exception as exc:
            from repa.plugins.contract import _first_line

            raise RepaError(f"a training term failed on a probe batch: {type(exc).__name__}: {_first_line(exc)} "
                            "(rerun with --traceback to see where)") from exc
        finally:
            with torch.no_grad():
                for name, b in model.named_buffers():
                    b.copy_(buffers[name])

    def save_checkpoint(self, window: Window, diagnostic: bool = False) -> Path:
        self.counters.unlogged = window.unlogged()
        return self.checkpoints.save(self.model, self.ema, self.optimizer, self.counters, diagnostic, self.phema)

    def _unwrapped(self):
        """The network without DDP or torch.compile wrappers: its names are the EMA's."""
        return self.parallel.unwrapped(self.model)

    # ----------------------------------------------------------------- step

    def train_step(self, micro_batches, sampler: StepBatchSampler) -> tuple[dict, torch.Tensor]:
        """One optimizer step over `micro_batches` (gradient accumulation) -> (the logged values and
        the step's outcome code), both on the device: the step never waits for the device to finish."""
        acc, step = self.acc, self.counters.step
        draws = self._draws(step, self.config.train.global_batch_size)
        accum = len(micro_batches)
        finite = torch.ones((), dtype=torch.bool, device=self.device)
        values = {}
        for m, batch in enumerate(micro_batches):
            sync = m == accum - 1
            rows = sampler.rows_of(m)
            ctx = self._context(batch, draws.rows(*rows), rows, self.config.train.global_batch_size, self.ema, step)
            with contextlib.nullcontext() if sync else self.parallel.no_sync(self.model):
                ctx.prepare()
                with acc.autocast():
                    parts = self.model(lambda network: self.objective(network, ctx))
                finite = finite & torch.isfinite(parts.total.detach())
                acc.backward(parts.total / accum)
            _accumulate(values, "loss", parts.total.detach().float() / accum)
            _accumulate(values, "denoising_loss", parts.denoising.mean().float() / accum)
            for name, value in parts.terms.items():
                _accumulate(values, name, value.mean().float() / accum)
        if acc.num_processes > 1:
            finite = acc.gather(finite.reshape(1)).all()
        values["grad_norm"], code = self._update(finite)
        return values, code

    def _draws(self, step: int, batch: int):
        side, channels = input_geometry(self.config)
        shape = (channels, side, side)
        extra = [(s.joint.tokens, s.joint.width) for s in self.objective.slots if s.joint is not None]
        return draw_step(self.config.experiment.seed, step, batch, shape, self.objective.weighting,
                         self.objective.path, self.config.train.label_dropout, self.device, extra)

    def _context(self, batch, rows, span, global_batch: int, ema, step: int) -> TrainingContext:
        """The step context of one micro-batch: its images, labels, its rows of the draws, cached features."""
        device = self.device
        images = batch["image"].to(device, non_blocking=True)
        y = self.conditioning.collate(batch["y"]).to(device, non_blocking=True)
        if self.config.train.legacy_label_dropout:
            legacy = rows.legacy_drop.reshape(-1, *[1] * (y.ndim - 1))
            y = torch.where(legacy, self._unwrapped().null_condition(y), y)
        moments = batch["moments"].to(device, non_blocking=True) if "moments" in batch else None
        cached = {key.removeprefix("features:"): value.to(device, non_blocking=True)
                  for key, value in batch.items() if key.startswith("features:")}
        inputs = StepInputs(step, images, y, rows.drop, rows.t, rows.noise, rows.posterior, list(rows.extra_noise),
                            moments, cached, tuple(span), global_batch, self.config.experiment.seed)
        return TrainingContext(inputs, self.objective, self.autoencoder, self.encoders, ema,
                               self.objective.computed(step))

    def _set_learning_rate(self) -> None:
        train = self.config.train
        if train.lr_schedule == "constant" and not train.warmup_steps:
            return  # the optimizer's own lr, as built
        for group, base in zip(self.optimizer.param_groups, self.groups.base_lrs):
            group["lr"] = learning_rate(base, self.counters.step, train.max_steps, train.lr_schedule, train.warmup_steps)

    def _update(self, finite: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip and step, or skip the step when the loss or the gradient is not finite -> (grad norm,
        outcome code). A finite loss can still give an infinite gradient (a huge coefficient):
        stepping on it would wipe the weights, skipping it silently would train nothing.

        The skip happens on the device: an optimizer with a fused step (AdamW's default here) takes
        `found_inf` and leaves weights, moments and step count as they were, and the EMA's decay
        becomes 1. Under an fp16 grad scaler, which skips non-finite gradients itself (its normal
        working, not a non-finite step), or with an optimizer without that step, the outcome is read
        once per step instead (a synchronisation)."""
        self._set_learning_rate()
        norms = [self.parallel.clip(params, max_norm) for params, max_norm in self.groups.clipped(self.model)]
        grad_norm = norms[0]
        gradient_ok = (torch.stack([torch.isfinite(n) for n in norms]).all() if self.acc.scaler is None
                       else torch.ones_like(finite))
        code = torch.where(finite, torch.where(gradient_ok, OK, NONFINITE_GRADIENT), NONFINITE_LOSS)
        device_side = self.acc.scaler is None and skips_on_device(self.optimizer)
        apply_step(self.optimizer, self.ema, self._unwrapped(), self.config.train.ema_decay, code == OK, device_side,
                   self.copied)
        if self.phema is not None:
            self.phema.update(self._unwrapped(), self.counters.step + 1, code == OK, self.copied)
        self.counters.step += 1
        return grad_norm.detach().float(), code

    def _settle(self, window: Window) -> None:
        """Count the window's non-finite steps (once per log, checkpoint and stop check) and warn
        about each; when too many came in a row, stop with a diagnostic checkpoint of the current
        state (the first such step is named; the warnings say which steps followed)."""
        counters = self.counters
        first, stop_at = counters.step - len(window.codes), None
        for offset, code in enumerate(window.outcomes()):
            if code == OK:
                counters.nonfinite_in_row = 0
                continue
            counters.nonfinite_total += 1
            counters.nonfinite_in_row += 1
            log.warning("repa: non-finite %s at step %d; update skipped (%d in a row)",
                        PROBLEMS[code], first + offset + 1, counters.nonfinite_in_row)  # steps count from 1
            if stop_at is None and counters.nonfinite_in_row >= self.config.train.max_nonfinite_steps:
                stop_at = (counters.nonfinite_in_row, first + offset + 1)
        if stop_at:
            folder = self.save_checkpoint(window, diagnostic=True)
            in_row, step = stop_at
            reached = "" if step == counters.step else f" (noticed at step {counters.step}, the next log step)"
            raise TrainingStopped(
                f"{in_row} non-finite steps (loss or gradient) in a row at step {step}{reached}; stopped. State "
                f"saved to {folder} for diagnosis. Try a lower optim.lr, train.mixed_precision = \"bf16\", or "
                f"resume from the last good checkpoint with --resume")

    # ----------------------------------------------------------------- loop

    def _make_trackers(self):
        """The run record (metrics.jsonl, samples/) and the configured tracker, on the main process."""
        if not self.acc.is_main_process:
            return []
        record = RunRecord(self.run_dir)
        if self.resume:  # records of steps after the checkpoint describe weights that no longer exist
            record.rewind(self.counters.step)
        return [record, self.config.tracker.build(run_dir=self.run_dir, config=to_dict(self.config))]

    def _install_signal_handlers(self):
        def request_stop(signum, frame):
            if self.stop_requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.stop_requested = True
            log.warning("repa: %s received; finishing this step and writing a checkpoint",
                        signal.Signals(signum).name)

        previous = {s: signal.signal(s, request_stop) for s in STOP_SIGNALS}
        return lambda: [signal.signal(s, h) for s, h in previous.items()]

    def _should_stop(self) -> bool:
        """A signal asks every process to stop at the same step. One process: its own flag; several:
        agreed every STOP_CHECK_EVERY steps (a collective read waits for the device; so a signal acts
        within that many steps)."""
        if self.acc.num_processes == 1:
            return self.stop_requested
        step, train = self.counters.step, self.config.train
        if step % STOP_CHECK_EVERY and step % train.checkpoint_every and step != train.max_steps:
            return False
        flag = torch.tensor([self.stop_requested], device=self.device)
        return bool(self.acc.gather(flag).any())

    def _log(self, window: Window) -> dict:
        config, acc = self.config, self.acc
        self._settle(window)
        means = window.means()  # waits for the device: the window's time below is its real time
        elapsed = time.perf_counter() - window.started - window.paused
        means = {k: float(acc.gather(torch.tensor([v], device=self.device, dtype=torch.float64)).nanmean())
                 for k, v in means.items()}
        means = {k: v for k, v in means.items() if math.isfinite(v)}  # all skipped: leave the key out
        rate = (window.steps - window.carried) / elapsed if elapsed > 0 else float("nan")
        record = {**means, "lr": self.optimizer.param_groups[0]["lr"], "steps_per_s": rate,
                  "images_per_s": rate * config.train.global_batch_size,
                  "peak_memory_gb": peak_memory_gb(self.device), "nonfinite_steps": self.counters.nonfinite_total}
        for tracker in self.trackers:
            tracker.log(self.counters.step, record)
        if acc.is_main_process:  # log.txt keeps the run's history next to metrics.jsonl
            shown = ", ".join(f"{k} {v:.4g}" for k, v in record.items() if isinstance(v, float))
            record_log.info("step %d: %s", self.counters.step, shown)
        return record

    def run(self) -> int:
        """Train; `setup()` must have run (run_experiment calls it before writing the run folder)."""
        from repa.console import TrainingProgress

        config, acc, counters = self.config, self.acc, self.counters
        self.trackers = self._make_trackers()
        if counters.step == 0:
            self.grids.ground_truth(self.run_dir)
        elif self.evals.due(counters.step) and not self.evals.recorded(self.run_dir, counters.step):
            self._evaluate()  # the run stopped at an evaluation step before its evaluation was recorded
        sampler = StepBatchSampler(len(self.dataset), config.train.global_batch_size, acc.process_index,
                                   acc.num_processes, config.train.grad_accum_steps, config.experiment.seed,
                                   counters.step, config.train.max_steps)
        loader = make_loader(self.dataset, sampler, self._data_workers(), self.device.type == "cuda")
        restore_signals = self._install_signal_handlers()
        progress = TrainingProgress(config.train.max_steps, counters.step, enabled=self.show_progress,
                                    visible=acc.is_main_process)
        try:
            self._loop(Window.resumed(counters.unlogged, self.device), iter(loader), sampler, progress)
        finally:
            restore_signals()
            for tracker in self.trackers:
                tracker.finish()
        return counters.step

    def _data_workers(self) -> int:
        """train.num_workers; on a CPU at most the cores the compute threads leave (repa.threads)."""
        configured = self.config.train.num_workers
        if self.device.type != "cpu":
            return configured
        workers = thread_policy().data_workers(configured)
        if workers < configured and self.acc.is_main_process:
            log.info("repa: %d data loader worker(s) instead of train.num_workers = %d: the other cores compute",
                     workers, configured)
        return workers

    def _loop(self, window, batches, sampler, progress) -> None:
        config, counters, stopped, values = self.config, self.counters, False, {}
        try:
            with progress:
                while counters.step < config.train.max_steps:
                    started = time.perf_counter()
                    micro = [next(batches) for _ in range(config.train.grad_accum_steps)]
                    values, code = self._guarded_step(micro, sampler, window)
                    window.add(values, code)
                    if self.device.type == "cpu":
                        thread_policy().revisit()  # other processes come and go during a long run
                    progress.update(counters.step, time.perf_counter() - started, latest=lambda: shown_losses(values))
                    if counters.step % config.train.log_every == 0 or counters.step == config.train.max_steps:
                        progress.show(self._log(window))
                        window = Window()
                    paused = time.perf_counter()
                    if counters.step == 1 or counters.step % config.train.sample_every == 0:
                        self._sample_grid()
                    self._posthoc_ema_snapshot()  # before the checkpoint: a resume from it never lacks it
                    if counters.step % config.train.checkpoint_every == 0:
                        self._settle(window)  # the checkpoint records the non-finite count
                        self._checkpoint(window)
                    if self.evals.due(counters.step):
                        self._evaluate()
                    window.paused += time.perf_counter() - paused
                    if self._should_stop():
                        stopped = True
                        break
        finally:
            self.stopped = stopped
        # A stop between log steps logs nothing: the checkpoint keeps the window, so the record at the
        # next log step is the one an uninterrupted run writes.
        if not (self.checkpoints.folder / ckpt.checkpoint_name(counters.step)).is_dir():
            self._settle(window)
            self._checkpoint(window)
        if not stopped and counters.step % config.train.sample_every:
            self._sample_grid()

    def _guarded_step(self, micro, sampler, window):
        """A step that fails inside (a plugin raising, memory running out) leaves the weights of the last
        completed step: they are checkpointed, and the failure is one line saying so."""
        try:
            return self.train_step(micro, sampler)
        except (RepaError, KeyboardInterrupt):
            raise
        except Exception as exc:
            step = self.counters.step
            self.optimizer.zero_grad(set_to_none=True)
            if self.acc.num_processes == 1 and not (self.checkpoints.folder / ckpt.checkpoint_name(step)).is_dir():
                self._settle(window)  # (several processes would wait for the failed one: no checkpoint then)
                self._checkpoint(window)
            from repa.plugins.contract import _first_line

            raise StepFailed(f"step {step + 1} failed: {type(exc).__name__}: {_first_line(exc)}; the state after step "
                             f"{step} is in {self.checkpoints.folder / ckpt.checkpoint_name(step)} (resume with --resume;"
                             " rerun with --traceback to see where)") from exc

    def _sample_grid(self) -> None:
        """The grid of this step; a stop asked for meanwhile abandons it (a grid can take tens of seconds;
        the checkpoint matters more), except where every process samples together (FSDP)."""
        interrupt = None if self.parallel.collective_sampling else (lambda: self.stop_requested)
        if not self.grids.samples(self.ema, self.counters.step, self.trackers, interrupt):
            log.warning("repa: the grid of step %d was abandoned for the stop", self.counters.step)
            return
        if self.acc.is_main_process:
            log.info("repa: samples at step %d: %s", self.counters.step,
                     self.run_dir / "samples" / f"{self.counters.step:07d}.png")

    def _evaluate(self) -> None:
        """[eval] every: score the EMA at this step (after its checkpoint: a kill during it loses no
        training); a stop asked for meanwhile abandons it (one process), and the resumed run evaluates
        this step first."""
        interrupt = None if self.parallel.collective_sampling else (lambda: self.stop_requested)
        if not self.evals.run(self.ema, self.counters.step, self.trackers, interrupt) and self.stop_requested:
            log.warning("repa: the evaluation of step %d was abandoned for the stop; resuming evaluates it",
                        self.counters.step)

    def _posthoc_ema_snapshot(self) -> None:
        """RUN/phema/<step>.safetensors every posthoc_ema_every steps and at the last (not at a stop: the
        snapshots of a stopped and resumed run are those of one never stopped)."""
        train, step = self.config.train, self.counters.step
        if self.phema is None or not self.acc.is_main_process:
            return
        if step % (train.posthoc_ema_every or train.checkpoint_every) == 0 or step == train.max_steps:
            self.phema.snapshot(self.run_dir, step, checkpoint_layout)

    def _checkpoint(self, window: Window) -> None:
        folder = self.save_checkpoint(window)
        if self.acc.is_main_process:
            log.info("repa: checkpoint at step %d: %s", self.counters.step, folder)
