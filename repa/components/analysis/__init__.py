"""Measurements of representations for `repa analyze`: CKNNA against an encoder (REPA Figs. 2-3),
linear probing (REPA Fig. 2a) and iREPA's spatial-structure scores."""

from __future__ import annotations

from pydantic import Field

from repa.interfaces import Params
from repa.plugins import hookimpl


class CKNNAParams(Params):
    k: int = Field(10, ge=2, description="nearest neighbours per point (Huh et al. and REPA: 10)")


class TokenCKNNAParams(CKNNAParams):
    points: int = Field(2048, ge=16, description="(image, token) pairs drawn for the per-token kernel "
                        "(memory grows with its square)")
    seed: int = Field(0, ge=0, description="seed of that draw (the same pairs for every representation)")


class ProbeParams(Params):
    l2: float = Field(1e-4, ge=0, description="L2 penalty on the weights of the logistic regression")
    iterations: int = Field(100, ge=1, description="L-BFGS iterations at most (full batch, from zero weights)")


class LDSParams(Params):
    far_dist: int = Field(6, ge=1, description="grid (Manhattan) distance from which token pairs are distant")


class CDSParams(Params):
    dmax: int = Field(8, ge=2, description="largest grid distance of the fitted decay")


class SRSSParams(Params):
    d_pos: int = Field(1, ge=1, description="object tokens within this grid distance are near")
    d_neg: int = Field(6, ge=1, description="background tokens from this grid distance on are far")


def _cknna(per_token: bool):
    def factory(params):
        from repa.components.analysis.alignment import CKNNA

        return CKNNA(params, per_token)

    return factory


def _probe(params):
    from repa.components.analysis.probe import LinearProbe

    return LinearProbe(params)


def _spatial(name: str):
    def factory(params):
        from repa.components.analysis.spatial import SpatialMetric

        return SpatialMetric(name, params)

    return factory


@hookimpl
def repa_register_analyses(registry):
    registry.add("cknna", _cknna(False), CKNNAParams,
                 "mutual k-NN kernel alignment with an encoder, mean-pooled tokens (REPA Figs. 2-3)")
    registry.add("cknna-tokens", _cknna(True), TokenCKNNAParams,
                 "the same on individual tokens: patch-level alignment, what REPA's loss acts on")
    registry.add("linear-probe", _probe, ProbeParams,
                 "held-out accuracy of a logistic regression on the pooled tokens (REPA Fig. 2a)")
    registry.add("lds", _spatial("lds"), LDSParams, "iREPA local vs distant similarity of the token grid")
    registry.add("cds", _spatial("cds"), CDSParams, "iREPA correlation-decay slope of cosine vs grid distance")
    registry.add("srss", _spatial("srss"), SRSSParams,
                 "iREPA object-region self-similarity (needs the data's foreground masks)")
    registry.add("rmsc", _spatial("rmsc"), Params, "iREPA RMS spatial contrast of the normalised tokens")
