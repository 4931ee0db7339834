"""`repa sample`: N images from a checkpoint, as PNGs and an ADM-format .npz (official counterpart:
sihyun-yu/REPA @ 67f7145, generate.py).

Sample i depends only on (seed, i). Samples are cut into fixed batches of `batch_size`
indices; batches go round-robin to the processes, so every batch holds the same samples
whatever the number of processes, and images are identical with 1 or N processes.
Finished images are kept: an interrupted run resumes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from repa.config import ExperimentConfig, to_dict
from repa.engine import checkpoint as ckpt
from repa.engine.network import network_layout
from repa.engine.build import build_network, build_objective_parts, build_sampling, compile_network, input_geometry
from repa.engine.generate.denoiser import Denoiser
from repa.engine.generate.generation import generate, image_grid, to_uint8
from repa.plugins.contract import example_conditions
from repa.errors import CheckpointError, MissingWeightsError, RepaError
from repa.precision import autocast_dtype, effective_precision, set_tf32
from repa.storage import write_atomic, writing
from repa.weights import (
    cache_dir, download, file_digest, hub_offline, load_file, load_state_strict, reachable, strip_prefix,
    unwrap_state_dict,
)

log = logging.getLogger("repa")

RELEASED_URL = ("https://www.dl.dropboxusercontent.com/scl/fi/cxedbs4da5ugjq5wg3zrg/last.pt"
                "?rlkey=8otgrdkno0nd89po3dpwngwcc&st=apcc645o&dl=0")
RELEASED_NAME = "repa-sit-xl-2-256-4M-last.pt"

def released_checkpoint() -> Path:
    """The released 4M-step SiT-XL/2 REPA EMA weights, cached under the repa cache directory."""
    path = cache_dir() / "checkpoints" / RELEASED_NAME
    if path.is_file():
        return path
    if not hub_offline() and reachable("www.dl.dropboxusercontent.com"):
        log.info("repa: downloading the released SiT-XL/2 REPA checkpoint to %s", path)
        try:
            return download(RELEASED_URL, path)
        except OSError as exc:
            log.warning("repa: download failed: %s", exc)
    raise MissingWeightsError(
        f"released SiT-XL/2 REPA checkpoint not found at {path}; download {RELEASED_URL} (a bare EMA state dict, "
        f"'last.pt') and save it as {path}, or pass --checkpoint FILE"
    )


def resolve_checkpoint(path: Path | None) -> tuple[dict, int | None, str]:
    """(EMA state dict, step, description) from a run folder, one of our checkpoint folders, an
    official training checkpoint ({"ema": ...}), a bare state dict, or (None) the released model."""
    if path is None:
        path = released_checkpoint()
    path = Path(path)
    if path.is_dir():
        folder = path
        if not (path / "ema.safetensors").is_file():
            found = ckpt.complete_checkpoints(path / "checkpoints")
            if not found:
                raise CheckpointError(f"{path}: neither a checkpoint folder nor a run folder with checkpoints/")
            folder = found[-1]
        ckpt.verify(folder)
        return load_file(folder / "ema.safetensors"), folder_step(folder), str(folder)
    obj = load_file(path)
    step = obj.get("steps") if isinstance(obj, dict) and isinstance(obj.get("steps"), int) else None
    return strip_prefix(unwrap_state_dict(obj, ("ema", "model", "state_dict"))), step, str(path)


def folder_step(folder: Path) -> int | None:
    """The step a checkpoint folder holds: its name's digits (`0000500`, `diagnostic-0000500`); None otherwise."""
    import re

    found = re.fullmatch(r"(?:diagnostic-)?([0-9]+)", folder.name)
    return int(found.group(1)) if found else None


def load_model(config: ExperimentConfig, state: dict, source: str, autoencoder=None):
    """Build the configured network and load the EMA weights (official layout) strictly; the class
    count and null label come from the weights. A trainable autoencoder's modules are part of the
    network: loading the checkpoint gives `autoencoder` its trained weights."""
    params = config.backbone.params
    state = params.upgrade_state(state, [entry.depth for entry in config.alignment])
    rows = params.label_rows(state)
    if rows is not None:
        num_classes, null_label = label_rows(config, rows, source)
    elif config.data.params.known_classes() is not None:
        num_classes, null_label = config.data.params.known_classes(), config.train.label_dropout > 0
    else:
        raise CheckpointError(
            f"{source}: the class count of this checkpoint is unknown: backbone {config.backbone.kind!r} does not "
            f"read it from a state dict (BackboneParams.label_rows) and data {config.data.kind!r} does not fix it; "
            "set data.num_classes")
    model = build_network(config, num_classes, null_label=null_label, autoencoder=autoencoder)
    load_state_strict(model, network_layout(state, model), source)
    return model.eval()


