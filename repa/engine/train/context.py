"""The step context: every need of the step's terms, computed once and shared (`repa.interfaces.StepContext`).

Before autocast (`prepare`): the latents (with their graph only when a term needs it) and every
encoder's outputs, each encoder once for all that is asked of it. Inside the trained network's call
(`run_student`): the jointly denoised quantities' inputs and the student's pass. Teacher passes are
computed when a term asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from repa.engine.network import split_extra
from repa.engine.train.randomness import step_seed
from repa.errors import ContractError
from repa.interfaces import BackboneOutput, EncoderOutput, ExtraTokens, Needs


@dataclass
class StepInputs:
    """One micro-batch and its rows of the step's draws."""

    step: int
    images: torch.Tensor  # uint8 [B,3,R,R]
    y: torch.Tensor  # [B] the labels the student sees (legacy dropout applied)
    drop: torch.Tensor  # [B] bool
    t: torch.Tensor
    noise: torch.Tensor
    posterior: torch.Tensor
    extra_noise: list = field(default_factory=list)  # [B,K,D] per quantity with extra tokens
    moments: torch.Tensor | None = None  # stored with the data
    cached: dict = field(default_factory=dict)  # feature cache folder -> tokens [B,T,D]
    rows: tuple = (0, 0)  # this micro-batch's rows of the global batch
    global_batch: int = 0
    seed: int = 0


def merge_needs(needs: list[Needs]) -> Needs:
    """One Needs holding every block and request (duplicates once)."""
    def union(name):
        seen = []
        for need in needs:
            seen += [v for v in getattr(need, name) if v not in seen]
        return tuple(seen)

    return Needs(hidden=tuple(sorted(set(union("hidden")))), attention=tuple(sorted(set(union("attention")))),
                 encoders=union("encoders"), teachers=union("teachers"),
                 latent_gradient=any(n.latent_gradient for n in needs))


