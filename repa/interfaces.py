"""The contracts between the engine and the components: exactly what the engine calls, one per kind.

Time runs from t=0 (data) to t=1 (noise): x_t = alpha(t) x_0 + sigma(t) eps (SiT/REPA
convention). Shapes: B batch, C channels, H/W spatial, T tokens, D feature dims.

Per kind, two things live here:
- the base class of the built object. Abstract methods are required; every other method is an
  optional capability with the default written here, which the engine calls without probing.
  Objects that satisfy the required part without subclassing (plugins written before contract
  1.0) are given these defaults when built (`repa.plugins.contract.conform`);
- where the engine needs facts about a component *before* building it (validation, no torch
  import), the base class of its params model declaring those facts.

`repa.plugins.contract.CONTRACTS` adds, per kind, the keyword arguments the factory receives and
when the engine calls it; `repa.testing` checks a component against all of it on tiny inputs.
This module imports only pydantic; torch appears in annotations only.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol, Sequence

from pydantic import BaseModel, ConfigDict, Field, field_validator

if TYPE_CHECKING:
    import torch


# ============================================================================
# Params: the validated TOML keys of one component
# ============================================================================


class Params(BaseModel):
    """Base of every component's params model. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())


class BackboneParams(Params):
    """What validation needs to know about a backbone without building it."""

    @abc.abstractmethod
    def num_blocks(self) -> int:
        """Number of transformer blocks; alignment depths must lie in 1..num_blocks()."""

    @abc.abstractmethod
    def num_tokens(self, input_size: int) -> int:
        """Tokens per sample for a square input of side `input_size` (latent pixels)."""

    def input_multiple(self) -> int:
        """The input side must be a multiple of this (the patch size)."""
        return 1

    def label_rows(self, state: Mapping[str, Any]) -> int | None:
        """Rows of the label embedding in a checkpoint's state dict (classes, plus one with the null
        label), so a checkpoint loads whatever the experiment's label dropout; None: not known."""
        return None

    def upgrade_state(self, state: Mapping[str, Any], alignment_depths: Sequence[int]) -> dict:
        """An older checkpoint format of this backbone -> today's keys (default: unchanged)."""
        return dict(state)

    def takes_extra_tokens(self) -> bool:
        """Whether `Backbone.forward` accepts `extra_tokens` (a jointly denoised quantity, [[joint]])."""
        return False

    def gives_attention(self) -> bool:
        """Whether `Backbone.forward` returns attention logits for `attention_blocks` (HASTE's alignment)."""
        return False

    def takes_context(self) -> bool:
        """Whether the backbone is conditioned on contexts [B,L,D] (text tokens, `text` conditioning)
        instead of class labels [B]."""
        return False

    def token_grid(self, input_size: int) -> tuple[int, int]:
        """(rows, columns) of the token grid; projectors that use the grid (iREPA's conv) get it."""
        side = int(round(self.num_tokens(input_size) ** 0.5))
        return side, side


class EncoderParams(Params):
    """Static facts about a frozen vision encoder."""

    @abc.abstractmethod
    def embed_dim(self) -> int:
        """Width D of the returned tokens."""

    @abc.abstractmethod
    def tokens_for(self, resolution: int) -> int:
        """Tokens the encoder returns for images of this resolution.

        Raises ValueError with a readable reason when the resolution is unsupported."""

    def has_global_token(self) -> bool:
        """Whether the encoder gives a global token (`Encoder.forward_with_global`), e.g. a class token."""
        return False

    def gives_attention(self) -> bool:
        """Whether the encoder gives its attention logits (`Encoder.forward_with_attention`)."""
        return False

    def num_blocks(self) -> int | None:
        """Its number of blocks (attention alignment checks block indices against it); None: unknown."""
        return None


class AutoencoderParams(Params):
    """Static facts about the image <-> model-input map."""

    def downsample_factor(self) -> int:
        return 1

    def latent_channels(self) -> int:
        return 3

    def trains(self) -> bool:
        """Whether the built autoencoder has trained modules (`Autoencoder.trained_modules`)."""
        return False


class DatasetParams(Params):
    """Every dataset declares the image resolution it yields."""

    resolution: int = 256

    def known_classes(self) -> int | None:
        """The class count when the params fix it (a checkpoint's label table is read with it);
        None: only the data knows."""
        return None

    def location(self) -> str | None:
        """Where the data lives, for messages (e.g. its folder); None: nowhere on disk."""
        return None


class ConditioningParams(Params):
    """Base of a conditioning's params ([conditioning] in the experiment file)."""

    def context_shape(self) -> tuple[int, int] | None:
        """(tokens L, width D) of one context when the network is conditioned on contexts (text); None:
        on class labels. Validation checks it against the backbone (`BackboneParams.takes_context`)."""
        return None