def label_rows(config: ExperimentConfig, rows: int, source: str) -> tuple[int, bool]:
    """(classes, has a null label) of a label embedding with `rows` rows: the dataset's class
    count decides, so a checkpoint trained without label dropout is not misread as one class short."""
    classes = config.data.params.known_classes()
    if classes is None:  # unknown until the dataset is read: trust the experiment's label dropout
        classes = rows - int(config.train.label_dropout > 0)
    if rows - classes not in (0, 1):
        raise CheckpointError(
            f"{source}: the label embedding has {rows} rows but data.num_classes is {classes} (expected {classes}, "
            f"or {classes + 1} with the null label); set data.num_classes to the checkpoint's class count")
    return classes, rows == classes + 1


def nfe_per_sample(config: ExperimentConfig, sampler=None, guidance=None) -> float:
    """Network evaluations per sample: the sampler's calls, each with what the guidance adds at the time
    of its step (`Guidance.extra_evaluations`), read off the sampler run on a toy velocity field. The
    sampler and guidance are the run's when given (built from the experiment otherwise)."""
    from repa.components.path.interpolants import LinearPath

    if sampler is None or guidance is None:
        sampler, guidance = build_sampling(config)
    times: list[float] = []

    def velocity(x, t, step_t):
        times.append(step_t)
        return x / t.clamp_min(1e-3).view(-1, *[1] * (x.ndim - 1))

    sampler.sample(velocity, torch.ones(1, 1, dtype=torch.float64), LinearPath(), _ZeroNoise())
    return sum(1.0 + guidance.extra_evaluations(step_t) for step_t in times)


class _ZeroNoise:
    def randn_like(self, x):
        return torch.zeros_like(x)


def load_network(config: ExperimentConfig, path: str, device):
    """Another trained network for guidance (`Guidance` factories' load_network): a run or checkpoint
    folder or weights file; a run folder brings its own experiment (config.resolved.toml), anything
    else is read with this experiment's architecture."""
    from repa.config import load_experiment

    folder = Path(path)
    other = config
    resolved = folder / "config.resolved.toml"
    if folder.is_dir() and resolved.is_file():
        other = load_experiment(resolved)
    weights, _, source = resolve_checkpoint(folder)
    return load_model(other, weights, source).to(device)


def sampling_autocast(config: ExperimentConfig, device) -> torch.dtype | None:
    """The network's autocast dtype for `sample.precision` (fp16 autocast needs a GPU: bf16 on a CPU)."""
    precision = effective_precision(config.sample.precision, torch.device(device).type)
    if precision != config.sample.precision:
        log.warning("repa: fp16 autocast needs a GPU; sampling in bf16 on this CPU")
    return autocast_dtype(precision)


def experiment_checkpoint(config: ExperimentConfig, experiment_file: str | None) -> Path | None:
    """The checkpoint `repa sample` uses without --checkpoint: the latest of the experiment's own
    run; the released SiT-XL/2 model (None) only for its ImageNet recipe or without an experiment."""
    from repa.engine.record import run_dir_of
    from repa.presets import RELEASED_EXPERIMENT

    if experiment_file is None:
        return None
    run_dir = run_dir_of(config)
    found = ckpt.complete_checkpoints(run_dir / "checkpoints")
    if found:
        log.info("repa: sampling from %s, the latest checkpoint of %s", found[-1], run_dir)
        return found[-1]
    released = (config.backbone.kind == RELEASED_EXPERIMENT["backbone"]
                and config.data.params.resolution == RELEASED_EXPERIMENT["data"]["resolution"])
    if released:
        log.info("repa: %s has no checkpoint yet; sampling from the released SiT-XL/2 REPA model", run_dir)
        return None
    raise CheckpointError(f"{experiment_file}: its run {run_dir} has no checkpoint yet; train it first "
                          f"(repa run {experiment_file}) or pass --checkpoint")


def run_folder_of(checkpoint: Path | None) -> Path | None:
    """The run folder a checkpoint belongs to (a run folder itself, or RUN/checkpoints/<step>); None for a
    file or a folder that is not part of a run."""
    if checkpoint is None or not Path(checkpoint).is_dir():
        return None
    checkpoint = Path(checkpoint)
    for candidate in (checkpoint, checkpoint.parent.parent):
        if (candidate / "config.resolved.toml").is_file():
            return candidate
    return None


