"""`repa analyze`: measure a run's representations the way REPA's argument does (Sec. 2, Figs. 2-3):
every block's hidden state, at several noise levels t, for every checkpoint, against the encoders it
is aligned with (CKNNA), by a linear probe, and by iREPA's spatial scores; and an encoder's own tokens.

What is fed: N images of the experiment's data in a seeded order (the same for every run, checkpoint
and t), the same noise per image, x_t on the experiment's path, the EMA weights, and the *null*
label where the backbone has one, so that a probe reads the class from the image and not from the
label embedding. Memory: pooled hidden states N x D x blocks (float32) and all tokens of the first
`token_images` images (float16 on the host); CKNNA holds a few N x N matrices.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from repa.config import ExperimentConfig, load_experiment
from repa.engine import checkpoint as ckpt
from repa.errors import CheckpointError, DataError
from repa.interfaces import AnalysisInputs, Representation

log = logging.getLogger("repa")

DEFAULT_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


@dataclass(frozen=True)
class Settings:
    times: tuple[float, ...] = DEFAULT_TIMES
    samples: int = 10_000
    token_images: int = 100
    fit_fraction: float = 0.8
    batch_size: int = 64
    latest_only: bool = False
    split: str = "train"
    seed: int = 0

    def describe(self) -> dict:
        return {"t": list(self.times), "samples": self.samples, "token_images": self.token_images,
                "fit_fraction": self.fit_fraction, "checkpoints": "latest" if self.latest_only else "all",
                "split": self.split, "seed": self.seed}


@dataclass
class Target:
    """A run folder (or one checkpoint of it) to analyse."""

    name: str
    config: ExperimentConfig
    checkpoints: list[Path]

    @property
    def depths(self) -> list[int]:
        return sorted({entry.depth for entry in self.config.alignment})


@dataclass
class Images:
    """The analysed images of one dataset: labels [N], model inputs x0 [N,C,H,W], the noise of each,
    foreground masks [n,R,R] of the first n (None: the data does not know them), and each encoder's
    representation of them."""

    labels: torch.Tensor
    x0: torch.Tensor
    noise: torch.Tensor
    foreground: torch.Tensor | None
    encoders: dict[str, Representation] = field(default_factory=dict)
    images: torch.Tensor | None = None  # uint8 [N,3,R,R], kept when the autoencoder trains (its latents vary)
    posterior: torch.Tensor | None = None  # the latent draws' noise, with the images


# ============================================================================
# What to analyse
# ============================================================================


def load_target(path: Path, latest_only: bool) -> Target:
    """A run folder (every complete checkpoint) or one checkpoint folder inside one."""
    path = Path(path)
    if (path / "ema.safetensors").is_file() and path.parent.name == "checkpoints":
        if not path.name.isdigit():
            raise DataError(f"{path}: a diagnostic checkpoint (its step is not in its name); analyse the run folder "
                            f"{path.parent.parent} or one of its numbered checkpoints")
        run_dir, checkpoints = path.parent.parent, [path]
    elif path.is_dir():
        run_dir, checkpoints = path, ckpt.complete_checkpoints(path / "checkpoints")
        if not checkpoints:
            raise CheckpointError(f"{path}: no complete checkpoint in {path / 'checkpoints'}; train it first "
                                  f"(repa run) or pass a run folder that has one")
    else:
        raise DataError(f"{path}: not a run folder or a checkpoint folder (run analysis reads <run>/checkpoints/)")
    config_file = run_dir / "config.resolved.toml"
    if not config_file.is_file():
        raise DataError(f"{run_dir}: no config.resolved.toml; not a run folder written by `repa run`")
    config = load_experiment(config_file)
    return Target(run_dir.name, config, checkpoints[-1:] if latest_only else checkpoints)


def data_key(config: ExperimentConfig) -> str:
    """Runs whose images and model inputs are the same share one pass over the data."""
    return config.data.identity() + "|" + config.autoencoder.identity()


def encoder_components(targets: list[Target], named: list) -> dict[str, object]:
    """The encoders compared with: those named (--encoder), else every run's aligned ones; by name."""
    if named:
        return {component.kind: component for component in named}
    found = {}
    for target in targets:
        for entry in target.config.alignment:
            found.setdefault(entry.encoder.kind, entry.encoder)
    return found


