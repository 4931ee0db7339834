"""Weightings: the distribution of t during training (and the per-sample loss weight)."""

from pydantic import Field

from repa.interfaces import Params
from repa.plugins import hookimpl


class LognormalParams(Params):
    mean: float = Field(0.0, description="mean of log(sigma_EDM)")
    std: float = Field(1.0, gt=0, description="std of log(sigma_EDM)")


class LogitNormalParams(Params):
    mean: float = Field(0.0, description="mean of logit(t)")
    std: float = Field(1.0, gt=0, description="std of logit(t)")


def _build(cls_name):
    def factory(params):
        from repa.components.weighting import schedules

        return getattr(schedules, cls_name)(params)

    return factory


@hookimpl
def repa_register_weightings(registry):
    registry.add("uniform", _build("UniformWeighting"), description="t ~ U(0, 1) (REPA default)")
    registry.add(
        "lognormal",
        _build("LognormalWeighting"),
        LognormalParams,
        "EDM sigma = exp(N(mean, std)), mapped to t by the path (REPA's lognormal)",
    )
    registry.add(
        "logit-normal", _build("LogitNormalWeighting"), LogitNormalParams, "t = sigmoid(N(mean, std)) (SD3)"
    )
