"""FID, sFID, Inception Score, precision and recall following the ADM evaluator
(openai/guided-diffusion evaluations/evaluator.py), on Inception features from `inception.py`.

Reference batches are ADM .npz files (`arr_0` uint8 [N,H,W,3], and optionally precomputed
`mu`, `sigma`, `mu_s`, `sigma_s`), any .npz with `arr_0`, or a folder of images (ADM center
crop to `reference_resolution`); `repa preprocess reference` writes an ADM-format batch.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from repa.components.metric.frechet import frechet_distance, gaussian_stats
from repa.errors import DataError, MissingWeightsError
from repa.interfaces import Metric


@lru_cache(maxsize=2)
def _extractor(weights: str | None):
    from repa.components.metric.inception import InceptionFeatures
    from repa.components.metric.locate import inception_missing, inception_present

    path = inception_present(weights)
    if path is None:
        raise MissingWeightsError(inception_missing(weights))
    return InceptionFeatures(path)


def missing_reference(source: Path) -> DataError:
    return DataError(f"{source}: no such reference batch; download it (ADM reference batches: "
                     "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/), point "
                     "eval.reference at an image folder, or make one with `repa preprocess reference`")


def folder_images(source: Path, resolution: int, chunk: int = 1000):
    """uint8 [n,R,R,3] chunks of a folder's images (sorted by name), each ADM-center-cropped to
    `resolution` as the training data is, so any folder of real images is a reference."""
    from PIL import Image

    from repa.components.dataset.crop import center_crop_arr, to_rgb
    from repa.components.dataset.files import IMAGE_EXTENSIONS, list_files

    files = list_files(source, IMAGE_EXTENSIONS)
    if not files:
        raise DataError(f"{source}: no images")
    for start in range(0, len(files), chunk):
        batch = []
        for name in files[start : start + chunk]:
            try:
                with Image.open(source / name) as image:
                    image.load()
                    batch.append(center_crop_arr(to_rgb(image), resolution))
            except Exception as exc:  # one clear line naming the file, whatever Pillow raised
                raise DataError(f"{source / name}: unreadable image ({type(exc).__name__}: {exc}); remove it "
                                "from the reference folder") from None
        yield np.stack(batch)


def reference_features(source: str | Path, extract, resolution: int) -> dict:
    """Inception features of a reference: an .npz's `arr_0`, or a folder streamed in chunks."""
    source = Path(source)
    if source.suffix == ".npz":
        if not source.is_file():
            raise missing_reference(source)
        try:
            with np.load(source) as data:
                if "arr_0" not in data:
                    raise DataError(f"{source}: no 'arr_0' array of uint8 [N,H,W,3] images")
                images = data["arr_0"]
        except (ValueError, OSError, EOFError, __import__("zipfile").BadZipFile) as exc:
            raise DataError(f"{source}: not a readable reference batch ({type(exc).__name__}: "
                            f"{str(exc).strip()[:120]})") from None
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
            raise DataError(f"{source}: arr_0 is {images.dtype} {list(images.shape)}, expected uint8 [N, H, W, 3]")
        return extract(images)
    if source.is_dir():
        parts = [extract(images) for images in folder_images(source, resolution)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    raise DataError(f"{source}: not an .npz reference batch nor an image folder")


def write_reference_batch(source: Path, out: Path, resolution: int = 256, keep: int = 10_000,
                          weights: str | None = None, batch_size: int = 100, seed: int = 0,
                          dinov2_weights: str | None = None, fd_dinov2: bool = False) -> int:
    """An ADM-format reference batch from a folder: statistics (mu, sigma, mu_s, sigma_s) over
    every image, and `arr_0` holding `keep` of them (a seeded random subset, as ADM's 10,000)
    for precision and recall; with `fd_dinov2`, also FD-DINOv2's (mu_dinov2, sigma_dinov2: DINOv2
    ViT-L/14 over every image, as edm2's reference statistics). Returns the number of images."""
    import os

    from repa.components.dataset.files import IMAGE_EXTENSIONS, list_files

    total = len(list_files(Path(source), IMAGE_EXTENSIONS))
    chosen = set(np.random.default_rng(seed).choice(total, min(keep, total), replace=False).tolist()) if total else set()
    extract = _extractor(weights)
    dinov2 = _dinov2_extractor(dinov2_weights) if fd_dinov2 else None
    pool, spatial, dino, kept, seen = [], [], [], [], 0
    for images in folder_images(Path(source), resolution):
        feats = extract(images, batch_size)
        pool.append(feats["pool"])
        spatial.append(feats["spatial"])
        if dinov2 is not None:
            dino.append(dinov2(images, batch_size))
        kept.extend(images[i] for i in range(len(images)) if seen + i in chosen)
        seen += len(images)
    stats = dict(zip(("mu", "sigma"), gaussian_stats(np.concatenate(pool))))
    stats.update(zip(("mu_s", "sigma_s"), gaussian_stats(np.concatenate(spatial))))
    if dino:
        from repa.components.metric.dinov2 import REFERENCE_KEYS

        stats.update(zip(REFERENCE_KEYS, gaussian_stats(np.concatenate(dino))))
    from repa.storage import writing

    tmp = Path(out).with_name(f".{Path(out).stem}.tmp.npz")
    with writing(Path(out), temporary=[tmp]):
        np.savez(tmp, arr_0=np.stack(kept), **stats)
        os.replace(tmp, out)
    return seen


def _dinov2_extractor(weights: str | None):
    from repa.components.metric.dinov2 import _extractor as dinov2_extractor

    return dinov2_extractor("l", weights)


# ============================================================================
# Inception score and the k-NN manifold (ADM's ManifoldEstimator)
# ============================================================================


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
    """exp(E_x KL(p(y|x) || p(y))) per contiguous split of `split_size`, averaged over splits."""
    logits = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    preds = torch.softmax(logits, dim=1).numpy()
    scores = []
    for i in range(0, len(preds), split_size):
        part = preds[i : i + split_size]
        kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return float(np.mean(scores))


def pairwise_sq_distances(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Squared L2 distances computed in float16 (as ADM's DistanceBlock), float32 when that overflows."""
    device = "cuda" if torch.cuda.is_available() else "cpu"  # 50K x 50K blocks: the GPU when there is one

    def compute(dtype):
        a, b = torch.from_numpy(u).to(device, dtype), torch.from_numpy(v).to(device, dtype)
        d = (a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)[None]
        return d.clamp_min(0).float()

    d = compute(torch.float16)
    return (d if torch.isfinite(d).all() else compute(torch.float32)).cpu().numpy()


def manifold_radii(features: np.ndarray, k: int = 3, batch: int = 10000) -> np.ndarray:
    """Squared distance of each point to its k-th nearest neighbour (itself excluded)."""
    radii = np.zeros(len(features), dtype=np.float32)
    for start in range(0, len(features), batch):
        rows = np.concatenate([pairwise_sq_distances(features[start : start + batch], features[c : c + batch])
                               for c in range(0, len(features), batch)], axis=1)
        radii[start : start + batch] = np.partition(rows, k, axis=1)[:, k]
    return radii


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = 3, batch: int = 10000):
    """precision: share of samples inside the reference manifold; recall: the reverse."""
    ref_radii, sample_radii = manifold_radii(reference, k, batch), manifold_radii(samples, k, batch)
    ref_in = np.zeros(len(reference), dtype=bool)
    sample_in = np.zeros(len(samples), dtype=bool)
    for i in range(0, len(reference), batch):
        for j in range(0, len(samples), batch):
            d = pairwise_sq_distances(reference[i : i + batch], samples[j : j + batch])
            ref_in[i : i + batch] |= (d <= sample_radii[None, j : j + batch]).any(axis=1)
            sample_in[j : j + batch] |= (d <= ref_radii[i : i + batch, None]).any(axis=0)
    return float(sample_in.mean()), float(ref_in.mean())


# ============================================================================
# Metrics
# ============================================================================


class ADMMetric(Metric):
    feature_key = "inception-adm"

    def __init__(self, params):
        self.params = params

    def features(self, images: np.ndarray) -> dict:
        return _extractor(self.params.weights)(images, self.params.batch_size)

    def reference(self, source: str | None) -> dict:
        if not source:
            raise DataError("eval.reference is not set: give the ADM reference batch (e.g. "
                            "VIRTUAL_imagenet256_labeled.npz) or an image folder")
        return _reference(str(source), self.params.weights, self.params.batch_size, self.params.reference_resolution)


@lru_cache(maxsize=4)
def _reference(source: str, weights: str | None, batch_size: int, resolution: int) -> dict:
    feats = reference_features(source, lambda images: _extractor(weights)(images, batch_size), resolution)
    ref = {"pool": feats["pool"]}
    stats = {}
    if source.endswith(".npz"):
        with np.load(source) as data:
            stats = {k: data[k] for k in ("mu", "sigma", "mu_s", "sigma_s") if k in data}
        for key, value in stats.items():  # a reference that is not finite would score nan, exit 0
            if value.dtype.kind != "f" or not np.isfinite(value).all():
                raise DataError(f"{source}: {key} is not a finite float array; rebuild the reference batch "
                                "(repa preprocess reference)")
    if "mu" not in stats:
        stats["mu"], stats["sigma"] = gaussian_stats(feats["pool"])
    if "mu_s" not in stats:
        stats["mu_s"], stats["sigma_s"] = gaussian_stats(feats["spatial"])
    return {**ref, **stats}


class FID(ADMMetric):
    def score(self, feats, ref, labels=None):
        return {"fid": frechet_distance(*gaussian_stats(feats["pool"]), ref["mu"], ref["sigma"])}


class SFID(ADMMetric):
    def score(self, feats, ref, labels=None):
        return {"sfid": frechet_distance(*gaussian_stats(feats["spatial"]), ref["mu_s"], ref["sigma_s"])}


class InceptionScore(ADMMetric):
    def score(self, feats, ref, labels=None):
        return {"is": inception_score(feats["logits"], self.params.split_size)}

    def reference(self, source):
        return {}


def _precision_recall(ref: dict, feats: dict, k: int) -> tuple[float, float]:
    """Both numbers come from one k-NN pass; the pair is kept with the sample features, so
    precision and recall in one evaluation pay for it once."""
    cached = feats.setdefault("_precision_recall", {})
    if k not in cached:
        cached[k] = precision_recall(ref["pool"], feats["pool"], k)
    return cached[k]


class Precision(ADMMetric):
    def score(self, feats, ref, labels=None):
        return {"precision": _precision_recall(ref, feats, self.params.k)[0]}


class Recall(ADMMetric):
    def score(self, feats, ref, labels=None):
        return {"recall": _precision_recall(ref, feats, self.params.k)[1]}


METRICS = {"fid": FID, "sfid": SFID, "is": InceptionScore, "precision": Precision, "recall": Recall}