class TextEncoderParams(Params):
    """Static facts about a frozen text encoder."""

    @abc.abstractmethod
    def context_shape(self) -> tuple[int, int]:
        """(tokens L, width D) of the context it returns for one caption."""


class OptimizerParams(Params):
    lr: float = 1e-4
    max_grad_norm: float = 1.0


class JointParams(Params):
    """Base of a jointly denoised quantity's params ([[joint]] in the experiment file)."""

    coeff: float = Field(1.0, ge=0, description="weight of its denoising loss next to the image's")
    source: int = Field(0, ge=0, description="the [[alignment]] entry (0-based) whose encoder gives its clean value")

    def needs_global_token(self) -> bool:
        """Whether `Joint.clean` reads the encoder's global token (then the encoder must have one)."""
        return True


class AttentionParams(Params):
    """Base of an attention alignment's params ([[attention]]; HASTE's holistic alignment): the
    backbone's attention logits at `blocks` are aligned with the encoder's at `encoder_blocks`, pair by pair."""

    coeff: float = Field(0.5, ge=0, description="weight of the attention alignment loss")
    source: int = Field(0, ge=0, description="the [[alignment]] entry (0-based) whose encoder is the teacher")
    blocks: list[int] = Field(description="the backbone's blocks (1-based) whose attention is aligned")
    encoder_blocks: list[int] = Field(description="the encoder's blocks (1-based), one per entry of `blocks`")
    stop_after: int | None = Field(None, ge=0, description="switch it off after this many steps; none = never")


class MetricParams(Params):
    """Optional base of a metric's params: which names its scores are reported under.

    Ablation tables check at validation that every metric they tabulate is produced; a metric
    whose params do not derive from this class reports under its registered name."""

    def outputs(self, registered_name: str) -> tuple[str, ...]:
        return (registered_name,)


# ============================================================================
# Training objective: path, prediction target, weighting, alignment loss, target transform
# ============================================================================


class Path(abc.ABC):
    """Interpolant x_t = alpha(t) x_0 + sigma(t) eps, with t=0 data and t=1 noise.
    Called every training step and every sampler step."""

    @abc.abstractmethod
    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return (alpha, sigma, d_alpha/dt, d_sigma/dt), each shaped like t and in its dtype."""

    @abc.abstractmethod
    def t_from_noise_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        """Inverse of t -> sigma(t)/alpha(t): the t at which noise/signal equals `ratio`.

        Lets an EDM-style weighting (which samples sigma_EDM = sigma/alpha) work on any path."""

    def broadcast(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """coefficients(t[B]) reshaped to broadcast against `like` [B, ...], in its dtype."""
        shape = (-1,) + (1,) * (like.ndim - 1)
        return tuple(c.reshape(shape).to(like.dtype) for c in self.coefficients(t.to(like.dtype)))


class Prediction(abc.ABC):
    """What the network outputs, and how to read velocity / x0 / eps from it.
    `target` is called every training step, `to_velocity` every sampler evaluation."""

    # Times at which the output determines the velocity. eps-prediction cannot give x0 at t=1
    # (alpha = 0) nor x0-prediction eps at t=0 (sigma = 0); samplers evaluate the model at t
    # clamped into this range, as SiT's transport does with its [eps, 1 - eps] interval.
    time_range: tuple[float, float] = (0.0, 1.0)

    @abc.abstractmethod
    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, path: Path) -> torch.Tensor:
        """The regression target [B,C,H,W] for clean data x0 and noise eps at time t[B]."""

    @abc.abstractmethod
    def to_x0_eps(
        self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, path: Path
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recover (x0, eps) from the network output at (x_t, t)."""

    def to_velocity(self, out, x_t, t, path: Path):
        """dx_t/dt = d_alpha x0 + d_sigma eps."""
        x0, eps = self.to_x0_eps(out, x_t, t, path)
        _, _, d_alpha, d_sigma = path.broadcast(t, x_t)
        return d_alpha * x0 + d_sigma * eps


