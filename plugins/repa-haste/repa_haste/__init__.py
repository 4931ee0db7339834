"""repa plugin: HASTE's holistic alignment (Wang et al. 2025, arXiv 2505.16792, "REPA works until it
doesn't: early-stopped, holistic alignment"; code NUS-HPC-AI-Lab/HASTE).

Phase I aligns both the features (REPA's [[alignment]] entry) and the attention maps: the backbone's
attention logits at `blocks` are distilled from the encoder's at `encoder_blocks` by cross-entropy
between the softmaxed rows. Phase II drops both: `stop_after` here and on the [[alignment]] entry
(HASTE's --early-stop-point, 250K steps for SiT-XL/2). Defaults: the released code's, SiT blocks
5-8 <- DINOv2-B blocks 9-12, coefficient 0.5. Light module: torch is imported in the factory only."""

from pydantic import Field

from repa.interfaces import AttentionParams
from repa.plugins import hookimpl


class HasteParams(AttentionParams):
    blocks: list[int] = Field([5, 6, 7, 8], description="the backbone's blocks, 1-based (HASTE: 5-8)")
    encoder_blocks: list[int] = Field([9, 10, 11, 12], description="the encoder's blocks, 1-based (HASTE: 9-12)")


def build_haste(params):
    from repa_haste.loss import AttentionCrossEntropy

    return AttentionCrossEntropy()


@hookimpl
def repa_register_attention_losses(registry):
    registry.add("haste", build_haste, HasteParams,
                 "HASTE: cross-entropy of the backbone's attention rows against the encoder's (softmaxed)")