def condition_arrays(conditioning, conditions) -> dict[str, np.ndarray]:
    """What a samples .npz records of what they were drawn for: `labels` (the class each asks for, when
    known) and, for a text model, `prompts` (one string per sample, read by metrics that score text)."""
    arrays = {} if conditions.labels is None else {"labels": conditions.labels.numpy()}
    if conditioning.context_shape is not None:
        arrays["prompts"] = np.array([str(c) for c in conditions.captions])
    return arrays


def default_out(config: ExperimentConfig, checkpoint: Path | None, seed: int, labels: str) -> Path:
    """Where `repa sample` draws without --out: beside the run the checkpoint belongs to
    (RUN/sampled/<step>-<sampler>-...), else samples/<name>-<sampler>-... in the working folder; the
    name ends with a digest of everything else the images depend on."""
    import hashlib

    data = to_dict(config)
    sample = {k: v for k, v in data["sample"].items() if k != "batch_size"}
    blob = json.dumps([str(checkpoint), labels, sample, data["autoencoder"], data["backbone"]], sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:6]
    settings = (f"{config.sample.sampler.kind}-{config.sample.steps}-cfg{config.sample.guidance_settings()[0]}"
                f"-seed{seed}-{digest}")
    run = run_folder_of(checkpoint)
    if run is not None:
        drawn_from = Path(checkpoint)
        if drawn_from == run:  # its latest checkpoint, as resolve_checkpoint takes it
            drawn_from = (ckpt.complete_checkpoints(run / "checkpoints") or [run])[-1]
        step = folder_step(drawn_from)
        return run / "sampled" / (f"{step:07d}-{settings}" if step is not None else settings)
    return Path("samples") / f"{config.experiment.name}-{settings}"


DECODE_CHUNK = 32  # images per autoencoder decode: its memory stays bounded whatever the batch


def decode_in_chunks(autoencoder, z: torch.Tensor) -> torch.Tensor:
    """decode(z) a chunk at a time (each image is decoded on its own terms: the same result)."""
    return torch.cat([autoencoder.decode(part) for part in z.split(DECODE_CHUNK)])


def smallest_over_processes(value: int, state) -> int:
    """The smallest of every process's value (a batch size every process can hold)."""
    if state.num_processes == 1:
        return value
    import torch.distributed as dist

    found = torch.tensor([value], device=state.device)
    dist.all_reduce(found, op=dist.ReduceOp.MIN)
    return int(found)


AUTO_BATCH_CAP = 1024
CPU_AUTO_BATCH = 64  # a CPU is limited by compute, not memory: the default