class Weighting(abc.ABC):
    """The training distribution of t and the per-sample loss weight (every training step)."""

    @abc.abstractmethod
    def sample_t(self, batch: int, generator: torch.Generator, path: Path, device=None) -> torch.Tensor:
        """Draw t[batch] in (0, 1), float32, using only `generator` (reproducible)."""

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight [B] of the denoising loss; REPA uses 1."""
        return t.new_ones(t.shape)


class AlignmentLoss(abc.ABC):
    """(projected[B,T,D], target[B,T,D]) -> per-sample loss[B], float32, differentiable in
    `projected` (the target carries no gradient). Called every training step, under autocast."""

    @abc.abstractmethod
    def __call__(self, projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


class AttentionLoss(abc.ABC):
    """(student[B,H,T,T], teacher[B,H,T,T]) pre-softmax attention logits of one block pair -> per-sample
    loss[B], float32, differentiable in `student` (the teacher carries no gradient). The engine passes
    the student's first H heads, H = the teacher's head count. Called every training step ([[attention]])."""

    @abc.abstractmethod
    def __call__(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor: ...


class TargetTransform(abc.ABC):
    """(tokens[B,T,D]) -> tokens[B,T,D]: applied to the encoder's tokens (online or cached) before
    the alignment loss, every training step, without gradients (e.g. iREPA's spatial normalisation).
    It returns a new tensor and leaves its input as it was: entries with one encoder share its tokens."""

    @abc.abstractmethod
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor: ...


class Joint(abc.ABC):
    """A quantity denoised jointly with the image ([[joint]]; REG's class token, Wu et al. 2025): K tokens
    of width D with their own small modules. Subclass it together with torch.nn.Module: its parameters
    train with the backbone, are averaged by the EMA and stored in checkpoints under `joint.`.

    Training: the clean value z0 = clean(encoder tokens, global token) [B,K,D] of the entry's encoder is
    noised by the path with the image's t and its own noise, enters the backbone as `embed(z_t)`
    (K extra tokens), and `head(...)` of the backbone's extra output is regressed on the prediction
    target of (z0, noise) with weight `params.coeff` (every training step). Sampling: z starts from
    noise at t=1 and is integrated by the sampler together with the image, guidance included.

    Attributes: `tokens` (K), `width` (D), `aligned`: whether the extra tokens' hidden states join the
    alignment of the entry (its projector then sees K+T tokens, its target is cat(z0, tokens))."""

    tokens: int
    width: int
    aligned: bool = False

    @abc.abstractmethod
    def clean(self, tokens: torch.Tensor, global_token: torch.Tensor | None) -> torch.Tensor:
        """The encoder's tokens [B,T,D] and global token [B,D] (None when params do not need it) -> z0 [B,K,D]."""

    @abc.abstractmethod
    def embed(self, z: torch.Tensor) -> torch.Tensor:
        """z_t [B,K,D] -> extra tokens [B,K,hidden_size] for the backbone."""

    @abc.abstractmethod
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """The backbone's extra output [B,K,hidden_size] -> the prediction for z [B,K,D]."""


# ============================================================================
# Training terms: the loss is a list of them ([[term]]; [[alignment]], [[joint]], [[attention]])
# ============================================================================


class TermParams(Params):
    """Base of a term's params: the weight of its loss in the total and when it stops."""

    coeff: float = Field(1.0, ge=0, description="weight of this term's loss in the total")
    stop_after: int | None = Field(None, ge=0, description="switch the term off after this many steps; none = never")


@dataclass(frozen=True)
class EncoderNeed:
    """A frozen encoder's outputs on the clean images of the step. `encoder` is the validated choice
    (a params field typed `Annotated[Component, Kind("encoder")]`); one choice is built and run once
    per step for every term that names it. `features`: "online" or a feature cache folder (then only
    the tokens exist). `global_token`, `attention` (the encoder's blocks, 1-based): what else to return."""

    encoder: Any
    features: str = "online"
    global_token: bool = False
    attention: tuple = ()


@dataclass(frozen=True)
class TeacherNeed:
    """A pass of the network without gradient to its weights: `model` "ema" (the averaged weights) or
    "online" (the weights being trained). Inputs are built like the student's (same latents and noise;
    the student's labels, dropped ones null unless `dropped_labels` is False), at the t the term gives. `input_gradient`: the pass is differentiable in
    its input (so a loss on it reaches a trainable autoencoder through the frozen network, REPA-E)."""

    model: str = "ema"
    hidden: tuple = ()
    input_gradient: bool = False
    dropped_labels: bool = True  # labels as the student sees them (dropped ones null); False: every label kept


@dataclass(frozen=True)
class Needs:
    """What a term reads from the step context; each need is computed once per step and shared.

    hidden: the student's hidden states after these blocks (1-based); attention: its attention logits at
    these blocks; encoders / teachers: as above; latent_gradient: the latents with gradient (only a
    trainable autoencoder has one)."""

    hidden: tuple = ()
    attention: tuple = ()
    encoders: tuple = ()
    teachers: tuple = ()
    latent_gradient: bool = False


@dataclass(frozen=True)
class EncoderOutput:
    """An encoder's outputs on the step's clean images: tokens [B,T,D] float32, and (when asked) the
    global token [B,D] and {block: attention logits [B,H,T,T]}."""

    tokens: torch.Tensor
    global_token: torch.Tensor | None = None
    attention: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ExtraTokens:
    """A term's jointly denoised quantity in this step: clean z0, its noise, z_t (the path at the
    image's t), the regression target (the prediction kind's, as the image's) and the backbone's
    prediction for it (the term's head on the extra tokens' output), each [B,K,D]."""

    clean: torch.Tensor
    noise: torch.Tensor
    noisy: torch.Tensor
    target: torch.Tensor
    prediction: torch.Tensor


@dataclass(frozen=True)
class TrainedModule:
    """A trained module and how it trains: its optimizer parameter group (None: the [optim] values),
    whether the EMA averages it (False: the EMA copy follows the weights, e.g. a jointly trained
    autoencoder sampled as trained) and, when set, a gradient-norm clip of its own."""

    module: Any
    lr: float | None = None
    weight_decay: float | None = None
    betas: tuple | None = None
    ema: bool = True
    max_grad_norm: float | None = None


@dataclass(frozen=True)
class TermFacts:
    """What a term's factory may build from: the backbone's width, blocks, tokens per image and their
    grid, the model input's shape (C, H, W), the image resolution, the class count, the term's index
    among the experiment's terms of its kind, the autoencoder, and the terms built before it (the
    [[alignment]] entries' first: a term may reuse one's encoder, depth and projector, as REPA-E does)."""

    hidden_size: int
    num_blocks: int
    tokens: int
    grid: tuple
    input_shape: tuple
    resolution: int
    num_classes: int
    index: int = 0
    autoencoder: Any = None
    other_terms: tuple = ()


class StepContext(Protocol):
    """What a term sees in one training step (implemented by the engine; shapes for a micro-batch of B).

    step (int), t [B], noise [B,C,H,W], y [B] (the labels the student sees), drop [B] bool (labels
    dropped for guidance), images uint8 [B,3,R,R]; path, prediction, weighting (the components);
    x_t and target: the student's input and regression target; student: its BackboneOutput (hidden
    states and attention as declared); autoencoder: the run's autoencoder."""

    step: int
    t: torch.Tensor
    noise: torch.Tensor
    y: torch.Tensor
    drop: torch.Tensor
    images: torch.Tensor
    path: Path
    prediction: Prediction
    weighting: Weighting
    x_t: torch.Tensor
    target: torch.Tensor
    student: BackboneOutput
    autoencoder: Any

    def latents(self, gradient: bool = False) -> torch.Tensor:
        """The clean model input x0 [B,C,H,W]; gradient=True (declared in needs): attached to the
        trainable autoencoder's graph. The student's input is built from the detached latents, so the
        denoising loss never reaches the autoencoder."""

    def encoder(self, need: EncoderNeed) -> EncoderOutput: ...

    def teacher(self, need: TeacherNeed, t: torch.Tensor | None = None, x0: torch.Tensor | None = None) -> BackboneOutput:
        """The teacher's pass at t (default: the student's t) on x_t = path(x0, the step's noise, t)
        (default x0: the latents, with gradient when need.input_gradient)."""

    def extra(self, term: "Term") -> ExtraTokens:
        """The step's jointly denoised quantity of `term` (one that declares `extra_tokens()`)."""

    def rand(self, term: "Term", *shape: int) -> torch.Tensor:
        """Uniform [0,1) numbers [B, *shape] drawn for `term` from (seed, step, its place among the terms):
        reproducible, the same over any number of processes and accumulation steps, independent of other
        draws. One step's calls with one shape return the same numbers: draw all a step needs at once."""

    def randn(self, term: "Term", *shape: int) -> torch.Tensor:
        """Standard normal numbers [B, *shape] for `term`, as `rand` (a stream of their own)."""


class Term(abc.ABC):
    """One loss term of training ([[term]] kind = "..."): REPA's alignment, iREPA's, REG's jointly
    denoised class token, HASTE's attention alignment and the follow-ups are each one.

    Built once per run by factory(params, *, facts); `needs()`, `modules()` and `extra_tokens()` are read
    when it is built. Every step the engine computes the needs of the active terms once, in a shared
    `StepContext`, and calls `loss(ctx)`: per-sample loss [B] float32, or (loss [B], {name: scalar
    tensor}) for more values to log. The total is the sum of coeff x loss.mean() over active terms
    (TermParams.coeff, stop_after); an inactive term that owns modules still runs with weight 0 (every
    trained parameter gets a gradient, as DDP needs), one without modules is not computed at all."""

    def needs(self) -> Needs:
        """What `loss` reads from the context (anything else is refused, in one line, before training)."""
        return Needs()

    def modules(self) -> Mapping[str, Any]:
        """The modules it trains, by name: torch.nn.Module or TrainedModule. They join the trained network
        (its optimizer, EMA and checkpoint under the term's section); the term calls them as it likes."""
        return {}

    def extra_tokens(self) -> Joint | None:
        """A quantity denoised jointly with the image: one of its modules, a `Joint` (K tokens of width D,
        embed, head). Its clean value is `clean_extra(ctx)`; the engine noises it with the image's t,
        feeds embed(z_t) to the backbone as K extra tokens, reads head(...) back, and every sampler
        integrates it with the image. None: no extra tokens."""
        return None

    def clean_extra(self, ctx: StepContext) -> torch.Tensor:
        """The clean value [B,K,D] of the extra tokens, before the student's pass (with `extra_tokens()`)."""
        raise NotImplementedError(f"{type(self).__name__} declares no extra tokens")

    @abc.abstractmethod
    def loss(self, ctx: StepContext) -> Any:
        """-> per-sample loss [B], or (loss [B], {name: scalar}) (see the class docstring)."""


# ============================================================================
# Models: backbone, projector, encoder, autoencoder (torch.nn.Module subclasses)
# ============================================================================


@dataclass
class BackboneOutput:
    """What a backbone's forward returns.

    out [B,C,H,W]: the prediction for the image. hidden {block: [B,T,width]}: the image tokens'
    hidden states after each requested block (1-based). With K extra tokens (`extra_tokens` given):
    extra_hidden {block: [B,K,width]} their hidden states, and extra [B,K,width] the extra tokens after
    the final layer's normalisation and conditioning, before its output projection (what a term's head
    reads). attention {block: [B,H,K+T,K+T]}: pre-softmax attention logits (q k^T / sqrt(d)) of the
    requested blocks, extra tokens first."""

    out: torch.Tensor
    hidden: dict = field(default_factory=dict)
    extra_hidden: dict = field(default_factory=dict)
    extra: torch.Tensor | None = None
    attention: dict = field(default_factory=dict)
    extra_tokens: int = 0

    def image_attention(self, block: int) -> torch.Tensor:
        """The attention logits of `block` between the image tokens only [B,H,T,T]."""
        k = self.extra_tokens
        return self.attention[block][:, :, k:, k:]


class Backbone(abc.ABC):
    """A denoising network; subclass it together with torch.nn.Module: `class B(nn.Module, Backbone)`.

    Built once per run (train, sample, evaluate); `forward` runs every step. It does not own
    REPA's projectors or any loss: it returns what the training terms ask for (hidden states,
    attention logits) and takes the extra tokens they add.

    Attributes: `num_classes` (labels 0..num_classes-1; the null label, for classifier-free
    guidance, is `num_classes`) and `hidden_size` (width of the hidden states)."""

    num_classes: int
    hidden_size: int

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
                drop_ids: torch.Tensor | None = None, hidden_depths: Sequence[int] = (),
                attention_blocks: Sequence[int] = (), extra_tokens: torch.Tensor | None = None) -> BackboneOutput:
        """x_t[B,C,H,W], t[B] float, y[B] int64 -> BackboneOutput.

        hidden_depths: blocks (1-based) whose output hidden states to return. drop_ids[B] bool (train
        mode only): labels to replace by the null label; None keeps them all (the engine always passes it).

        Optional capabilities, declared by the params: `attention_blocks` (`gives_attention()`): blocks
        whose attention logits to return; `extra_tokens` [B,K,hidden_size] (`takes_extra_tokens()`): put
        before the image tokens, without positional embedding, through every block (jointly denoised
        quantities: REG's class token). The engine passes them only to backbones that declare them."""

    @property
    def has_null_label(self) -> bool:
        """Whether the label embedding has the null row (needed for guidance)."""
        return True

    # (L, D) when the backbone is conditioned on contexts (y [B,L,D] float: text tokens); None: class labels.
    context_shape: tuple | None = None

    def null_condition(self, y: torch.Tensor) -> torch.Tensor:
        """The unconditional rows for conditions y: what a dropped label becomes and what guidance's
        unconditional pass sees. Default: the null label `num_classes`; a backbone conditioned on
        contexts returns its null context (the empty caption's) per row."""
        import torch

        return torch.full_like(y, self.num_classes)

    def check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> None:
        """Raise ValueError with a readable reason for inputs this backbone cannot take (called
        once per sampling run, before the first step). Default: accept everything."""

    def shard_units(self) -> list:
        """The repeated units (e.g. the blocks): sharded one by one under train.distributed = "fsdp" and
        compiled one by one under train.compile (regional compilation); default: none (the whole
        model is one unit)."""
        return []


class Projector(abc.ABC):
    """h_phi of REPA Sec. 3.2: hidden[B,T,in_dim] -> projected[B,T,out_dim], trained with the
    backbone; one per [[alignment]] entry, built with the backbone, called every training step.
    Subclass it together with torch.nn.Module."""

    @abc.abstractmethod
    def forward(self, hidden: torch.Tensor) -> torch.Tensor: ...


class Encoder(abc.ABC):
    """A frozen, eval-mode vision encoder: uint8 images -> patch tokens.

    Built once per run; `preprocess` and `forward` run every training step (online features) or
    once per image (`repa preprocess features`). Required: `embed_dim` (int), `preprocess`,
    `forward` (through torch.nn.Module's call), `tokens_for`. `autocast_dtype` is set by the engine
    before the first call (None = full precision) and must be honoured inside `forward`."""

    embed_dim: int
    autocast_dtype: Any = None
    weights_file: str = ""  # the loaded weights' path, recorded by feature caches ("" = none/unknown)

    @abc.abstractmethod
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,R,R] in [0,255] (R = the resolution it was built for) -> the network's input."""

    @abc.abstractmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed input -> tokens[B, tokens_for(R), embed_dim], float32, without gradients."""

    @abc.abstractmethod
    def tokens_for(self, resolution: int) -> int: ...

    def forward_with_global(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Optional capability (params' `has_global_token()`): preprocessed input -> (the tokens `forward`
        returns, a global token [B, embed_dim] float32: the class token, or what the encoder's own head
        reads), in one pass. Used by [[joint]] quantities (REG's class token)."""
        raise NotImplementedError(f"{type(self).__name__} has no global token")

    def forward_with_attention(self, x: torch.Tensor, depths: Sequence[int]) -> tuple[torch.Tensor, list]:
        """Optional capability (params' `gives_attention()`): preprocessed input -> (the tokens `forward`
        returns, the pre-softmax attention logits [B,H,T,T] of blocks `depths` (1-based) between the
        returned tokens only, float32), in one pass. Used by [[attention]] (HASTE)."""
        raise NotImplementedError(f"{type(self).__name__} gives no attention logits")

    def preprocessing(self) -> dict | None:
        """What `preprocess` depends on (e.g. mean, std, resize), recorded by feature caches so that a
        cache made with another preprocessing is refused; None: nothing to record."""
        return None


