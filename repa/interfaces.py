"""The contracts between the engine and the components, one per kind.

Time runs from t=0 (data) to t=1 (noise): x_t = alpha(t) x_0 + sigma(t) eps (SiT/REPA
convention). Shapes: B batch, C channels, H/W spatial, T tokens, D feature dims.

Two things per kind live here:
- the runtime contract (a typing.Protocol or a small ABC) that the built object satisfies;
- where the engine needs facts about a component *before* building it (validation time,
  no torch import), the base class of its params model declaring those facts.

This module imports only pydantic; torch appears in annotations only.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

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


class EncoderParams(Params):
    """Static facts about a frozen vision encoder."""

    @abc.abstractmethod
    def embed_dim(self) -> int:
        """Width D of the returned tokens."""

    @abc.abstractmethod
    def tokens_for(self, resolution: int) -> int:
        """Tokens the encoder returns for images of this resolution.

        Raises ValueError with a readable reason when the resolution is unsupported."""


class AutoencoderParams(Params):
    """Static facts about the image <-> model-input map."""

    def downsample_factor(self) -> int:
        return 1

    def latent_channels(self) -> int:
        return 3


class DatasetParams(Params):
    """Every dataset declares the image resolution it yields."""

    resolution: int = 256


class OptimizerParams(Params):
    lr: float = 1e-4
    max_grad_norm: float = 1.0


# ============================================================================
# Training objective: path, prediction target, weighting, alignment loss
# ============================================================================


class Path(abc.ABC):
    """Interpolant x_t = alpha(t) x_0 + sigma(t) eps, with t=0 data and t=1 noise."""

    @abc.abstractmethod
    def coefficients(self, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return (alpha, sigma, d_alpha/dt, d_sigma/dt), each shaped like t."""

    @abc.abstractmethod
    def t_from_noise_ratio(self, ratio: torch.Tensor) -> torch.Tensor:
        """Inverse of t -> sigma(t)/alpha(t): the t at which noise/signal equals `ratio`.

        Lets an EDM-style weighting (which samples sigma_EDM = sigma/alpha) work on any path."""

    def broadcast(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """coefficients(t[B]) reshaped to broadcast against `like` [B, ...], in its dtype."""
        shape = (-1,) + (1,) * (like.ndim - 1)
        return tuple(c.reshape(shape).to(like.dtype) for c in self.coefficients(t.to(like.dtype)))


class Prediction(abc.ABC):
    """What the network outputs, and how to read velocity / x0 / eps from it."""

    # Times at which the output determines the velocity. eps-prediction cannot give x0 at t=1
    # (alpha = 0) nor x0-prediction eps at t=0 (sigma = 0); samplers evaluate the model at t
    # clamped into this range, as SiT's transport does with its [eps, 1 - eps] interval.
    time_range: tuple[float, float] = (0.0, 1.0)

    @abc.abstractmethod
    def target(self, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor, path: Path) -> torch.Tensor:
        """The regression target for clean data x0 and noise eps at time t[B]."""

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
    """The training distribution of t and the per-sample loss weight."""

    @abc.abstractmethod
    def sample_t(self, batch: int, generator: torch.Generator, path: Path, device=None) -> torch.Tensor:
        """Draw t[batch] in (0, 1) using only `generator` (reproducible)."""

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight of the denoising loss; REPA uses 1."""
        return t.new_ones(t.shape)


class AlignmentLoss(abc.ABC):
    """(projected[B,T,D], target[B,T,D]) -> per-sample loss[B], computed in float32."""

    @abc.abstractmethod
    def __call__(self, projected: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...


# ============================================================================
# Models: backbone, encoder, autoencoder
# ============================================================================


@runtime_checkable
class Backbone(Protocol):
    """forward(x_t[B,C,H,W], t[B], y[B]) -> (out[B,C,H,W], feats: list[B,T,D_enc]).

    `feats[i]` is alignment entry i's projector applied to the hidden state after its block.
    Label dropout for classifier-free guidance happens inside in train mode; the null
    label is `num_classes`."""

    num_classes: int

    def __call__(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list]: ...


@runtime_checkable
class Encoder(Protocol):
    """A frozen, eval-mode vision encoder: uint8 images -> patch tokens.

    preprocess(images uint8 [B,3,H,W]) -> model input; forward(input) -> tokens[B,T,D] in float32,
    computed without gradients and under autocast to `autocast_dtype` (set by the engine; None =
    full precision). `weights_file` names the loaded weights (recorded by feature caches)."""

    embed_dim: int
    autocast_dtype: Any
    weights_file: str

    def preprocess(self, images: torch.Tensor) -> torch.Tensor: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def tokens_for(self, resolution: int) -> int: ...


@runtime_checkable
class Autoencoder(Protocol):
    """Maps images to the backbone's input space and back.

    encode(images uint8 [B,3,H,W]) -> moments [B,2C,h,w] (mean and std of the posterior);
    sample(moments, noise [B,C,h,w]) -> model input z [B,C,h,w] (scaled and shifted);
    decode(z) -> images float in [-1, 1]."""

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def sample(self, moments: torch.Tensor, noise: torch.Tensor) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


# ============================================================================
# Generation: guidance and samplers
# ============================================================================


class Guidance(abc.ABC):
    """How conditional and unconditional outputs combine, and at which t."""

    @abc.abstractmethod
    def active(self, t: float) -> bool:
        """Whether the unconditional pass is needed at time t."""

    @abc.abstractmethod
    def combine(self, cond: torch.Tensor, uncond: torch.Tensor, t: float) -> torch.Tensor: ...


VelocityFn = Callable[["torch.Tensor", "torch.Tensor"], "torch.Tensor"]
"""(x_t[B,...], t[B]) -> velocity[B,...]; labels and guidance are already bound."""


class Sampler(abc.ABC):
    """Integrates from noise x_1 (t=1) to data x_0 (t=0)."""

    @abc.abstractmethod
    def sample(self, velocity: VelocityFn, x1: torch.Tensor, path: Path, noise: "NoiseSource") -> torch.Tensor: ...


class NoiseSource(Protocol):
    """Gaussian noise drawn per sample, so sample i depends only on its own seed."""

    def randn_like(self, x: torch.Tensor) -> torch.Tensor: ...


# ============================================================================
# Data, metrics, trackers
# ============================================================================


class Dataset(Protocol):
    """Map-style dataset. Item i -> dict(image=uint8[3,H,W], x=model input or moments, y=int)."""

    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, i: int) -> dict[str, Any]: ...


class Metric(Protocol):
    """Scores samples (uint8 [N,H,W,3]) against a reference, in three parts so that metrics with
    the same `feature_key` (FID, sFID, IS, precision, recall: one Inception pass) share the
    feature pass over the samples and over the reference."""

    feature_key: str

    def features(self, images: Any) -> dict[str, Any]:
        """uint8 [N,H,W,3] -> named feature arrays."""

    def reference(self, source: str | None) -> dict[str, Any]:
        """The reference's features/statistics (`eval.reference`: a file or folder; None if unused)."""

    def score(self, features: dict[str, Any], reference: dict[str, Any], labels: Any = None) -> dict[str, float]:
        """-> {metric name: value}; `labels` are the samples' classes when the .npz has them."""


class Tracker(Protocol):
    """Where a run's scalars and images go."""

    def log(self, step: int, scalars: dict[str, float]) -> None: ...

    def log_images(self, step: int, images: dict[str, Any]) -> None: ...

    def finish(self) -> None: ...


class Optimizer(Protocol):
    """A torch.optim.Optimizer built from (parameters, params)."""

    def step(self) -> None: ...

    def zero_grad(self, set_to_none: bool = True) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

