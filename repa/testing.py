"""The contract kit: one check per component kind, for plugin authors and for repa's own tests.

    from repa.testing import check_component
    encoder = check_component("encoder", "my-vit", resolution=256)   # builds it, checks it, returns it

Each `check_<kind>(obj, ...)` runs the object on tiny inputs and asserts what the engine relies
on: shapes and dtypes, finite outputs, gradients where the engine trains through it,
determinism under a seeded generator, and behaviour under bf16 autocast. A violation raises
`ContractError` with one line naming the component and what the contract expects (so
`pytest` shows it as the failure message). `check_component` builds a registered component with
tiny defaults for the factory's keywords (override any of them) and runs its kind's check;
`repa plugins --check` runs it over every installed component.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, Callable

import torch

from repa.errors import ConfigError, ContractError
from repa.plugins import contract
from repa.plugins.contract import _fail, _run, _tensor

ANY = "<object>"


# ============================================================================
# Helpers
# ============================================================================


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _equal(where: str, what: str, a: torch.Tensor, b: torch.Tensor) -> None:
    if not torch.equal(a, b):
        raise _fail(where, f"{what} differs between two identical calls (the engine needs it deterministic "
                           "given its seeds)")


def _bf16(device_type: str = "cpu"):
    return torch.autocast(device_type, dtype=torch.bfloat16)


# ============================================================================
# Training objective
# ============================================================================


def check_path(path: Any, where: str = ANY) -> None:
    """coefficients(t) -> 4 tensors shaped like t, in its dtype; t_from_noise_ratio inverts sigma/alpha."""
    for dtype in (torch.float32, torch.float64):
        t = torch.tensor([0.1, 0.5, 0.9], dtype=dtype)
        coefficients = _run(where, "coefficients(t [3])", lambda: path.coefficients(t))
        if len(coefficients) != 4:
            raise _fail(where, f"coefficients returned {len(coefficients)} values, expected (alpha, sigma, "
                               "d_alpha, d_sigma)")
        for name, c in zip(("alpha", "sigma", "d_alpha", "d_sigma"), coefficients):
            _tensor(where, f"coefficients' {name}", c, (3,))
            if c.dtype != dtype:
                raise _fail(where, f"coefficients' {name} is {c.dtype} for {dtype} t, expected {dtype}")
    t = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    alpha, sigma, _, _ = path.coefficients(t)
    back = _run(where, "t_from_noise_ratio", lambda: path.t_from_noise_ratio(sigma / alpha))
    if not torch.allclose(back.double(), t, atol=1e-4):
        raise _fail(where, f"t_from_noise_ratio(sigma(t)/alpha(t)) gives {back.tolist()} for t {t.tolist()}")


def check_prediction(prediction: Any, path: Any = None, where: str = ANY) -> None:
    """target(x0, eps, t) is shaped like x0, and to_x0_eps recovers (x0, eps) from it (t in (0, 1))."""
    from repa.components.path.interpolants import LinearPath

    path = path or LinearPath()
    g = _generator()
    x0, eps = torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64), torch.randn(3, 2, 4, 4, generator=g,
                                                                                     dtype=torch.float64)
    t = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    target = _tensor(where, "target", _run(where, "target(x0, eps, t, path)",
                                           lambda: prediction.target(x0, eps, t, path)), x0.shape)
    alpha, sigma, _, _ = path.broadcast(t, x0)
    x_t = alpha * x0 + sigma * eps
    x0_back, eps_back = _run(where, "to_x0_eps", lambda: prediction.to_x0_eps(target, x_t, t, path))
    if not (torch.allclose(x0_back, x0, atol=1e-6) and torch.allclose(eps_back, eps, atol=1e-6)):
        raise _fail(where, "to_x0_eps(target(x0, eps, t), x_t, t) does not recover (x0, eps)")
    _tensor(where, "to_velocity", _run(where, "to_velocity", lambda: prediction.to_velocity(target, x_t, t, path)),
            x0.shape)


def check_weighting(weighting: Any, path: Any = None, where: str = ANY) -> None:
    """sample_t: [B] in (0, 1), reproducible from its generator; loss_weight: [B], finite."""
    from repa.components.path.interpolants import LinearPath

    path = path or LinearPath()
    t = _tensor(where, "sample_t(8, generator, path)",
                _run(where, "sample_t", lambda: weighting.sample_t(8, _generator(), path)), (8,))
    if not bool(((t > 0) & (t < 1)).all()):
        raise _fail(where, f"sample_t returned t outside (0, 1): {t.tolist()}")
    _equal(where, "sample_t with the same generator seed", t, weighting.sample_t(8, _generator(), path))
    _tensor(where, "loss_weight(t)", _run(where, "loss_weight", lambda: weighting.loss_weight(t)), (8,))


def check_alignment_loss(loss: Any, tokens: int = 4, dim: int = 8, where: str = ANY) -> None:
    """[B] per sample, finite, deterministic, differentiable in `projected`, float32 under bf16 autocast."""
    contract.probe_alignment_loss(where, loss, tokens, dim)
    g = _generator(1)
    projected = torch.randn(2, tokens, dim, generator=g, requires_grad=True)
    target = torch.randn(2, tokens, dim, generator=g)
    out = loss(projected, target)
    _equal(where, "the loss", out.detach(), loss(projected, target).detach())
    (grad,) = _run(where, "the loss's backward", lambda: torch.autograd.grad(out.sum(), projected))
    if not bool(torch.isfinite(grad).all()) or not bool(grad.abs().sum() > 0):
        raise _fail(where, "the loss has no finite, non-zero gradient in `projected` (the projector would not learn)")
    with _bf16():
        low = _run(where, "the loss under bf16 autocast", lambda: loss(projected.bfloat16(), target.bfloat16()))
    _tensor(where, "the loss under bf16 autocast", low, (2,))
    if low.dtype != torch.float32:
        raise _fail(where, f"the loss under bf16 autocast is {low.dtype}; compute it in float32 (as REPA's losses do)")


def check_attention_loss(loss: Any, heads: int = 2, tokens: int = 4, where: str = ANY) -> None:
    """Logits [B,H,T,T] x2 -> [B], finite, deterministic, differentiable in the student's logits, float32
    under bf16 autocast."""
    g = _generator(1)
    student = torch.randn(2, heads, tokens, tokens, generator=g, requires_grad=True)
    teacher = torch.randn(2, heads, tokens, tokens, generator=g)
    out = _run(where, "the attention loss", lambda: loss(student, teacher))
    _tensor(where, "the attention loss", out, (2,))
    _equal(where, "the attention loss", out.detach(), loss(student, teacher).detach())
    (grad,) = _run(where, "the loss's backward", lambda: torch.autograd.grad(out.sum(), student))
    if not bool(torch.isfinite(grad).all()) or not bool(grad.abs().sum() > 0):
        raise _fail(where, "the loss has no finite, non-zero gradient in the student's logits")
    with _bf16():
        low = _run(where, "the loss under bf16 autocast", lambda: loss(student.bfloat16(), teacher.bfloat16()))
    if low.dtype != torch.float32:
        raise _fail(where, f"the loss under bf16 autocast is {low.dtype}; compute it in float32 (as REPA's losses do)")


def check_target_transform(transform: Any, tokens: int = 4, dim: int = 8, where: str = ANY) -> None:
    """[B,T,D] -> [B,T,D], finite, deterministic."""
    contract.probe_target_transform(where, transform, tokens, dim)
    x = torch.randn(2, tokens, dim, generator=_generator(1))
    _equal(where, "the transform", transform(x), transform(x))


# ============================================================================
# Models
# ============================================================================


def _check_trainable(where: str, module: torch.nn.Module, loss: torch.Tensor) -> None:
    loss.backward()
    grads = [p.grad for p in module.parameters() if p.requires_grad]
    if not grads or all(g is None for g in grads):
        raise _fail(where, "no parameter receives a gradient (it is trained with the backbone)")
    if not all(bool(torch.isfinite(g).all()) for g in grads if g is not None):
        raise _fail(where, "non-finite gradients on a tiny input")
    module.zero_grad(set_to_none=True)


def check_projector(projector: Any, tokens: int = 4, in_dim: int = 16, out_dim: int = 8, where: str = ANY) -> None:
    """[B,T,in_dim] -> [B,T,out_dim]; trainable; deterministic; finite under bf16 autocast."""
    contract.probe_projector(where, projector, tokens, in_dim, out_dim)
    hidden = torch.randn(2, tokens, in_dim, generator=_generator(1))
    projector.train()
    _check_trainable(where, projector, projector(hidden).square().mean())
    _equal(where, "the projection", projector(hidden), projector(hidden))
    with _bf16():
        _tensor(where, "the projection under bf16 autocast", projector(hidden), (2, tokens, out_dim))


def check_joint(joint: Any, hidden_size: int = 16, width: int = 8, tokens: int = 4, where: str = ANY) -> None:
    """clean -> [B,K,width]; embed -> [B,K,hidden_size]; head -> [B,K,width]; embed and head trainable;
    deterministic; finite under bf16 autocast (`repa.interfaces.Joint`)."""
    if not isinstance(joint, torch.nn.Module):
        raise _fail(where, "a joint quantity must be a torch.nn.Module (its parameters train with the backbone)")
    for name in ("tokens", "width"):
        if not isinstance(getattr(joint, name, None), int) or getattr(joint, name) < 1:
            raise _fail(where, f"`{name}` must be a positive int, got {getattr(joint, name, None)!r}")
    if joint.width != width:
        raise _fail(where, f"width is {joint.width} but the factory was given width={width}")
    k, batch = joint.tokens, 2
    encoder_tokens = torch.randn(batch, tokens, width, generator=_generator(1))
    clean = joint.clean(encoder_tokens, torch.randn(batch, width, generator=_generator(2)))
    _tensor(where, "clean(tokens, global token)", clean, (batch, k, width))
    joint.train()
    embedded = joint.embed(clean)
    _tensor(where, "embed(z)", embedded, (batch, k, hidden_size))
    out = joint.head(embedded)
    _tensor(where, "head(hidden)", out, (batch, k, width))
    _check_trainable(where, joint, embedded.square().mean() + joint.head(torch.randn_like(embedded)).sum())
    _equal(where, "embed(z)", joint.embed(clean), joint.embed(clean))
    with _bf16():
        _tensor(where, "head(embed(z)) under bf16 autocast", joint.head(joint.embed(clean)), (batch, k, width))


def check_encoder(encoder: Any, resolution: int, tokens: int | None = None, dim: int | None = None,
                  where: str = ANY) -> None:
    """preprocess + forward -> float32 [B, tokens_for(R), embed_dim]; frozen (no gradients, eval mode even
    after .train()); deterministic; float32 tokens under autocast_dtype = bf16."""
    tokens = encoder.tokens_for(resolution) if tokens is None else tokens
    dim = encoder.embed_dim if dim is None else dim
    if encoder.tokens_for(resolution) != tokens or encoder.embed_dim != dim:
        raise _fail(where, f"the built encoder says {encoder.tokens_for(resolution)} tokens of width "
                           f"{encoder.embed_dim}; its params said {tokens} x {dim}")
    contract.probe_encoder(where, encoder, resolution, tokens, dim)
    encoder.train()
    if encoder.training:
        raise _fail(where, "train() put the encoder in train mode; a frozen encoder stays in eval mode")
    if any(p.requires_grad for p in encoder.parameters()):
        raise _fail(where, "some parameters require gradients; the encoder is frozen")
    images = torch.randint(0, 256, (2, 3, resolution, resolution), generator=_generator(1), dtype=torch.uint8)
    tokens_out = encoder(encoder.preprocess(images))
    if tokens_out.requires_grad:
        raise _fail(where, "forward returned tokens that require gradients; compute them under torch.no_grad()")
    _equal(where, "the tokens", tokens_out, encoder(encoder.preprocess(images)))
    encoder.autocast_dtype = torch.bfloat16
    try:
        low = encoder(encoder.preprocess(images))
    finally:
        encoder.autocast_dtype = None
    _tensor(where, "forward with autocast_dtype = bf16", low, (2, tokens, dim))
    if low.dtype != torch.float32:
        raise _fail(where, f"forward with autocast_dtype = bf16 returned {low.dtype}, expected float32 tokens")


def check_backbone(backbone: Any, input_size: int, in_channels: int, num_classes: int, tokens: int,
                   depths: list[int] | None = None, where: str = ANY) -> None:
    """Output shaped like x and `tokens` hidden states [B,T,hidden_size] at the asked depths; drop_ids
    honoured; trainable; deterministic in eval mode; finite under bf16 autocast."""
    depths = depths or [1]
    contract.probe_backbone(where, backbone, input_size, in_channels, depths, tokens)
    g = _generator(1)
    x = torch.randn(2, in_channels, input_size, input_size, generator=g)
    t = torch.rand(2, generator=g)
    shape = getattr(backbone, "context_shape", None)
    y = torch.randn(2, *shape, generator=g) if shape is not None else torch.randint(0, num_classes, (2,), generator=g)
    backbone.train()
    output = backbone(x, t, y, drop_ids=torch.tensor([True, False]), hidden_depths=depths)
    _check_trainable(where, backbone, output.out.square().mean() + sum(h.square().mean() for h in output.hidden.values()))
    if shape is not None or backbone.has_null_label:  # drop_ids[i] replaces condition i by the null one, and only it
        with torch.no_grad():
            dropped = backbone(x, t, y, drop_ids=torch.tensor([True, False])).out
            null = torch.cat([backbone.null_condition(y[:1]), y[1:]])
            if not torch.allclose(dropped, backbone(x, t, null, drop_ids=torch.tensor([False, False])).out):
                raise _fail(where, "drop_ids is not honoured: a dropped condition must act as null_condition(y) (the "
                                   "null label num_classes, or the null context)")
    backbone.eval()
    with torch.no_grad():
        _equal(where, "the eval-mode output", backbone(x, t, y).out, backbone(x, t, y).out)
        if shape is None and backbone.has_null_label:  # the null label must be accepted when the model says it has one
            backbone(x, t, torch.full_like(y, backbone.num_classes))
        with _bf16():
            _tensor(where, "the output under bf16 autocast", backbone(x, t, y).out.float(), tuple(x.shape))


def check_autoencoder(autoencoder: Any, resolution: int, channels: int, factor: int, where: str = ANY,
                      trains: bool = False) -> None:
    """encode -> moments [B,2C,R/f,R/f]; sample -> [B,C,R/f,R/f]; decode -> [B,3,R,R], all finite. One that
    trains (params' trains()) has trained modules, and its latents carry gradient to them."""
    contract.probe_autoencoder(where, autoencoder, resolution, channels, factor)
    modules = autoencoder.trained_modules()
    if bool(modules) != trains:
        raise _fail(where, f"params say trains() = {trains} but trained_modules() has {len(modules)} module(s)")
    if not trains:
        return
    images = torch.randint(0, 256, (2, 3, resolution, resolution), generator=_generator(1), dtype=torch.uint8)
    noise = torch.randn(2, channels, resolution // factor, resolution // factor, generator=_generator(2))
    latents = autoencoder.sample(autoencoder.encode(images), noise)
    module = next(iter(modules.values()))
    _check_trainable(where, getattr(module, "module", module), latents.square().mean())


# ============================================================================
# Generation
# ============================================================================


def check_sampler(sampler: Any, where: str = ANY) -> None:
    """On the linear path with all data at 0 (velocity = x / t), a sampler must bring x_1 towards 0 (to a
    quarter of its size with 32 steps; an ODE exactly); it calls the velocity `function_evaluations()`
    times; keeps x_1's dtype; draws noise only from `noise` (same noise, same samples)."""
    from repa.components.path.interpolants import LinearPath

    x1 = torch.randn(2, 1, 2, 2, generator=_generator(1), dtype=torch.float64)
    x0 = contract.probe_sampler(where, sampler, x1, LinearPath())
    if x0.abs().mean() > 0.25 * x1.abs().mean():
        raise _fail(where, f"did not integrate towards the data (all zero): mean |x0| {float(x0.abs().mean()):.3g} "
                           f"from mean |x1| {float(x1.abs().mean()):.3g}")
    _equal(where, "the samples", x0, contract.probe_sampler(where, sampler, x1, LinearPath()))


def check_guidance(guidance: Any, where: str = ANY) -> None:
    """active(t) -> bool; guide(...) returns one output per network output, shaped like it, and the
    network's own outputs where it agrees with itself; extra_evaluations(t) -> a number >= 0."""
    contract.probe_guidance(where, guidance)


def check_term(term: Any, facts: Any, where: str = ANY) -> None:
    """needs() -> Needs; modules() -> {name: nn.Module or TrainedModule}; extra_tokens() one of them (a
    Joint of `width`, embed/head shaped right). Its loss is checked on a probe step when a run starts."""
    from repa.interfaces import Joint, Needs, TrainedModule

    needs = _run(where, "needs()", term.needs)
    if not isinstance(needs, Needs):
        raise _fail(where, f"needs() returned {type(needs).__name__}, expected repa.interfaces.Needs")
    modules = _run(where, "modules()", term.modules)
    found = []
    for name, module in dict(modules).items():
        module = module.module if isinstance(module, TrainedModule) else module
        if not isinstance(module, torch.nn.Module):
            raise _fail(where, f"module {name!r} is a {type(module).__name__}, not a torch.nn.Module")
        found.append(module)
    joint = _run(where, "extra_tokens()", term.extra_tokens)
    if joint is None:
        return
    if not any(joint is module for module in found):
        raise _fail(where, "extra_tokens() returned a module that is not one of its modules()")
    if not isinstance(joint, Joint) and not all(hasattr(joint, a) for a in ("tokens", "width", "embed", "head")):
        raise _fail(where, "extra_tokens() must be a repa.interfaces.Joint (tokens, width, embed, head)")
    z = torch.randn(2, joint.tokens, joint.width, generator=_generator(1))
    embedded = _tensor(where, "extra_tokens().embed(z)", joint.embed(z), (2, joint.tokens, facts.hidden_size))
    _tensor(where, "extra_tokens().head(hidden)", joint.head(embedded), (2, joint.tokens, joint.width))


# ============================================================================
# Data, metrics, trackers, optimizers
# ============================================================================


def check_dataset(dataset: Any, resolution: int, where: str = ANY) -> None:
    """Items hold image uint8 [3,R,R] and an int label y in 0..num_classes-1 (moments optional)."""
    contract.probe_dataset(where, dataset, resolution)


def check_metric(metric: Any, images, reference: str | None = None, names: tuple[str, ...] = (),
                 where: str = ANY) -> None:
    """features -> dict; reference -> dict; score -> {name: finite float}, names as declared. The
    samples' labels are given as class-conditional sampling gives them (class i % 10), and to a metric that
    takes prompts, a digits caption naming that class with every attribute word (e.g. "a thick slanted
    large zero"; `repa.engine.generate.evaluation.metric_score`)."""
    import math

    import numpy as np

    from repa.components.dataset.captions import caption
    from repa.engine.generate.evaluation import metric_score

    labels = np.arange(len(images)) % 10
    prompts = [caption(int(d), np.array([i % 2, i // 2 % 2, i // 4 % 2], dtype=bool), (True, True, True))
               for i, d in enumerate(labels)]
    if not isinstance(metric.feature_key, str):
        raise _fail(where, f"feature_key is {type(metric.feature_key).__name__}, expected a string")
    features = _run(where, "features(images)", lambda: metric.features(images))
    ref = _run(where, "reference(source)", lambda: metric.reference(reference))
    scores = _run(where, "score(features, reference, labels)",
                  lambda: metric_score(metric, features, ref, labels, prompts))
    if not isinstance(scores, dict) or not all(isinstance(v, float) and math.isfinite(v) for v in scores.values()):
        raise _fail(where, f"score returned {scores!r}; expected {{name: finite float}}")
    if names and set(scores) != set(names):
        raise _fail(where, f"score reported {sorted(scores)}, but the metric declares {sorted(names)} "
                           "(MetricParams.outputs)")


def check_tracker(tracker: Any, where: str = ANY) -> None:
    import numpy as np

    _run(where, "log", lambda: tracker.log(1, {"loss": 0.5}))
    _run(where, "log_images", lambda: tracker.log_images(1, {"samples": np.zeros((8, 8, 3), dtype=np.uint8)}))
    _run(where, "finish", tracker.finish)


def check_analysis(analysis: Any, where: str = ANY) -> None:
    """measure() on a tiny representation (12 images, 4x4 token grid, 3 classes), with a reference
    and foreground masks when it declares it needs them -> {name: float} (NaN allowed: undefined);
    the same inputs give the same scores."""
    import math

    from repa.interfaces import ANALYSIS_NEEDS, AnalysisInputs, Representation

    needs = getattr(analysis, "needs", frozenset())
    unknown = set(needs) - set(ANALYSIS_NEEDS)
    if unknown:
        raise _fail(where, f"needs {sorted(unknown)}, which repa analyze does not provide ({', '.join(ANALYSIS_NEEDS)})")
    g = _generator(2)
    tokens = torch.randn(12, 16, 8, generator=g)
    rep = Representation("tiny", tokens.mean(1), tokens, (4, 4))
    other = torch.randn(12, 16, 6, generator=g)
    reference = Representation("reference", other.mean(1), other, (4, 4)) if "reference" in needs else None
    foreground = (torch.arange(16) % 4 < 2).repeat(12, 1) if "foreground" in needs else None
    inputs = AnalysisInputs(rep, torch.arange(12) % 3, 8, reference, foreground)
    scores = _run(where, "measure(inputs)", lambda: analysis.measure(inputs))
    if not isinstance(scores, dict) or not scores or not all(
            isinstance(k, str) and isinstance(v, float) for k, v in scores.items()):
        raise _fail(where, f"measure returned {scores!r}; expected {{score name: float}}")
    again = analysis.measure(inputs)
    if any(not (math.isnan(v) and math.isnan(again.get(k, 0.0))) and again.get(k) != v for k, v in scores.items()):
        raise _fail(where, f"measure is not deterministic: {scores} then {again}")


def check_optimizer(optimizer: Any, parameter: torch.nn.Parameter, where: str = ANY) -> None:
    """step() moves the parameter along its gradient; state_dict() loads back."""
    before = parameter.detach().clone()
    parameter.grad = torch.ones_like(parameter)
    _run(where, "step", optimizer.step)
    if torch.equal(before, parameter.detach()):
        raise _fail(where, "step() did not change a parameter that has a gradient")
    _run(where, "zero_grad", lambda: optimizer.zero_grad(set_to_none=True))
    _run(where, "load_state_dict(state_dict())", lambda: optimizer.load_state_dict(optimizer.state_dict()))
    if "lr" not in optimizer.param_groups[0]:
        raise _fail(where, "param_groups[0] has no 'lr' (the trainer logs it)")


# ============================================================================
# Building a registered component and checking it
# ============================================================================


# One kit per kind (`KindSpec.kit` names it): the factory's tiny keywords and the check of the built object.


class TinyTextConditioning:
    """What a backbone conditioned on contexts is built with in the kit: contexts [3, 8], a fixed null one."""

    context_shape = (3, 8)

    def null_context(self):
        return torch.linspace(-1, 1, 24).reshape(3, 8)


def kit_backbone(entry, params, kwargs):
    side = params.input_multiple() * 2
    context = {"input_size": side, "in_channels": 4, "num_classes": 10, "label_dropout": 0.1, "null_label": True,
               "grad_checkpointing": False, **kwargs}
    if getattr(params, "takes_context", lambda: False)():
        context.setdefault("conditioning", TinyTextConditioning())
    depths = sorted({1, params.num_blocks()})
    tokens = params.num_tokens(context["input_size"])
    return context, lambda obj: check_backbone(obj, context["input_size"], context["in_channels"],
                                               context["num_classes"], tokens, depths, entry.label)


def kit_projector(entry, params, kwargs):
    context = {"in_dim": 16, "out_dim": 8, "projector_dim": 32, "grid": (2, 2), **kwargs}
    tokens = context["grid"][0] * context["grid"][1]
    return context, lambda obj: check_projector(obj, tokens, context["in_dim"], context["out_dim"], entry.label)


def kit_encoder(entry, params, kwargs):
    context = {"resolution": 256, **kwargs}
    res = context["resolution"]
    return context, lambda obj: check_encoder(obj, res, params.tokens_for(res), params.embed_dim(), entry.label)


def kit_autoencoder(entry, params, kwargs):
    res = kwargs.pop("resolution", 32)
    return kwargs, lambda obj: check_autoencoder(obj, res, params.latent_channels(), params.downsample_factor(),
                                                 entry.label, trains=params.trains())


def kit_dataset(entry, params, kwargs):
    return {"split": "train", **kwargs}, lambda obj: check_dataset(obj, params.resolution, entry.label)


def kit_sampler(entry, params, kwargs):
    return {"steps": 32, **kwargs}, lambda obj: check_sampler(obj, entry.label)


def kit_guidance(entry, params, kwargs):
    return {"scale": 2.0, "interval": (0.0, 0.7), **kwargs}, lambda obj: check_guidance(obj, entry.label)


def kit_tracker(entry, params, kwargs):
    context = {"run_dir": kwargs.pop("run_dir", None) or tempfile.mkdtemp(prefix="repa-check-"), "config": {}, **kwargs}
    return context, lambda obj: check_tracker(obj, entry.label)


def kit_optimizer(entry, params, kwargs):
    parameter = torch.nn.Parameter(torch.zeros(3))
    return {"parameters": [parameter], **kwargs}, lambda obj: check_optimizer(obj, parameter, entry.label)


def kit_metric(entry, params, kwargs):
    images = kwargs.pop("images", None)
    if images is None:
        images = torch.randint(0, 256, (16, 32, 32, 3), generator=_generator(1), dtype=torch.uint8).numpy()
    reference = kwargs.pop("reference", None)
    names = contract.metric_outputs(entry.name, params)
    return kwargs, lambda obj: check_metric(obj, images, reference, names, entry.label)


def kit_analysis(entry, params, kwargs):
    return kwargs, lambda obj: check_analysis(obj, entry.label)


def kit_joint(entry, params, kwargs):
    context = {"hidden_size": 16, "width": 8, **kwargs}
    return context, lambda obj: check_joint(obj, context["hidden_size"], context["width"], where=entry.label)


def kit_term(entry, params, kwargs):
    from repa.interfaces import TermFacts

    facts = kwargs.pop("facts", None) or TermFacts(hidden_size=16, num_blocks=2, tokens=4, grid=(2, 2),
                                                   input_shape=(4, 4, 4), resolution=32, num_classes=10)
    return {"facts": facts, **kwargs}, lambda obj: check_term(obj, facts, entry.label)


class _TinyCaptions:
    """The val split of a captioned dataset in the conditioning kit: prompts, classes, no stored empty context."""

    def prompts(self, seed, indices, mode):
        return [("a seven" if int(i) % 2 else "a thin two", 7 if int(i) % 2 else 2, f"prompt {i}") for i in indices]

    def empty_context(self):
        return None


def kit_conditioning(entry, params, kwargs):
    context = {"num_classes": 10, "dataset": lambda split: _TinyCaptions(), **kwargs}
    return context, lambda obj: check_conditioning(obj, getattr(params, "context_shape", lambda: None)(), entry.label)


def kit_text_encoder(entry, params, kwargs):
    return kwargs, lambda obj: check_text_encoder(obj, params.context_shape(), entry.label)


def check_conditioning(conditioning: Any, shape, where: str = ANY) -> None:
    """Sample conditions are a function of (seed, i): the same rows for the same indices, whatever the batch;
    y shaped [N] int64 (labels) or [N, L, D] float (contexts, `shape`); collate of the values items give
    returns the same; the null context has the contexts' shape."""
    from repa.interfaces import Conditions

    found = conditioning.conditions(0, [0, 1, 2], "balanced")
    if not isinstance(found, Conditions) or len(found.captions) != 3:
        raise _fail(where, "conditions(seed, indices, mode) must return Conditions with one caption per index")
    expected = (3,) if shape is None else (3, *shape)
    if tuple(found.y.shape) != expected:
        raise _fail(where, f"conditions(...).y is {list(found.y.shape)}, expected {list(expected)}")
    _equal(where, "conditions of index 2 alone and in a batch", conditioning.conditions(0, [2], "balanced").y[0],
           found.y[2])
    if shape is not None:
        null = conditioning.null_context()
        if tuple(null.shape) != tuple(shape):
            raise _fail(where, f"null_context() is {list(null.shape)}, expected {list(shape)}")
        _equal(where, "collate of cached contexts", conditioning.collate(found.y), found.y.float())


def check_text_encoder(encoder: Any, shape, where: str = ANY) -> None:
    """encode: [N, L, D] float32, deterministic, different for different captions."""
    first = encoder.encode(["a seven", "a thin two"])
    if first.dtype != torch.float32 or tuple(first.shape) != (2, *shape):
        raise _fail(where, f"encode returned {first.dtype} {list(first.shape)}, expected float32 [2, {shape[0]}, {shape[1]}]")
    _equal(where, "encode of the same captions", encoder.encode(["a seven", "a thin two"]), first)
    if torch.equal(first[0], first[1]):
        raise _fail(where, "encode gave the same context for two different captions")


def _simple(check):
    return lambda entry, params, kwargs: (kwargs, lambda obj: check(obj, where=entry.label))


kit_path, kit_prediction, kit_weighting = _simple(check_path), _simple(check_prediction), _simple(check_weighting)
kit_alignment_loss, kit_target_transform = _simple(check_alignment_loss), _simple(check_target_transform)
kit_attention_loss = _simple(check_attention_loss)


def _tiny(kind: str, entry, params, kwargs: dict) -> tuple[dict, Callable[[Any], None]]:
    """(factory keywords, the check to run on the built object) for a kind, from its declared kit."""
    from repa.plugins.kinds import KINDS_BY_NAME

    return globals()[f"kit_{KINDS_BY_NAME[kind].kit}"](entry, params, kwargs)


def check_component(kind: str, name: str, params: dict | Any | None = None, components=None, **kwargs: Any) -> Any:
    """Build registered component `name` of `kind` (params: a dict of its TOML keys, a params model,
    or None for the defaults) with tiny inputs for the factory's keywords (any of them can be given
    here), check it against its kind's contract and return it. Raises ContractError on a violation,
    and a RepaError (missing weights, missing data) when it cannot be built on this machine."""
    from repa.plugins import get_components

    entry = (components or get_components()).get(kind, name)
    if params is None or isinstance(params, dict):
        params = _params(entry, params or {})
    context, check = _tiny(kind, entry, params, dict(kwargs))
    with _offline():
        built = entry.build(params, **context)
        _run(entry.label, "the contract kit's check", lambda: check(built))
    return built


def _params(entry, values: dict):
    from pydantic import ValidationError

    from repa.config.loader import resolve_components

    values = dict(values)
    issues = resolve_components(entry.params, values)  # the components its params name (a term's encoder)
    if issues:
        raise ConfigError([f"{entry.label}: {issue}" for issue in issues])
    try:
        return entry.params.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].lower()}" for e in exc.errors())
        raise ConfigError([f"{entry.label}: needs parameters to be built ({problems})"]) from None


# ============================================================================
# A term through the trainer's own objective: for transcription tests of terms
# ============================================================================


class _GivenLatents:
    """Stands in for a frozen autoencoder when a test gives the latents: sample(moments, noise) = moments."""

    def encode(self, images):
        raise ContractError("give `latents` (or build the harness with the experiment's autoencoder)")

    def sample(self, moments, noise):
        return moments

    def trained_modules(self):
        return {}


class _GivenEncoder:
    """An encoder whose outputs a test gives (tokens, global token, attention by block)."""

    def __init__(self, output):
        self.output = output

    def preprocess(self, images):
        return images

    def __call__(self, x):
        return self.output.tokens

    def forward_with_global(self, x):
        return self.output.tokens, self.output.global_token

    def forward_with_attention(self, x, depths):
        return self.output.tokens, [self.output.attention[d] for d in depths]


class ObjectiveHarness:
    """An experiment's trained network, terms and objective, built as `repa run` builds them, and the
    training loss on given inputs through the trainer's own step context and objective:

        harness = ObjectiveHarness(load_experiment("my.toml"), num_classes=10)
        parts = harness.loss(latents=x0, noise=eps, t=t, y=y, encoders={"dinov2-vit-b": EncoderOutput(z)})
        parts.total.backward()   # every trained parameter's gradient, as one training step gives it

    `encoders` gives the outputs of the encoders the terms name (by kind, or by `Component.identity()` where
    two entries name one kind); others are built and run.
    With an autoencoder that trains, give `images` (uint8) and `posterior` noise instead of latents."""

    def __init__(self, config, num_classes: int = 10, seed: int = 0):
        from repa.engine.build import build_objective_parts, build_training
        from repa.engine.train.ema import make_ema
        from repa.engine.train.objective import Objective

        self.config = config
        trains = config.autoencoder.params.trains()
        torch.manual_seed(seed + 1)  # as the trainer: a trainable autoencoder's seeded start, then the network's
        self.autoencoder = config.autoencoder.build() if trains else _GivenLatents()
        torch.manual_seed(seed)
        self.network, self.slots = build_training(config, num_classes, autoencoder=self.autoencoder if trains else None)
        self.objective = Objective(*build_objective_parts(config), self.slots)
        self.ema = make_ema(self.network)
        self.context = None

    def term(self, name: str):
        """The built term whose loss is logged under `name` (e.g. "align_loss_0", "joint_loss")."""
        return next(slot.term for slot in self.slots if slot.name == name)

    def loss(self, *, t, noise, y, latents=None, images=None, posterior=None, drop=None, encoders=None,
             extra_noise=(), step: int = 0, check: bool = True):
        """The step's LossParts (total, denoising [B], each term's loss by its logged name)."""
        from repa.engine.train.context import StepInputs, TrainingContext

        batch = t.shape[0]
        drop = torch.zeros(batch, dtype=torch.bool) if drop is None else drop
        resolution = self.config.data.params.resolution
        if images is None:
            images = torch.zeros(batch, 3, resolution, resolution, dtype=torch.uint8)
        posterior = torch.zeros_like(noise) if posterior is None else posterior
        given = {}
        for slot in self.slots:
            for need in slot.term.needs().encoders:
                given_outputs = encoders or {}
                output = given_outputs.get(need.encoder.identity(), given_outputs.get(need.encoder.kind))
                if output is not None:
                    given[need.encoder.identity()] = _GivenEncoder(output)
                elif need.encoder.identity() not in given:
                    given[need.encoder.identity()] = need.encoder.build(resolution=resolution)
        inputs = StepInputs(step, images, y, drop, t, noise, posterior, list(extra_noise), latents, {}, (0, batch),
                            batch, self.config.experiment.seed)
        self.context = ctx = TrainingContext(inputs, self.objective, self.autoencoder, given, self.ema,
                                             self.objective.computed(step))
        ctx.prepare()
        return self.network(lambda network: self.objective(network, ctx, check=check))


OFFLINE = {"WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}


@contextlib.contextmanager
def _offline():
    """Checks never send or download anything (Weights & Biases disabled, Hugging Face hub offline)."""
    previous = {key: os.environ.get(key) for key in OFFLINE}
    os.environ.update(OFFLINE)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


__all__ = [
    "ContractError", "ObjectiveHarness", "check_alignment_loss", "check_analysis", "check_autoencoder", "check_backbone",
    "check_component", "check_dataset", "check_encoder", "check_guidance", "check_metric", "check_optimizer", "check_path",
    "check_prediction", "check_projector", "check_sampler", "check_target_transform", "check_term", "check_tracker",
    "check_weighting",
]