class Autoencoder(abc.ABC):
    """Maps images to the backbone's input space and back (built once per run).

    encode(images uint8 [B,3,H,W]) -> moments [B,2C,h,w] (mean and std of the posterior);
    sample(moments, noise [B,C,h,w]) -> model input z [B,C,h,w] (scaled and shifted), every
    training step; decode(z) -> images float in [-1, 1], for sample grids and `repa sample`."""

    @abc.abstractmethod
    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def sample(self, moments: torch.Tensor, noise: torch.Tensor) -> torch.Tensor: ...

    @abc.abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...

    def to(self, device) -> "Autoencoder":
        """Move to `device` (called once after building); returns self. Default: nothing to move."""
        return self

    def trained_modules(self) -> Mapping[str, Any]:
        """The modules that train with the backbone (params' `trains()`), by name: torch.nn.Module or
        TrainedModule. They join the trained network under `autoencoder.<name>` (optimizer group, EMA
        policy, checkpoint), so sampling, `repa evaluate` and `repa analyze` decode with the trained
        weights of the checkpoint. Then `encode` and `sample` must be differentiable (the latents keep
        their graph when a term needs it). Default: none, a frozen autoencoder."""
        return {}


# ============================================================================
# Conditioning: class labels or text
# ============================================================================


@dataclass(frozen=True)
class Conditions:
    """What samples are drawn for: y (labels [N] int64, or contexts [N,L,D] float32), the class each
    asks for when known (labels [N] int64, or None: scores that need classes are skipped) and one
    caption per sample for grids ("class 3", or the prompt)."""

    y: torch.Tensor
    labels: torch.Tensor | None
    captions: tuple


