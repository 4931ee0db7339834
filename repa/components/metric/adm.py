"""FID, sFID, Inception Score, precision and recall following the ADM evaluator
(openai/guided-diffusion evaluations/evaluator.py), on Inception features from `inception.py`.

Reference batches are ADM .npz files (`arr_0` uint8 [N,H,W,3], and optionally precomputed
`mu`, `sigma`, `mu_s`, `sigma_s`), any .npz with `arr_0`, or a folder of images.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from repa.components.metric.frechet import frechet_distance, gaussian_stats
from repa.errors import DataError, MissingWeightsError


@lru_cache(maxsize=2)
def _extractor(weights: str | None):
    from repa.components.metric.inception import InceptionFeatures
    from repa.components.metric.locate import inception_missing, inception_present

    path = inception_present(weights)
    if path is None:
        raise MissingWeightsError(inception_missing(weights))
    return InceptionFeatures(path)


def load_images(source: str | Path) -> np.ndarray:
    """uint8 [N,H,W,3] from an .npz (`arr_0`) or a folder of images (sorted by name)."""
    source = Path(source)
    if source.suffix == ".npz":
        if not source.is_file():
            raise DataError(f"{source}: no such reference batch; download it (ADM reference batches: "
                            "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/ref_batches/) or "
                            "point eval.reference at an image folder")
        with np.load(source) as data:
            if "arr_0" not in data:
                raise DataError(f"{source}: no 'arr_0' array of uint8 [N,H,W,3] images")
            return data["arr_0"]
    if source.is_dir():
        from PIL import Image

        from repa.components.dataset.files import IMAGE_EXTENSIONS, list_files

        files = list_files(source, IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"{source}: no images")
        return np.stack([np.asarray(Image.open(source / f).convert("RGB")) for f in files])
    raise DataError(f"{source}: not an .npz reference batch nor an image folder")


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
    def compute(dtype):
        a, b = torch.from_numpy(u).to(dtype), torch.from_numpy(v).to(dtype)
        d = (a * a).sum(1, keepdim=True) - 2 * a @ b.T + (b * b).sum(1)[None]
        return d.clamp_min(0).float()

    d = compute(torch.float16)
    return (d if torch.isfinite(d).all() else compute(torch.float32)).numpy()


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


class ADMMetric:
    feature_key = "inception-adm"

    def __init__(self, params):
        self.params = params

    def features(self, images: np.ndarray) -> dict:
        return _extractor(self.params.weights)(images, self.params.batch_size)

    def reference(self, source: str | None) -> dict:
        if not source:
            raise DataError("eval.reference is not set: give the ADM reference batch (e.g. "
                            "VIRTUAL_imagenet256_labeled.npz) or an image folder")
        return _reference(str(source), self.params.weights, self.params.batch_size)


@lru_cache(maxsize=4)
def _reference(source: str, weights: str | None, batch_size: int) -> dict:
    feats = _extractor(weights)(load_images(source), batch_size)
    ref = {"pool": feats["pool"]}
    stats = {}
    if source.endswith(".npz"):
        with np.load(source) as data:
            stats = {k: data[k] for k in ("mu", "sigma", "mu_s", "sigma_s") if k in data}
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


class Precision(ADMMetric):
    def score(self, feats, ref, labels=None):
        return {"precision": precision_recall(ref["pool"], feats["pool"], self.params.k)[0]}


class Recall(ADMMetric):
    def score(self, feats, ref, labels=None):
        return {"recall": precision_recall(ref["pool"], feats["pool"], self.params.k)[1]}


METRICS = {"fid": FID, "sfid": SFID, "is": InceptionScore, "precision": Precision, "recall": Recall}
