"""Interpolant paths x_t = alpha(t) x_0 + sigma(t) eps (SiT, Ma et al. 2024, Sec. 2)."""

from repa.plugins import hookimpl


def _linear(params):
    from repa.components.path.interpolants import LinearPath

    return LinearPath()


def _cosine(params):
    from repa.components.path.interpolants import CosinePath

    return CosinePath()


@hookimpl
def repa_register_paths(registry):
    registry.add("linear", _linear, description="alpha = 1 - t, sigma = t (rectified flow / SiT linear)")
    registry.add("cosine", _cosine, description="alpha = cos(pi t / 2), sigma = sin(pi t / 2) (SiT GVP)")