class TextEncoder(abc.ABC):
    """A frozen text encoder: captions -> contexts [B,L,D] float32, every token's last hidden state
    (the official T2I data: CLIP ViT-L/14's text tower, [77, 768] per caption). Built once per run by
    the text conditioning; `encode` runs on every caption not read from a cache."""

    tokens: int
    width: int

    @abc.abstractmethod
    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """N captions -> [N, tokens, width] float32 on the encoder's device, without gradients."""

    def to(self, device) -> "TextEncoder":
        """Move to `device` (`repa preprocess coco` encodes captions on the GPU); returns self. Default:
        nothing to move."""
        return self


class Conditioning(abc.ABC):
    """What the network is conditioned on ([conditioning] kind): class labels (the default, "class") or
    contexts ("text"). Built once per run by factory(params, *, num_classes, dataset), `dataset(split)`
    building the experiment's dataset on demand (prompts for evaluation come from its "val" split).

    Datasets give each item's `y`: an int label, a caption (str), or a cached context [L,D]; `collate`
    turns one batch's values into the network's y (every training step)."""

    context_shape: tuple | None = None  # (L, D) of a context; None: class labels

    def __deepcopy__(self, memo):
        return self  # a service, shared by the network's copies (the EMA)

    @abc.abstractmethod
    def collate(self, values: Any) -> torch.Tensor:
        """A batch's `y` values (a tensor, or a list of captions / contexts) -> y [B] int64 or [B,L,D] float32."""

    @abc.abstractmethod
    def conditions(self, seed: int, indices: Sequence[int], mode: str) -> Conditions:
        """What sample number i of `indices` is drawn for (evaluation, grids), a function of (seed, i) only;
        mode is [sample] labels: "random" or "balanced" (over classes, where classes exist)."""

    def null_context(self) -> torch.Tensor | None:
        """[L,D] float32: the unconditional context (the empty caption's), for label dropout and guidance;
        None for class labels (the backbone's null label)."""
        return None

    def prompts(self, prompts: Sequence[str]) -> Conditions:
        """Conditions for these prompts (`repa sample --prompt`); class labels take the class number."""
        raise ValueError(f"{type(self).__name__} cannot condition on prompts")