# ============================================================================
# Collecting representations
# ============================================================================


def analysed_indices(length: int, settings: Settings) -> torch.Tensor:
    """A seeded random order of the data, cut to `samples`: the probe's split is its first part."""
    if length < 4:
        raise DataError(f"the data has {length} images; analysis needs at least 4")
    generator = torch.Generator().manual_seed(settings.seed)
    return torch.randperm(length, generator=generator)[: min(settings.samples, length)]


def distinct_batches(dataset, indices: torch.Tensor, batch_size: int):
    """(items kept before, items, indices read) per batch: the items in `indices` order, each distinct
    image once. Captioned data holds an image once per caption; a repeat would sit on both sides of the
    linear probe's split."""
    import hashlib

    seen, batch, start, read = set(), [], 0, 0
    for i in indices:
        item, read = dataset[int(i)], read + 1
        key = hashlib.blake2b(item["image"].numpy().tobytes(), digest_size=16).digest()
        if key not in seen:
            seen.add(key)
            batch.append(item)
        if len(batch) == batch_size:
            yield start, batch, read
            start, batch, read = start + len(batch), [], 0
    if batch:
        yield start, batch, read


NO_CLASS = -1


def class_of(item: dict) -> int:
    """An item's class for the linear probes: its `label`, else its `y` when that is a class label;
    NO_CLASS for captioned data without classes (COCO)."""
    if "label" in item:
        return int(item["label"])
    y = item["y"]
    return int(y) if isinstance(y, int) or (isinstance(y, torch.Tensor) and y.ndim == 0) else NO_CLASS


def unconditional(backbone, labels: torch.Tensor) -> torch.Tensor:
    """The condition hidden states are read under: the null one (the null label, or the empty caption's
    context), or the true label for a class model trained without label dropout."""
    if backbone.context_shape is not None:
        return backbone.null_condition(torch.zeros(len(labels), device=labels.device))
    return backbone.null_condition(labels) if backbone.has_null_label else labels


