"""REPA's alignment term (Yu et al. 2024, Sec. 3.2, Eq. 8): coeff * align(h_phi(h_t^[depth]), transform(y*)),
averaged over the tokens by the alignment loss. Checkpoints keep its projector in the official layout:
the k-th [[alignment]] entry's under `projectors.<k>.` (the engine places it there)."""

from __future__ import annotations

import torch

from repa.interfaces import EncoderNeed, Needs, Term


class AlignmentTerm(Term):
    def __init__(self, params, facts):
        self.params, self.depth = params, params.depth
        self.projector = params.projector.build(in_dim=facts.hidden_size, out_dim=params.encoder.params.embed_dim(),
                                                projector_dim=params.projector_dim, grid=facts.grid)
        self.alignment_loss = params.loss.build()
        self.transform = params.target_transform.build()
        self.encoder_need = EncoderNeed(params.encoder, params.features)
        self.prefix: Term | None = None  # a jointly denoised quantity aligned with this entry too (REG)

    def needs(self) -> Needs:
        return Needs(hidden=(self.depth,), encoders=(self.encoder_need,))

    def modules(self) -> dict:
        return {"": self.projector}

    def loss(self, ctx) -> torch.Tensor:
        hidden = ctx.student.hidden[self.depth]
        with torch.no_grad():  # the target carries no gradient; entries sharing an encoder share its tokens
            target = self.transform(ctx.encoder(self.encoder_need).tokens)
        if self.prefix is not None:  # REG: [its tokens, patches] aligned with [its clean value, encoder tokens]
            hidden = torch.cat([ctx.student.extra_hidden[self.depth], hidden], dim=1)
            target = torch.cat([ctx.extra(self.prefix).clean.to(target.dtype), target], dim=1)
        return self.alignment_loss(self.projector(hidden), target)