# ============================================================================
# Generation: guidance and samplers
# ============================================================================


class GuidanceParams(Params):
    """Optional base of a guidance's params: its scale and interval. Left unset they are the [sample]
    section's cfg_scale and guidance_interval (the keys experiment files have always used)."""

    scale: float | None = Field(None, ge=0, description="guidance scale (1 = none); unset: sample.cfg_scale")
    interval: tuple[float, float] | None = Field(None, description="[low, high] on t; unset: sample.guidance_interval")

    @field_validator("interval")
    @classmethod
    def _ordered(cls, interval):
        if interval is not None and not 0 <= interval[0] <= interval[1] <= 1:
            raise ValueError(f"must satisfy 0 <= low <= high <= 1, got [{interval[0]}, {interval[1]}]")
        return interval

    def uses_null_label(self) -> bool:
        """Whether it evaluates the model with the null label (then the model must have been trained
        with label dropout); False for guidance by another model."""
        return True


NetworkFn = Callable[["torch.Tensor", "torch.Tensor", "torch.Tensor"], Any]
"""network(x [N,...], t [N], y [N]) -> the network's outputs for those rows: a list of tensors, the
image's first (then each jointly denoised quantity's), each [N,...] in the state's dtype.
`network.of(other)` is the same for another network (one `load_network` gave) on the same states."""