def pool_masks(masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[n,R,R] bool pixel masks -> [n,T] bool: a token is the object's if any of its pixels is (iREPA)."""
    pooled = F.adaptive_max_pool2d(masks[:, None].float(), tuple(grid))
    return pooled.flatten(1).bool()


def collect_images(config: ExperimentConfig, dataset, encoders: dict, settings: Settings, device,
                   advance) -> Images:
    """One pass over the data: labels, model inputs, foreground masks and each encoder's tokens."""
    indices = analysed_indices(len(dataset), settings)
    autoencoder = config.autoencoder.build().to(device)
    built = {name: component.build(resolution=config.data.params.resolution).to(device)
             for name, component in encoders.items()}
    generator = torch.Generator().manual_seed(settings.seed + 1)
    labels, inputs, masks, pooled, tokens = [], [], [], {n: [] for n in built}, {n: [] for n in built}
    trains, kept, noises = config.autoencoder.params.trains(), [], []
    for start, items, read in distinct_batches(dataset, indices, settings.batch_size):
        images = torch.stack([item["image"] for item in items]).to(device)
        labels.append(torch.tensor([class_of(item) for item in items]))
        with torch.no_grad():
            moments = (torch.stack([item["moments"] for item in items]).to(device) if "moments" in items[0]
                       else autoencoder.encode(images))
            half = moments.shape[1] // 2
            posterior = torch.randn(moments[:, :half].shape, generator=generator).to(device)
            inputs.append(autoencoder.sample(moments, posterior).float().cpu())
            if trains:
                kept.append(images.cpu())
                noises.append(posterior.cpu())
            for name, encoder in built.items():
                out = encoder(encoder.preprocess(images)).float()
                pooled[name].append(out.mean(1).cpu())
                tokens[name].append(out[: max(0, settings.token_images - start)].half().cpu())
        wanted = items[: max(0, settings.token_images - start)]
        masks.extend(dataset.foreground(item["image"]) for item in wanted)
        advance(read)
    x0 = torch.cat(inputs)
    noise = torch.randn(x0.shape, generator=generator)
    foreground = torch.stack(masks).bool() if masks and all(m is not None for m in masks) else None
    data = Images(torch.cat(labels), x0, noise, foreground, images=torch.cat(kept) if kept else None,
                  posterior=torch.cat(noises) if noises else None)
    resolution = config.data.params.resolution
    for name, component in encoders.items():
        count = component.params.tokens_for(resolution)
        side = int(round(math.sqrt(count)))
        if side * side != count:
            raise DataError(f"encoder {name}: {count} tokens at {resolution} px are not a square grid; repa analyze "
                            "compares token grids (per-token CKNNA, spatial scores) and needs a square one")
        data.encoders[name] = Representation(name, torch.cat(pooled[name]), torch.cat(tokens[name]), (side, side))
    return data


@torch.no_grad()
def trained_latents(data: Images, autoencoder, batch_size: int, device) -> Images:
    """The same images and draws through a checkpoint's trained autoencoder (in eval mode)."""
    import dataclasses

    for module in autoencoder.trained_modules().values():
        getattr(module, "module", module).eval()
    inputs = []
    for start in range(0, len(data.images), batch_size):
        images = data.images[start : start + batch_size].to(device)
        moments = autoencoder.encode(images)
        inputs.append(autoencoder.sample(moments, data.posterior[start : start + len(images)].to(device)).float().cpu())
    return dataclasses.replace(data, x0=torch.cat(inputs))


@torch.no_grad()
def hidden_states(model, config: ExperimentConfig, data: Images, t: float, settings: Settings, device,
                  dtype) -> list[Representation]:
    """Every block's hidden state at time t: pooled for all images, all tokens of the first ones."""
    from repa.precision import autocast_to

    path = config.path.build()
    backbone = model.backbone
    blocks = config.backbone.params.num_blocks()
    grid = config.backbone.params.token_grid(data.x0.shape[-1])
    pooled, tokens = [[] for _ in range(blocks)], [[] for _ in range(blocks)]
    for start in range(0, len(data.x0), settings.batch_size):
        x0 = data.x0[start : start + settings.batch_size].to(device)
        times = torch.full((len(x0),), float(t), device=device)
        alpha, sigma, _, _ = path.broadcast(times, x0)
        x_t = alpha * x0 + sigma * data.noise[start : start + len(x0)].to(device)
        labels = data.labels[start : start + len(x0)].to(device)
        y = unconditional(backbone, labels)
        with autocast_to(device.type, dtype):
            hidden = backbone(x_t, times, y, drop_ids=None, hidden_depths=list(range(1, blocks + 1))).hidden
        for b, h in enumerate(hidden.values()):
            pooled[b].append(h.float().mean(1))
            tokens[b].append(h[: max(0, settings.token_images - start)].half().cpu())
    return [Representation(f"block {b + 1}", torch.cat(pooled[b]), torch.cat(tokens[b]), grid)
            for b in range(blocks)]


# ============================================================================
# Measuring
# ============================================================================


def measure(analyses: dict, rep: Representation, data: Images, settings: Settings,
            references: dict[str, Representation], notes: set) -> list[dict]:
    """Every analysis on one representation -> rows {reference, score, value}."""
    rows = []
    fit = int(len(data.labels) * settings.fit_fraction)
    local = Representation(rep.name, rep.pooled, rep.tokens.float(), rep.grid)
    foreground = pool_masks(data.foreground, rep.grid) if data.foreground is not None else None
    for name, analysis in analyses.items():
        if "foreground" in analysis.needs and foreground is None:
            notes.add(f"{name}: skipped, the data has no foreground masks (Dataset.foreground)")
            continue
        pairs = ([(ref_name, ref) for ref_name, ref in references.items() if ref_name != rep.name]
                 if "reference" in analysis.needs else [("", None)])
        for ref_name, ref in pairs:
            if ref is not None:
                ref = Representation(ref.name, ref.pooled.to(rep.pooled.device), ref.tokens.float(), ref.grid)
            inputs = AnalysisInputs(local, data.labels, fit, ref, foreground)
            try:
                scores = analysis.measure(inputs)
            except ValueError as exc:  # the inputs do not allow it (e.g. fewer images than CKNNA's k needs)
                notes.add(f"{name}: not measured on {rep.name}{' vs ' + ref_name if ref_name else ''}: {exc}")
                continue
            for score, value in scores.items():
                rows.append({"reference": ref_name, "score": score, "value": float(value)})
    return rows


def read_data(configs: list[ExperimentConfig], encoders: dict, analyses: dict, settings: Settings, device,
              progress: bool, rows: list, notes: set) -> dict[str, Images]:
    """One pass per distinct dataset; each encoder's own tokens are measured there too."""
    from repa.console import status

    found = {}
    for config in configs:
        key = data_key(config)
        if key in found:
            continue
        dataset = config.data.build(split=settings.split)
        count = min(settings.samples, len(dataset))
        with status(f"reading {count} images and their encoder tokens", count, progress) as advance:
            found[key] = data = collect_images(config, dataset, encoders, settings, device, advance)
        for name, rep in data.encoders.items():
            for row in measure(analyses, rep, data, settings, {}, notes):
                rows.append({"run": "", "step": None, "t": None, "block": None, "representation": name, **row})
    return found


def analyze(targets: list[Target], experiment: ExperimentConfig | None, encoders: dict, analyses: dict,
            settings: Settings, progress: bool = True, device=None) -> tuple[list[dict], list[str]]:
    """-> (rows, notes). A row: run, step, t, block, representation, reference, score, value. Without
    targets, `experiment` says which data the encoders are analysed on."""
    from repa.console import status
    from repa.engine.generate.sampling import load_model, resolve_checkpoint, sampling_autocast

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rows, notes = [], set()
    data_by_key = read_data([t.config for t in targets] or [experiment], encoders, analyses, settings, device,
                            progress, rows, notes)
    passes = sum(len(t.checkpoints) for t in targets) * len(settings.times)
    if not passes:
        return rows, sorted(notes)
    with status(f"hidden states: {passes} passes (checkpoint x t)", passes, progress) as advance:
        for target in targets:
            data = data_by_key[data_key(target.config)]
            if target.config.joint:
                notes.add(f"{target.name}: its [[joint]] {target.config.joint[0].kind} quantity is left out: the backbone "
                          "runs on the image tokens alone, which it never did in training")
            for folder in target.checkpoints:
                state, step, source = resolve_checkpoint(folder)
                autoencoder = target.config.autoencoder.build() if data.images is not None else None
                model = load_model(target.config, state, source, autoencoder).to(device)
                if autoencoder is not None:  # the checkpoint's trained autoencoder gives this checkpoint's latents
                    data = trained_latents(data, autoencoder.to(device), settings.batch_size, device)
                dtype = sampling_autocast(target.config, device)
                for t in settings.times:
                    for rep in hidden_states(model, target.config, data, t, settings, device, dtype):
                        block = int(rep.name.split()[-1])
                        for row in measure(analyses, rep, data, settings, data.encoders, notes):
                            rows.append({"run": target.name, "step": step, "t": t, "block": block,
                                         "representation": rep.name, **row})
                    advance()
    return rows, sorted(notes)
