"""A quantity denoised jointly with the image ([[joint]]; REG, Wu et al. 2025, loss.py `denoising_loss_cls`):
its clean value comes from an encoder's outputs, the engine noises it with the image's t and feeds it
to the backbone as extra tokens; its loss is the image's denoising loss on it."""

from __future__ import annotations

import torch

from repa.interfaces import EncoderNeed, Needs, Term


class JointTerm(Term):
    def __init__(self, params, facts):
        self.quantity = params.quantity.build(hidden_size=facts.hidden_size, width=params.encoder.params.embed_dim())
        self.encoder_need = EncoderNeed(params.encoder, params.features,
                                        global_token=params.quantity.params.needs_global_token())

    def needs(self) -> Needs:
        return Needs(encoders=(self.encoder_need,))

    def modules(self) -> dict:
        return {"": self.quantity}

    def extra_tokens(self):
        return self.quantity

    def clean_extra(self, ctx) -> torch.Tensor:
        out = ctx.encoder(self.encoder_need)
        return self.quantity.clean(out.tokens, out.global_token)

    def loss(self, ctx) -> torch.Tensor:
        extra = ctx.extra(self)
        error = (extra.prediction.float() - extra.target.float()) ** 2
        return error.mean(dim=list(range(1, error.ndim))) * ctx.weighting.loss_weight(ctx.t).float()