class Guidance(abc.ABC):
    """How the network's outputs are combined into the guided prediction, and at which t (every
    sampler evaluation). Built per sampling run by factory(params, *, scale, interval, load_network):
    scale and interval are resolved from the params or [sample]; load_network(path) builds another
    trained network (a run or checkpoint folder, or a weights file of this experiment's architecture)
    in eval mode on the sampling device, for guidance by a second model (autoguidance: evaluate it in
    `guide` with `network.of(other)`)."""

    @abc.abstractmethod
    def active(self, t: float) -> bool:
        """Whether guidance acts at the sampler step starting at time t (else: the conditional output)."""

    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, t: float) -> torch.Tensor:
        """The guided output from the conditional and the unconditional one (classifier-free guidance)."""
        raise NotImplementedError(f"{type(self).__name__} does not combine cond/uncond outputs")

    def guide(self, network: NetworkFn, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, null: torch.Tensor,
              step_t: float) -> list:
        """The guided outputs at (x, t) for labels y (null: the null labels where `active(step_t)`, else
        None). Default: classifier-free, one batched pass of cond and uncond rows, then `combine` each."""
        import torch

        if not self.active(step_t):
            return network(x, t, y)
        outs = network(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        return [self.combine(*out.chunk(2), step_t) for out in outs]

    def extra_evaluations(self, t: float) -> float:
        """Network evaluations beyond the conditional one at a step starting at t, in units of the
        network's (cost estimates, `repa bench sample`). Default: one unconditional pass where active."""
        return 1.0 if self.active(t) else 0.0


VelocityFn = Callable[["torch.Tensor", "torch.Tensor", float], "torch.Tensor"]
"""velocity(x[B,...], t[B], step_t) -> dx/dt [B,...] at model time t. `step_t` is the time at
which the current sampler step began: guidance is switched on or off per step by it, Heun's
corrector included, as in the official samplers.py (sihyun-yu/REPA @ 67f7145). Labels and
guidance are already bound."""


class NoiseSource(Protocol):
    """Gaussian noise drawn per sample, so sample i depends only on its own seed."""

    def randn_like(self, x: torch.Tensor) -> torch.Tensor: ...


class Sampler(abc.ABC):
    """Integrates from noise x_1 (t=1) to data x_0 (t=0); built per sampling run."""

    steps: int

    @abc.abstractmethod
    def sample(self, velocity: VelocityFn, x1: torch.Tensor, path: Path, noise: NoiseSource) -> torch.Tensor:
        """x1 [B,...] -> x0 [B,...] in x1's dtype; stochastic samplers draw from `noise` only."""

    def function_evaluations(self) -> int:
        """Calls of `velocity` per sample over the whole trajectory (cost estimates); default one
        per step."""
        return self.steps


# ============================================================================
# Data, metrics, trackers, optimizers
# ============================================================================


class Dataset(abc.ABC):
    """Map-style dataset, built once per run. Item i -> dict with:
    `image` uint8 [3,R,R] (R = params.resolution), `y` int (0..num_classes-1; under text conditioning a
    caption str or a cached context [L,D], `repa.interfaces.Conditioning`), and optionally
    `moments` [2C,h,w] (the autoencoder's posterior, when stored with the data: then the trainer
    does not encode the image) and `label` int, the image's class where `y` is not it (captioned
    data that knows it: `repa analyze`'s linear probes read it)."""

    num_classes: int

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    def prompts(self, seed: int, indices: Sequence[int], mode: str) -> list[tuple[Any, int | None, str]]:
        """Captioned data (text conditioning): what evaluation sample i is drawn for, a function of (seed,
        i): (its y as items give it: a caption or a cached context [L,D], the class it asks for or None,
        the caption shown on grids). Called on the "val" split. Default: the data has no captions."""
        raise NotImplementedError(f"{type(self).__name__} has no captions to draw samples for")

    def empty_context(self) -> torch.Tensor | None:
        """Captioned data with cached contexts: the empty caption's context [L,D] stored with them (the
        official COCO layout's empty_context.npy), the null context of guidance and label dropout; None:
        the text encoder encodes "" instead."""
        return None

    def foreground(self, image: torch.Tensor) -> torch.Tensor | None:
        """bool [R,R]: the pixels of the object in `image` (uint8 [3,R,R]), for spatial analyses that
        contrast object and background (iREPA's SRSS, `repa analyze`); None: not known."""
        return None


class Metric(abc.ABC):
    """Scores samples (uint8 [N,H,W,3]) against a reference, in three parts so that metrics with
    the same `feature_key` (FID, sFID, IS, precision, recall: one Inception pass) share the
    feature pass over the samples and over the reference. Built per evaluation."""

    feature_key: str

    @abc.abstractmethod
    def features(self, images: Any) -> dict[str, Any]:
        """uint8 [N,H,W,3] -> named feature arrays."""

    @abc.abstractmethod
    def reference(self, source: str | None) -> dict[str, Any]:
        """The reference's features/statistics (`eval.reference`: a file or folder; None if unused)."""

    @abc.abstractmethod
    def score(self, features: dict[str, Any], reference: dict[str, Any], labels: Any = None) -> dict[str, float]:
        """-> {metric name: value}; `labels` are the samples' classes when the .npz has them. A metric that
        scores text declares a `prompts` parameter too: a text model's samples' prompts (list[str]), None
        where the samples have none."""


class Tracker(abc.ABC):
    """Where a run's scalars and images go (main process only; `log` every train.log_every steps)."""

    @abc.abstractmethod
    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    @abc.abstractmethod
    def log_images(self, step: int, images: dict[str, Any]) -> None:
        """images: name -> uint8 [H,W,3] array."""

    def finish(self) -> None:
        """Flush and close; called once when training ends (also on errors)."""


class Optimizer(Protocol):
    """A torch.optim.Optimizer built from (params, parameters=...); `param_groups[0]["lr"]` is logged."""

    param_groups: list

    def step(self) -> None: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# ============================================================================
# Analysis: measurements of representations (`repa analyze`)
# ============================================================================


@dataclass(frozen=True)
class Representation:
    """One representation of the analysed images: a block's hidden states at one t, or an encoder's tokens.

    pooled [N, D]: the tokens' mean, for every analysed image (N up to 10,000s);
    tokens [n, T, D]: every token of the first n images only (memory: n << N), laid out row-major
    on `grid` (rows, columns), rows * columns = T."""

    name: str
    pooled: torch.Tensor
    tokens: torch.Tensor
    grid: tuple[int, int]


@dataclass(frozen=True)
class AnalysisInputs:
    """What an analysis may read. `labels` [N] int64 are the images' classes (-1: the data gives none,
    captions without classes); the first `fit` images
    are the fitting split of methods that fit (a linear probe), the rest its held-out split (the
    images come in a seeded random order). `reference` is the encoder compared with (None when the
    analysis does not declare it needs one); `foreground` [n, T] bool marks the object's tokens of
    the first n images on `representation.grid` (None when the dataset does not know them)."""

    representation: Representation
    labels: torch.Tensor
    fit: int
    reference: Representation | None = None
    foreground: torch.Tensor | None = None


ANALYSIS_NEEDS = ("reference", "foreground")
"""What an analysis can declare it needs beyond the representation and the labels."""


class Analysis(abc.ABC):
    """A measurement of a representation for `repa analyze`: CKNNA against an encoder, a linear
    probe, spatial-structure scores. Built once per `repa analyze`; `measure` runs once per
    representation (every block x t x checkpoint, and every encoder).

    `needs` declares the optional inputs it reads (a subset of ANALYSIS_NEEDS): with "reference" it
    is measured against every encoder analysed, and only there; with "foreground" it is skipped
    (with a note) where the data has no foreground masks. Scores are higher-is-better or say so
    in the registered description."""

    needs: frozenset = frozenset()

    @abc.abstractmethod
    def measure(self, inputs: AnalysisInputs) -> dict[str, float]:
        """-> {score name: value}; NaN where the score is undefined for these inputs (said in the table)."""
