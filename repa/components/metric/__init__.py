"""Sample-quality metrics. Metrics with the same `feature_key` share one feature pass:
the ADM evaluator's five (Inception features) and the two embedded-dataset ones (a CNN
classifier repa trains on the digits)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from repa.interfaces import MetricParams
from repa.plugins import hookimpl


class InceptionParams(MetricParams):
    weights: str | None = Field(None, description="FID Inception weights file (pytorch-fid or torch-fidelity port)")
    batch_size: int = Field(100, ge=1)
    reference_resolution: int = Field(256, ge=8, description="a folder reference is ADM-center-cropped to this "
                                      "(the ADM reference batches are 256 px)")


class PrecisionRecallParams(InceptionParams):
    k: int = Field(3, ge=1, description="nearest neighbour defining each point's manifold radius (ADM: 3)")


class InceptionScoreParams(InceptionParams):
    split_size: int = Field(5000, ge=1, description="samples per split (ADM: 5,000)")


class DigitsMetricParams(MetricParams):
    seed: int = Field(1, ge=0, description="seed of the scoring CNN (the aligned encoder uses 0)")
    epochs: int = Field(30, ge=1)


class DigitsAttributesParams(MetricParams):
    def outputs(self, registered_name: str) -> tuple[str, ...]:
        return (registered_name, *(f"{registered_name}-{name}" for name in ("thickness", "slant", "size")))


class FDDINOv2Params(MetricParams):
    size: Literal["s", "b", "l"] = Field("l", description="DINOv2 ViT size (edm2's FD-DINOv2: l, ViT-L/14)")
    weights: str | None = Field(None, description="DINOv2 release file (torch.hub .pth or timm safetensors); "
                                "default: the usual places")
    batch_size: int = Field(64, ge=1)
    reference_resolution: int = Field(256, ge=8, description="a folder reference is ADM-center-cropped to this")


def _fd_dinov2(params):
    from repa.components.metric.dinov2 import FDDINOv2

    return FDDINOv2(params)


def _dinov2_info(params):
    from repa.components.encoder.specs import present_file
    from repa.components.metric.dinov2 import spec_of

    found = present_file(spec_of(params.size), params.weights)
    return {"weights here": f"yes ({found})" if found else "no"}


def _adm(name):
    def factory(params):
        from repa.components.metric import adm

        return adm.METRICS[name](params)

    return factory


def _digits(name):
    def factory(params):
        from repa.components.metric import digits

        return digits.METRICS[name](params)

    return factory


def _inception_info(params):
    from repa.components.metric.locate import inception_present

    found = inception_present(params.weights)
    return {"weights here": f"yes ({found})" if found else "no"}


@hookimpl
def repa_register_metrics(registry):
    registry.add("fid", _adm("fid"), InceptionParams, "Frechet distance of Inception pool_3 (ADM evaluator)",
                 info=_inception_info)
    registry.add("sfid", _adm("sfid"), InceptionParams, "Frechet distance of mixed_6/conv[:7] (ADM)",
                 info=_inception_info)
    registry.add("is", _adm("is"), InceptionScoreParams, "Inception Score, splits of 5,000 (ADM)",
                 info=_inception_info)
    registry.add("precision", _adm("precision"), PrecisionRecallParams, "k-NN manifold precision (ADM)",
                 info=_inception_info)
    registry.add("recall", _adm("recall"), PrecisionRecallParams, "k-NN manifold recall (ADM)",
                 info=_inception_info)
    registry.add("fd-dinov2", _fd_dinov2, FDDINOv2Params,
                 "Frechet distance of DINOv2 ViT-L/14 class tokens (edm2's FD-DINOv2)", info=_dinov2_info)
    registry.add("digits-fd", _digits("digits-fd"), DigitsMetricParams,
                 "Frechet distance in a repa-trained digits CNN's features, vs the held-out digits")
    registry.add("digits-accuracy", _digits("digits-accuracy"), DigitsMetricParams,
                 "accuracy of that CNN on class-conditional samples (does the sample show its class?)")
    registry.add("digits-spread", _digits("digits-spread"), DigitsMetricParams,
                 "tr(cov) of the samples' CNN features over the held-out digits' (below 1: less diverse)")
    registry.add("digits-attributes", _digits("digits-attributes"), DigitsAttributesParams,
                 "text samples' percentile among real digits on the attributes their prompt asks for (0.5: ignored)")
