"""Guidance: how conditional and unconditional predictions combine, and when."""

from repa.interfaces import GuidanceParams
from repa.plugins import hookimpl


def _cfg(params, *, scale, interval):
    from repa.components.guidance.cfg import ClassifierFreeGuidance

    return ClassifierFreeGuidance(scale, *interval)


@hookimpl
def repa_register_guidances(registry):
    registry.add(
        "cfg", _cfg, GuidanceParams,
        description="classifier-free guidance uncond + scale (cond - uncond), only for t in [low, high]",
    )
