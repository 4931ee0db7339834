"""Samplers: integrate from noise (t=1) to data (t=0); numerics as the official `samplers.py`
(sihyun-yu/REPA @ 67f7145)."""

from pydantic import Field

from repa.interfaces import Params
from repa.plugins import hookimpl


class EulerMaruyamaParams(Params):
    t_last: float = Field(0.04, gt=0, lt=1, description="last stochastic time; then one mean step to 0")


def _euler(params, *, steps):
    from repa.components.sampler.integrators import EulerSampler

    return EulerSampler(steps, heun=False)


def _heun(params, *, steps):
    from repa.components.sampler.integrators import EulerSampler

    return EulerSampler(steps, heun=True)


def _euler_maruyama(params, *, steps):
    from repa.components.sampler.integrators import EulerMaruyamaSampler

    return EulerMaruyamaSampler(steps, t_last=params.t_last)


@hookimpl
def repa_register_samplers(registry):
    registry.add("euler", _euler, description="probability-flow ODE, Euler, steps+1 uniform times 1 -> 0")
    registry.add("heun", _heun, description="probability-flow ODE, Heun (no correction on the last step)")
    registry.add(
        "euler-maruyama", _euler_maruyama, EulerMaruyamaParams,
        "reverse SDE with diffusion 2t, 1 -> t_last in `steps` points, then a mean step to 0 (REPA's eval)",
    )
