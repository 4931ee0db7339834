"""A test-only encoder kind, "given": its width, tokens, blocks and heads are params, and its outputs are
what a test gives `repa.testing.ObjectiveHarness` (the network itself returns zeros). Loaded by the
`given_encoders` fixture as a plugin module."""

from pydantic import Field

from repa.interfaces import EncoderParams
from repa.plugins import hookimpl


class GivenParams(EncoderParams):
    dim: int = Field(8, ge=1)
    tokens: int = Field(16, ge=1)
    blocks: int = Field(12, ge=1)

    def embed_dim(self) -> int:
        return self.dim

    def tokens_for(self, resolution: int) -> int:
        return self.tokens

    def has_global_token(self) -> bool:
        return True

    def gives_attention(self) -> bool:
        return True

    def num_blocks(self) -> int:
        return self.blocks


def build_given(params, *, resolution):
    import torch
    import torch.nn as nn

    from repa.interfaces import Encoder

    class Zeros(nn.Module, Encoder):
        embed_dim = params.dim

        def preprocess(self, images):
            return images.float()

        def forward(self, x):
            return torch.zeros(x.shape[0], params.tokens, params.dim)

        def tokens_for(self, resolution):
            return params.tokens

    return Zeros().eval().requires_grad_(False)


@hookimpl
def repa_register_encoders(registry):
    registry.add("given", build_given, GivenParams, "tests: outputs given by the test")
