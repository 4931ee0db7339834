"""repa plugin: REG, Representation Entanglement for Generation (Wu et al. 2025, arXiv 2507.01467;
code Martinser/REG). The encoder's class token is noised with the image's t, enters SiT as one extra
token, is denoised jointly (its own loss, coefficient `coeff`, REG's `--cls` = 0.03) and is aligned
with REPA's loss together with the patch tokens; sampling starts it from noise next to the image.

Everything but the class token's own modules is repa's [[joint]] extension point
(`repa.interfaces.Joint`): the engine noises, regresses and integrates the quantity. Light module:
torch is imported in the factory only."""

from pydantic import Field

from repa.interfaces import JointParams
from repa.plugins import hookimpl


class RegParams(JointParams):
    coeff: float = Field(0.03, ge=0, description="weight of the class token's denoising loss (REG's --cls)")


def build_reg(params, *, hidden_size, width):
    from repa_reg.token import ClassToken

    return ClassToken(hidden_size, width)


@hookimpl
def repa_register_joints(registry):
    registry.add("reg", build_reg, RegParams,
                 "REG: the encoder's class token, noised with the image's t and denoised with it as one extra token")