@torch.no_grad()
def auto_batch_size(model, shape: tuple[int, ...], device, guided: bool, dtype, probe: int = 8) -> int:
    """The batch whose forward (doubled under guidance) fills 80% of the free GPU memory, from the
    peak memory of a probe batch; CPU_AUTO_BATCH on a CPU."""
    from repa.precision import autocast_to

    device = torch.device(device)
    if device.type != "cuda":
        return CPU_AUTO_BATCH
    rows = probe * (2 if guided else 1)
    x = torch.randn(rows, *shape, device=device)
    t = torch.full((rows,), 0.5, device=device)
    y = example_conditions(model, rows, device)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with autocast_to(device.type, dtype):
        model.denoise(x, t, y)
    per_sample = max(torch.cuda.max_memory_allocated(device) - base, 1) / probe
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(AUTO_BATCH_CAP, 0.8 * free // per_sample)))


class SampleRun:
    def __init__(self, config: ExperimentConfig, checkpoint: Path | None, out: Path, num: int, seed: int,
                 batch_size: int, labels: str = "random", progress: bool = True, prompts: list[str] | None = None):
        """prompts: sample i is drawn for prompts[i mod len(prompts)] (`--prompt`); else for the
        conditioning's sample conditions (class labels by `labels`, or the data's captions)."""
        from accelerate import PartialState

        self.state = PartialState(cpu=not torch.cuda.is_available())  # CPU ranks need cpu=True
        self.config, self.out, self.num, self.seed = config, Path(out), num, seed
        self.batch_size, self.label_mode, self.progress = batch_size, labels, progress
        self.prompts = list(prompts or [])
        set_tf32(config.sample.allow_tf32, self.state.device.type)
        with self.state.main_process_first():  # one download, then every rank reads the cached file
            weights, self.step, self.source = resolve_checkpoint(checkpoint)
        self.autoencoder = config.autoencoder.build().to(self.state.device)
        self.model = load_model(config, weights, self.source, self.autoencoder).to(self.state.device)
        sampler, guidance = build_sampling(config, lambda path: load_network(config, path, self.state.device))
        path, prediction, _ = build_objective_parts(config)
        self.sampler = sampler
        dtype = sampling_autocast(config, self.state.device)
        self.denoiser = Denoiser(self.model, prediction, path, guidance, dtype)
        side, channels = input_geometry(config)
        self.shape = (channels, side, side)
        if config.sample.compile:
            compile_network(self.model, "blocks")
        if batch_size == "auto":
            guided = nfe_per_sample(config, sampler, guidance) > sampler.function_evaluations()
            size = min(auto_batch_size(self.model, self.shape, self.state.device, guided, dtype), num)
            self.batch_size = smallest_over_processes(size, self.state)  # one partition of the indices
            log.info("repa: sample.batch_size = auto: %d per forward", self.batch_size)

    def settings(self) -> dict:
        """What the images depend on (besides their index): a resumed folder must match it."""
        data = to_dict(self.config)
        source = Path(self.source)
        weights = source / "ema.safetensors" if source.is_dir() else source  # our checkpoint folders: the EMA
        digest = file_digest(weights, quick=True) if weights.is_file() else None
        sample = {k: v for k, v in data["sample"].items() if k not in ("batch_size", "labels")}  # no effect / below
        settings = {"checkpoint": self.source, "checkpoint_digest": digest, "seed": self.seed, "labels": self.label_mode,
                    "backbone": data["backbone"], "sample": sample, "autoencoder": data["autoencoder"],
                    "resolution": self.config.data.params.resolution}
        if self.prompts:
            settings["prompts"] = self.prompts
        if data.get("conditioning", {}).get("kind", "class") != "class":  # class folders keep their settings
            settings["conditioning"] = data["conditioning"]
        return settings

    def conditions(self, indices):
        """What samples `indices` are drawn for (`repa.interfaces.Conditions`)."""
        conditioning = self.model.conditioning
        if self.prompts:
            return conditioning.prompts([self.prompts[int(i) % len(self.prompts)] for i in indices])
        return conditioning.conditions(self.seed, list(indices), self.label_mode)

    def check_folder(self) -> None:
        """Refuse a folder holding samples drawn with other settings (every process checks)."""
        record, mine = self.out / "settings.json", self.settings()
        if record.is_file():
            theirs = json.loads(record.read_text())
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            if changed:
                raise RepaError(f"{self.out}: holds samples drawn with other settings ({', '.join(changed)} differ); "
                                "choose another --out, or delete the folder to redraw them")
        elif any((self.out / "images").glob("*.png")):
            raise RepaError(f"{self.out}: holds images without a settings.json (drawn by another tool or an older "
                            "repa); choose another --out, or delete the folder to redraw them")

    def claim_folder(self) -> None:
        """Write the settings before the first image (main process)."""
        record = self.out / "settings.json"
        with writing(self.out / "images"):
            (self.out / "images").mkdir(parents=True, exist_ok=True)
        if not record.is_file():
            write_atomic(record, json.dumps(self.settings(), indent=1))

    def png(self, i: int) -> Path:
        return self.out / "images" / f"{i:06d}.png"

    def my_batches(self) -> list[list[int]]:
        batches = [list(range(s, min(s + self.batch_size, self.num))) for s in range(0, self.num, self.batch_size)]
        mine = batches[self.state.process_index :: self.state.num_processes]
        return [b for b in mine if not all(self.png(i).is_file() for i in b)]

    @torch.no_grad()
    def _batch(self, indices: list[int]) -> None:
        from PIL import Image

        x0 = generate(self.denoiser, self.sampler, indices, self.conditions(indices).y, self.seed, self.shape,
                      self.state.device,
                      self.config.sample.state_dtype)
        images = to_uint8(decode_in_chunks(self.autoencoder, x0.float()))
        for i, image in zip(indices, images):
            tmp = self.png(i).with_name(f".{i:06d}.{os.getpid()}.tmp.png")
            with writing(self.png(i), image.nbytes, temporary=[tmp]):  # drawn images stay; a rerun resumes
                Image.fromarray(image).save(tmp)
                os.replace(tmp, self.png(i))

    def estimate(self) -> float:
        """Seconds for all samples on all processes, from one timed forward pass (printed up front)."""
        x = torch.randn(min(self.batch_size, self.num), *self.shape, device=self.state.device)
        y = self.conditions(range(len(x))).y.to(self.state.device)
        t = torch.full((len(x),), 0.5, device=self.state.device)
        with torch.no_grad():
            self.model.denoise(x, t, y)  # as the Denoiser calls it
            _synchronize(self.state.device)
            started = time.perf_counter()
            self.model.denoise(x, t, y)
            _synchronize(self.state.device)
            forward = time.perf_counter() - started
            started = time.perf_counter()
            decode_in_chunks(self.autoencoder, x)
            _synchronize(self.state.device)
            decode = time.perf_counter() - started
        per_batch = forward * nfe_per_sample(self.config, self.sampler, self.denoiser.guidance) + decode
        return per_batch * math.ceil(self.num / (len(x) * self.state.num_processes))

    def run(self) -> Path:
        """Draw the images not drawn yet into the folder, then its .npz; the folder is held meanwhile."""
        from repa.engine.processes import main_decides
        from repa.engine.locks import FolderLock

        lock = FolderLock(self.out, "repa sample", "wait for it to finish, or choose another --out")

        def claim():
            with writing(self.out):
                self.out.mkdir(parents=True, exist_ok=True)
            lock.acquire()  # one sampler per folder: two would draw the same images into one another's files

        main_decides(self.state, claim)  # refused: every process of the launch stops
        try:
            return self._draw()
        finally:
            lock.release()

    def _draw(self) -> Path:
        from repa.console import progress_bar

        self.check_folder()
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            self.claim_folder()
        self.state.wait_for_everyone()
        todo = self.my_batches()
        if self.state.is_main_process:
            estimate = self.estimate()
            todo_images = sum(len(b) for b in todo) * self.state.num_processes
            log.info("repa: sampling %d images (%s, %d steps, cfg %.2f) from %s into %s; %d to draw, estimated %s",
                     self.num, self.config.sample.sampler.kind, self.config.sample.steps,
                     self.config.sample.guidance_settings()[0], self.source, self.out,
                     min(todo_images, self.num), _duration(estimate * min(todo_images, self.num) / self.num))
        started, done = time.perf_counter(), 0
        with progress_bar("sample", enabled=self.progress) as bar:
            task = bar.add_task("sample", total=sum(len(b) for b in todo), rate="",
                                visible=self.state.is_main_process)
            for i, batch in enumerate(todo):
                self._batch(batch)
                done += len(batch)
                rate = done * self.state.num_processes / (time.perf_counter() - started)
                bar.update(task, advance=len(batch), rate=f"{rate:.1f} img/s")
                if i == 0 and len(todo) > 1 and self.state.is_main_process:  # the estimate up front is a guess
                    left = sum(len(b) for b in todo[1:]) * self.state.num_processes
                    log.info("repa: measured %.1f img/s on the first batch; %d images left, about %s",
                             rate, left, _duration(left / rate))
        self.state.wait_for_everyone()
        npz = self.out / "samples.npz"
        if self.state.is_main_process:
            self._write_npz(npz)
        self.state.wait_for_everyone()
        return npz

    def _write_npz(self, npz: Path) -> None:
        from PIL import Image

        images = np.stack([np.asarray(Image.open(self.png(i))) for i in range(self.num)])
        conditions = self.conditions(range(self.num))
        arrays = {"arr_0": images, **condition_arrays(self.model.conditioning, conditions)}
        tmp = npz.with_name(f".samples.{os.getpid()}.tmp.npz")
        with writing(npz, sum(a.nbytes for a in arrays.values()), temporary=[tmp]):
            np.savez(tmp, **arrays)
            os.replace(tmp, npz)
        info = {"checkpoint": self.source, "step": self.step, "num_samples": self.num, "seed": self.seed,
                "labels": self.label_mode, "sample": to_dict(self.config)["sample"],
                "autoencoder": to_dict(self.config)["autoencoder"]}
        if self.prompts:
            info["prompts"] = self.prompts
            self._write_prompt_grid(images)
        write_atomic(self.out / "sample_info.json", json.dumps(info, indent=1))


    def _write_prompt_grid(self, images: np.ndarray) -> None:
        """grid.png: one row per prompt (samples i = row mod prompts), at most 8 samples each."""
        from PIL import Image

        count = len(self.prompts)
        rows = [[i for i in range(r, self.num, count)][:8] for r in range(min(count, self.num))]
        columns = max(len(r) for r in rows)
        cells = np.full((len(rows) * columns, *images.shape[1:]), 255, dtype=np.uint8)
        for r, members in enumerate(rows):
            cells[r * columns : r * columns + len(members)] = images[members]
        grid = image_grid(cells, columns=columns, row_labels=self.prompts[: len(rows)])
        Image.fromarray(grid).save(self.out / "grid.png")


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