class TrainingContext:
    """`repa.interfaces.StepContext` for one micro-batch."""

    def __init__(self, inputs: StepInputs, objective, autoencoder, encoders: dict, ema, slots: list):
        self.inputs, self.objective, self.autoencoder = inputs, objective, autoencoder
        self.encoders, self.ema, self.slots = encoders, ema, slots
        self.step, self.images, self.y, self.drop = inputs.step, inputs.images, inputs.y, inputs.drop
        self.t, self.noise = inputs.t, inputs.noise
        self.path, self.prediction, self.weighting = objective.path, objective.prediction, objective.weighting
        self.needs = merge_needs([slot.term.needs() for slot in slots])
        self._latents = self._latent_graph = None
        self._encoded: dict = {}
        self._extras: dict = {}
        self._network = None
        self.student: BackboneOutput | None = None
        self.x_t = self.target = None

    # ------------------------------------------------------------ before autocast

    def prepare(self) -> None:
        """The latents and every encoder's outputs (outside autocast, as the encoders manage their own)."""
        with torch.set_grad_enabled(self.needs.latent_gradient):
            moments = self.inputs.moments if self.inputs.moments is not None else self.autoencoder.encode(self.images)
            latents = self.autoencoder.sample(moments, self.inputs.posterior)
        self._latent_graph = latents if self.needs.latent_gradient else None
        self._latents = latents.detach()
        with torch.no_grad():
            self._encode_all()
        self.x_t, self.target = self.objective.inputs(self._latents, self.noise, self.t)

    def _encode_all(self) -> None:
        """Each encoder once, with the union of what is asked of it (global token, attention blocks)."""
        wanted: dict[str, list] = {}
        for need in self.needs.encoders:
            wanted.setdefault(need.encoder.identity(), []).append(need)
        for identity, needs in wanted.items():
            cache = next((n.features for n in needs if n.features != "online"), None)
            if cache is not None:
                self._encoded[identity] = EncoderOutput(self.inputs.cached[cache])
                continue
            encoder = self.encoders[identity]
            glob = any(n.global_token for n in needs)
            blocks = tuple(sorted({b for n in needs for b in n.attention}))
            self._encoded[identity] = encode(encoder, encoder.preprocess(self.images), glob, blocks)

    def latents(self, gradient: bool = False) -> torch.Tensor:
        if not gradient:
            return self._latents
        if self._latent_graph is None:
            raise ContractError("a term asked for the latents with gradient without declaring "
                                "Needs(latent_gradient=True), or the autoencoder does not train")
        return self._latent_graph

    def encoder(self, need) -> EncoderOutput:
        found = self._encoded.get(need.encoder.identity())
        if found is None:
            raise ContractError(f"a term asked for encoder {need.encoder.kind!r} without declaring it in its needs")
        return found

    # ------------------------------------------------------------ inside the network's call

    def run_student(self, network) -> None:
        """The jointly denoised quantities' inputs, then the student's pass with every declared need."""
        self._network = network
        joints, embedded = [], []
        for i, slot in enumerate(s for s in self.slots if s.joint is not None):
            clean = slot.term.clean_extra(self)
            noise = self.inputs.extra_noise[i]
            noisy, target = self.objective.inputs(clean, noise, self.t)
            self._extras[id(slot.term)] = (clean, noise, noisy, target)
            joints.append(slot.joint)
            embedded.append(slot.joint.embed(noisy))
        kwargs = {}
        if self.needs.attention:
            kwargs["attention_blocks"] = list(self.needs.attention)
        if embedded:
            kwargs["extra_tokens"] = torch.cat(embedded, dim=1)
        self.student = network.backbone(self.x_t, self.t, self.y, drop_ids=self.drop,
                                         hidden_depths=list(self.needs.hidden), **kwargs)
        if joints:
            for joint, slot, extra in zip(joints, [s for s in self.slots if s.joint is not None],
                                          split_extra(self.student, joints)):
                self._extras[id(slot.term)] += (joint.head(extra),)

    def extra(self, term) -> ExtraTokens:
        found = self._extras.get(id(term))
        if found is None or len(found) < 5:
            raise ContractError(f"{type(term).__name__} asked for extra tokens it does not declare (extra_tokens())")
        return ExtraTokens(*found)

    def teacher(self, need, t: torch.Tensor | None = None, x0: torch.Tensor | None = None) -> BackboneOutput:
        if need not in self.needs.teachers:
            raise ContractError(f"a term asked for a {need.model} teacher pass without declaring it in its needs")
        t = self.t if t is None else t
        x0 = self.latents(need.input_gradient) if x0 is None else x0
        alpha, sigma, _, _ = self.path.broadcast(t, x0)
        x_t = alpha * x0 + sigma * self.noise
        labels = self.y
        if need.dropped_labels:
            null = self._network.backbone.null_condition(self.y)
            labels = torch.where(self.drop.reshape(-1, *[1] * (self.y.ndim - 1)), null, self.y)
        if need.model == "ema":
            with torch.no_grad():
                return self.ema(lambda net: net.backbone(x_t, t, labels, hidden_depths=list(need.hidden)))
        return frozen_pass(self._network.backbone, x_t, t, labels, list(need.hidden), need.input_gradient)

    def rand(self, term, *shape: int) -> torch.Tensor:
        """[B, *shape] uniform numbers in [0, 1) for `term`, drawn over the global batch and cut to these rows."""
        return self._draw(term, shape, torch.rand, 0)

    def randn(self, term, *shape: int) -> torch.Tensor:
        """[B, *shape] standard normal numbers for `term` (another stream than `rand`'s)."""
        return self._draw(term, shape, torch.randn, 1)

    def _draw(self, term, shape, draw, stream: int) -> torch.Tensor:
        """A generator per (seed, step, the term's place among all the objective's terms, stream): the same
        whichever terms are active, over any number of processes and accumulation steps."""
        index = next(i for i, slot in enumerate(self.objective.slots) if slot.term is term)
        seed = step_seed(self.inputs.seed + 7919 * (index + 1) + 104729 * stream, self.step)
        generator = torch.Generator(self.t.device).manual_seed(seed)
        start, stop = self.inputs.rows
        return draw((self.inputs.global_batch, *shape), generator=generator, device=self.t.device)[start:stop]


def frozen_pass(backbone, x_t, t, labels, depths, input_gradient: bool) -> BackboneOutput:
    """The online weights without gradient to them: differentiable in the input when asked (REPA-E's
    alignment reaching the autoencoder through the frozen network), else a no-grad pass. Labels are
    taken as given (no dropout of its own)."""
    kwargs = {"drop_ids": torch.zeros_like(labels, dtype=torch.bool), "hidden_depths": depths}
    if not input_gradient:
        with torch.no_grad():
            return backbone(x_t, t, labels, **kwargs)
    frozen = {name: p.detach() for name, p in backbone.named_parameters()}
    return torch.func.functional_call(backbone, frozen, (x_t, t, labels), kwargs)


def encode(encoder, x, wants_global: bool, attention_depths: tuple) -> EncoderOutput:
    """An encoder's outputs from as few passes as possible."""
    tokens, global_token, logits = None, None, {}
    if attention_depths:
        tokens, maps = encoder.forward_with_attention(x, attention_depths)
        logits = dict(zip(attention_depths, maps))
    if wants_global:
        tokens, global_token = encoder.forward_with_global(x)
    return EncoderOutput(encoder(x) if tokens is None else tokens, global_token, logits)
