"""Metrics for the embedded dataset, in the feature space of a CNN repa trains on the digits
(seed 1, an architecture unlike the aligned encoder's): the Frechet distance to the held-out
digits, and the accuracy of that CNN on class-conditional samples."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from repa.components.digits_models import TRAIN_RESOLUTION, DigitsCNN, cached_model, digits_split, normalise
from repa.components.metric.frechet import frechet_distance, gaussian_stats
from repa.errors import DataError
from repa.interfaces import Metric


@lru_cache(maxsize=2)
def _classifier(seed: int, epochs: int):
    return cached_model("digits-cnn", DigitsCNN, seed, epochs)[0]


@torch.no_grad()
def digits_features(images: np.ndarray, seed: int, epochs: int, batch: int = 500) -> dict[str, np.ndarray]:
    """uint8 [N,H,W,3] -> {"features": [N,128], "logits": [N,10]}; resized to 32 px if needed."""
    net = _classifier(seed, epochs)
    feats, logits = [], []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(np.ascontiguousarray(images[i : i + batch])).permute(0, 3, 1, 2)
        x = normalise(x)
        if x.shape[-1] != TRAIN_RESOLUTION:
            x = F.interpolate(x, size=TRAIN_RESOLUTION, mode="bilinear", align_corners=False, antialias=True)
        f = net.features(x)
        feats.append(f.numpy())
        logits.append(net.head(f).numpy())
    return {"features": np.concatenate(feats), "logits": np.concatenate(logits)}


class DigitsMetric(Metric):
    def __init__(self, params):
        self.params = params
        self.feature_key = f"digits-cnn-{params.seed}-{params.epochs}"

    def features(self, images: np.ndarray) -> dict:
        return digits_features(images, self.params.seed, self.params.epochs)

    def reference(self, source=None) -> dict:
        """The held-out split (never trained on by the model or the aligned encoder)."""
        heldout = digits_split("heldout").images.permute(0, 2, 3, 1).numpy()
        return self.features(heldout)


class DigitsFD(DigitsMetric):
    def score(self, feats, ref, labels=None):
        return {"digits-fd": frechet_distance(*gaussian_stats(feats["features"]), *gaussian_stats(ref["features"]))}


class DigitsAccuracy(DigitsMetric):
    def score(self, feats, ref, labels=None):
        if labels is None:
            raise DataError("digits-accuracy needs the class label of every sample: a `labels` array in the "
                            "samples .npz (as `repa sample` writes it)")
        labels = np.asarray(labels)
        classes = feats["logits"].shape[1]
        if labels.dtype.kind not in "iu" or (len(labels) and not 0 <= labels.min() <= labels.max() < classes):
            shown = sorted({str(v) for v in labels.tolist() if not (isinstance(v, int) and 0 <= v < classes)})[:3]
            raise DataError(f"digits-accuracy: the samples' labels hold {', '.join(shown) or labels.dtype}; the digits "
                            f"are classes 0..{classes - 1}")
        return {"digits-accuracy": float((feats["logits"].argmax(1) == labels).mean())}


class DigitsSpread(DigitsMetric):
    """How much the samples vary, against the held-out digits: tr(cov(samples)) / tr(cov(real)) in the CNN's
    features. Below 1, the samples are less diverse than real digits (a Frechet distance counts that as
    distance even when every sample is a good digit); above 1, more scattered."""

    def score(self, feats, ref, labels=None):
        return {"digits-spread": float(np.trace(gaussian_stats(feats["features"])[1])
                                       / np.trace(gaussian_stats(ref["features"])[1]))}


ATTRIBUTE_NAMES = ("thickness", "slant", "size")  # digits-captions' ATTRIBUTES, in order


@lru_cache(maxsize=4)
def real_measurements(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits' thickness, slant and size [N,3] at `resolution`, and their labels [N]: what the
    digits-captions words were split on."""
    from repa.components.dataset.captions import measurements
    from repa.components.dataset.digits import digits_arrays

    images, labels = digits_arrays(resolution)
    return measurements(images[:, 0].double().numpy() / 255), labels.numpy()


class DigitsAttributes(Metric):
    """Whether text-to-image samples have the attributes their prompt's words ask for (digits-captions:
    thick / thin, slanted / upright, large / small). Per (sample, word): the sample's percentile among
    the real images of the digit it was asked for, in the word's direction (ties count half), so 0.5 is a
    sample that ignores the word and 1 one beyond every real image on the asked side. Scores: the mean over
    every word asked for, and per attribute."""

    feature_key = "digits-measurements"

    def __init__(self, params):
        self.params = params

    def features(self, images: np.ndarray) -> dict:
        gray = images.astype(np.float64).mean(axis=3) / 255
        from repa.components.dataset.captions import measurements

        return {"measurements": measurements(gray), "resolution": images.shape[1]}

    def reference(self, source=None) -> dict:
        return {}  # the real digits at the samples' resolution, read in `score`

    def score(self, feats, ref, labels=None, prompts=None):
        from repa.components.dataset.captions import ATTRIBUTES
        from repa.components.text_encoder.words import words_of

        if labels is None or prompts is None:
            raise DataError("digits-attributes needs each sample's digit and prompt: `labels` and `prompts` in the "
                            "samples .npz (as repa sample and repa evaluate write them for a text model)")
        real, real_labels = real_measurements(int(feats["resolution"]))
        percentiles: list[list[float]] = [[] for _ in ATTRIBUTES]
        for value, digit, prompt in zip(feats["measurements"], np.asarray(labels), prompts):
            words, pool = set(words_of(prompt)), real[real_labels == digit]
            for k, (below, above) in enumerate(ATTRIBUTES):
                if above in words or below in words:
                    rank = (np.sum(pool[:, k] < value[k]) + 0.5 * np.sum(pool[:, k] == value[k])) / len(pool)
                    percentiles[k].append(rank if above in words else 1.0 - rank)
        every = [v for values in percentiles for v in values]
        scores = {"digits-attributes": float(np.mean(every)) if every else float("nan")}
        for name, values in zip(ATTRIBUTE_NAMES, percentiles):
            scores[f"digits-attributes-{name}"] = float(np.mean(values)) if values else float("nan")
        return scores


METRICS = {"digits-fd": DigitsFD, "digits-accuracy": DigitsAccuracy, "digits-spread": DigitsSpread,
           "digits-attributes": DigitsAttributes}
