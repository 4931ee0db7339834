"""repa plugin: iREPA (Singh et al. 2025, arXiv 2512.10794; code End2End-Diffusion/iREPA).

iREPA's finding is that the spatial structure of the target representation, not its global
semantics, drives REPA's gains. It changes two things, each a component of its own kind here:

- projector `conv`: a k x k convolution over the backbone's token grid instead of REPA's
  per-token MLP (released code: ldm/models/sit.py `ProjectionLayer`, type "conv");
- target transform `spatial-norm`: the encoder's tokens minus gamma times their mean over tokens,
  divided by their standard deviation over tokens plus eps (ldm/utils.py `spatial_zscore`).

Light module: torch is imported in the factories only."""

from pydantic import Field, field_validator

from repa.interfaces import Params
from repa.plugins import hookimpl


class ConvProjectorParams(Params):
    kernel_size: int = Field(3, ge=1, description="side of the square kernel; odd, so the grid keeps its size (iREPA: 3)")

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, size: int) -> int:
        if size % 2 == 0:
            raise ValueError(f"{size} is even; use an odd size (iREPA uses 3) so the padded convolution keeps the grid")
        return size


class SpatialNormParams(Params):
    gamma: float = Field(0.6, ge=0, le=1, description="fraction of the mean over tokens removed (iREPA: 0.6)")
    eps: float = Field(1e-6, gt=0, description="added to the standard deviation over tokens")


def build_conv_projector(params, *, in_dim, out_dim, projector_dim, grid):
    from repa_irepa.modules import ConvProjector

    return ConvProjector(in_dim, out_dim, grid, params.kernel_size)


def build_spatial_norm(params):
    from repa_irepa.modules import SpatialNorm

    return SpatialNorm(params.gamma, params.eps)


@hookimpl
def repa_register_projectors(registry):
    registry.add("conv", build_conv_projector, ConvProjectorParams,
                 "iREPA: a k x k convolution over the token grid (projector_dim unused)")


@hookimpl
def repa_register_target_transforms(registry):
    registry.add("spatial-norm", build_spatial_norm, SpatialNormParams,
                 "iREPA: tokens minus gamma x their spatial mean, over their spatial std + eps")
