"""FD-DINOv2: the Frechet distance in DINOv2 ViT-L/14 features, as NVlabs/edm2 computes it
(calculate_metrics.py `DINOv2Detector`, after layer6ai-labs/dgm-eval; Karras et al. 2024 report it
beside FID because Inception features reward ImageNet-classifier cues rather than what people see).

Features: uint8 images resized to 224 x 224 (float32 bicubic with antialias, on [0, 255]), divided by
255 and normalised with ImageNet's mean and std, through the torch.hub model `dinov2_vitl14`; the
feature is its output, the class token after the final LayerNorm (1024-d). The hub model keeps its
37 x 37 positional embedding and interpolates it for each input (bicubic, scale factor (16 + 0.1) / 37,
no antialias); the network here is built at 224 px with that embedding, interpolated the same way once.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from repa.components.metric.frechet import frechet_distance, gaussian_stats
from repa.errors import DataError, MissingWeightsError
from repa.interfaces import Metric

INPUT_SIZE = 224
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HUB_INTERPOLATE_OFFSET = 0.1  # dinov2 vision_transformer.py `interpolate_offset`
REFERENCE_KEYS = ("mu_dinov2", "sigma_dinov2")  # in a reference .npz, beside ADM's mu / sigma


def spec_of(size: str):
    from repa.components.encoder.specs import SPECS

    return SPECS[f"dinov2-vit-{size}"]


def hub_pos_embed(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """The hub model's positional embedding for a `grid` x `grid` patch input: the class entry kept, the
    patch entries interpolated as `DinoVisionTransformer.interpolate_pos_encoding` does."""
    dtype = pos_embed.dtype
    pos_embed = pos_embed.float()
    cls_entry, patches = pos_embed[:, :1], pos_embed[:, 1:]
    side = int(math.sqrt(patches.shape[1]))
    scale = (grid + HUB_INTERPOLATE_OFFSET) / side
    patches = torch.nn.functional.interpolate(
        patches.reshape(1, side, side, -1).permute(0, 3, 1, 2), scale_factor=(scale, scale), mode="bicubic",
        antialias=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)
    return torch.cat([cls_entry, patches], dim=1).to(dtype)


def build_network(size: str, path: Path) -> torch.nn.Module:
    """DINOv2 ViT/14 at 224 px from a release file (hub .pth or timm safetensors), frozen."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    from repa.components.encoder.vit import STATE_READERS, build_vit
    from repa.errors import CheckpointError
    from repa.weights import load_file, load_state_strict

    spec = spec_of(size)
    network = build_vit(spec, INPUT_SIZE)
    try:
        state = dict(STATE_READERS["dinov2"](load_file(path)))
    except CheckpointError as exc:
        raise CheckpointError(f"fd-dinov2: {path}: {exc}") from None
    if "pos_embed" in state:
        state["pos_embed"] = hub_pos_embed(state["pos_embed"], INPUT_SIZE // spec.patch_size)
    load_state_strict(network, checkpoint_filter_fn(state, network), f"fd-dinov2 weights {path}")
    return network.eval().requires_grad_(False)


def locate(size: str, weights: str | None) -> Path:
    from repa.components.encoder.download import locate_weights
    from repa.components.encoder.specs import candidate_files

    spec = spec_of(size)
    try:
        return locate_weights(spec, weights)
    except MissingWeightsError:
        places = "; ".join(str(p) for p in candidate_files(spec, weights))
        raise MissingWeightsError(
            f"fd-dinov2: DINOv2 ViT-{size.upper()}/14 weights not found; looked in: {places}. Download {spec.url} "
            f"and save it as {candidate_files(spec, weights)[0]} (or name the file: eval.metrics = "
            f"[{{ kind = \"fd-dinov2\", weights = \"/path/to/{spec.hub_file}\" }}])") from None


def preprocess(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> the network's input, as edm2's DINOv2Detector (resize_mode 'torch')."""
    x = torch.nn.functional.interpolate(images.to(torch.float32), size=(INPUT_SIZE, INPUT_SIZE), mode="bicubic",
                                        antialias=True)
    x = x / 255
    x = x - torch.tensor(MEAN, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)
    return x / torch.tensor(STD, dtype=x.dtype, device=x.device).reshape(1, -1, 1, 1)


class DINOv2Features:
    def __init__(self, size: str, path: Path, device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.network = build_network(size, path).to(self.device)

    @torch.no_grad()
    def __call__(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """uint8 [N,H,W,3] -> float64 [N, width]: the normalised class token, in float32 (no TF32, whatever
        sampling in the same process allowed)."""
        from repa.components.metric.inception import full_float32

        out = []
        with full_float32():
            for start in range(0, len(images), batch_size):
                chunk = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).permute(0, 3, 1, 2)
                tokens = self.network.forward_features(preprocess(chunk.to(self.device)))
                out.append(tokens[:, 0].double().cpu().numpy())
        return np.concatenate(out)


@lru_cache(maxsize=2)
def _extractor(size: str, weights: str | None) -> DINOv2Features:
    return DINOv2Features(size, locate(size, weights))


class FDDINOv2(Metric):
    def __init__(self, params):
        self.params = params
        self.feature_key = f"dinov2-vit-{params.size}"

    def _extract(self, images: np.ndarray) -> np.ndarray:
        return _extractor(self.params.size, self.params.weights)(images, self.params.batch_size)

    def features(self, images: np.ndarray) -> dict:
        return {"dinov2": self._extract(images)}

    def reference(self, source: str | None) -> dict:
        if not source:
            raise DataError("eval.reference is not set: give a reference batch .npz or an image folder for fd-dinov2")
        return _reference(str(source), self.params.size, self.params.weights, self.params.batch_size,
                          self.params.reference_resolution)

    def score(self, features: dict, reference: dict, labels=None) -> dict[str, float]:
        return {"fd-dinov2": frechet_distance(*gaussian_stats(features["dinov2"]), reference["mu"], reference["sigma"])}


@lru_cache(maxsize=4)
def _reference(source: str, size: str, weights: str | None, batch_size: int, resolution: int) -> dict:
    """The reference's statistics: stored in the .npz for ViT-L (`mu_dinov2`, `sigma_dinov2`, written by
    `repa preprocess reference --fd-dinov2`), otherwise computed from its images."""
    from repa.components.metric.adm import reference_features

    if source.endswith(".npz") and size == "l" and Path(source).is_file():
        with np.load(source) as data:
            if all(k in data for k in REFERENCE_KEYS):
                mu, sigma = (data[k] for k in REFERENCE_KEYS)
                if mu.dtype.kind != "f" or not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                    raise DataError(f"{source}: mu_dinov2 / sigma_dinov2 are not finite float arrays; rebuild the "
                                    "reference batch (repa preprocess reference --fd-dinov2)")
                return {"mu": mu, "sigma": sigma}
    if source.endswith(".npz"):
        import logging

        logging.getLogger("repa").warning(
            "repa: %s holds no FD-DINOv2 statistics (mu_dinov2, sigma_dinov2); computing them from its arr_0 "
            "images (an ADM batch keeps 10,000: edm2's reference statistics cover the whole dataset; write them with "
            "repa preprocess reference FOLDER OUT.npz --fd-dinov2)", source)
    extract = _extractor(size, weights)
    feats = reference_features(source, lambda images: {"dinov2": extract(images, batch_size)}, resolution)
    mu, sigma = gaussian_stats(feats["dinov2"])
    return {"mu": mu, "sigma": sigma}
