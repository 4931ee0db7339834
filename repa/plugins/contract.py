"""The plugin contract, checked: at registration (the factory's signature, the params model) and
at build (the built object against its kind's base class in `repa.interfaces`), before the engine
writes anything. Every violation is one `ContractError` line naming distribution, kind, name, what
is wrong and what the contract expects.

The contract of a kind is read from its base class: abstract methods and annotated attributes
without a value are required; every other public member is an optional capability whose default
is the base class's. An object that satisfies the required part without subclassing (a plugin
written before contract 1.0) gets those defaults attached when it is built, so the engine calls
them without probing.
"""

from __future__ import annotations

import inspect
import types
from typing import Any, Callable

from repa import interfaces
from repa.plugins.kinds import KINDS_BY_NAME
from repa.errors import ContractError, RepaError

BUILTIN_DISTRIBUTION = "repa"


CONTRACTS = KINDS_BY_NAME  # kind -> its declaration (repa.plugins.kinds.KindSpec)


def label(kind: str, name: str, distribution: str) -> str:
    """How every contract message starts: `repa-foo: encoder 'my-vit'`."""
    return f"{distribution}: {kind.replace('_', ' ')} {name!r}"


# ============================================================================
# Registration: factory signature and params model
# ============================================================================


def check_registration(kind: str, name: str, factory: Callable, params: type, distribution: str) -> None:
    contract = CONTRACTS[kind]
    where = label(kind, name, distribution)
    if not (isinstance(params, type) and issubclass(params, contract.params_base)):
        raise ContractError(f"{where}: params must subclass {contract.params_base.__module__}."
                            f"{contract.params_base.__qualname__}, got {params!r}")
    if not callable(factory):
        raise ContractError(f"{where}: the factory {factory!r} is not callable; the contract calls "
                            f"{contract.signature()}")
    problem = _signature_problem(factory, contract.keywords)
    if problem:
        raise ContractError(f"{where}: factory {_describe(factory)} {problem}; the {kind.replace('_', ' ')} "
                            f"contract calls {contract.signature()}")


def _describe(factory: Callable) -> str:
    try:
        return f"{getattr(factory, '__name__', type(factory).__name__)}{inspect.signature(factory)}"
    except (TypeError, ValueError):
        return repr(factory)


def _signature_problem(factory: Callable, keywords: tuple[str, ...]) -> str | None:
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        return None  # a builtin without introspectable signature: trust it
    parameters = list(signature.parameters.values())
    kinds = inspect.Parameter
    if not any(p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD, kinds.VAR_POSITIONAL)
               for p in parameters):
        return "takes no positional argument for the params"
    first, rest = parameters[0], parameters[1:]
    if first.kind == kinds.VAR_POSITIONAL:
        rest = parameters
    var_keyword = any(p.kind == kinds.VAR_KEYWORD for p in rest)
    by_name = {p.name: p for p in rest if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)}
    refused = [k for k in keywords if k not in by_name and not var_keyword]
    if refused:
        return f"does not accept the keyword{'s' if len(refused) > 1 else ''} {', '.join(refused)}"
    extra = [p.name for p in rest if p.name not in keywords and p.default is kinds.empty
             and p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
    if extra:
        return f"requires {', '.join(extra)}, which the engine never passes (give {'them' if len(extra) > 1 else 'it'} a default)"
    return None


def _accepts(factory: Callable, keyword: str) -> bool:
    """Whether the factory takes `keyword` (an optional keyword of its kind is passed only then)."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == keyword or p.kind == inspect.Parameter.VAR_KEYWORD for p in parameters)


def metric_outputs(name: str, params: interfaces.Params) -> tuple[str, ...]:
    """The names a metric reports under: `MetricParams.outputs`, else its registered name."""
    return params.outputs(name) if isinstance(params, interfaces.MetricParams) else (name,)


# ============================================================================
# Build: the object against its kind's base class
# ============================================================================


def required_members(kind: str) -> list[str]:
    """Abstract methods and value-less annotated attributes of the base, plus the explicit list."""
    contract = CONTRACTS[kind]
    names = list(contract.required)
    if contract.base is not None:
        names += sorted(getattr(contract.base, "__abstractmethods__", ()))
        for klass in reversed(contract.base.__mro__):
            for attr in getattr(klass, "__annotations__", {}):
                if not attr.startswith("_") and attr not in klass.__dict__ and attr not in names:
                    names.append(attr)
    return names


def optional_members(kind: str) -> dict[str, Any]:
    """name -> the base class's default, for every public non-abstract member."""
    base = CONTRACTS[kind].base
    if base is None:
        return {}
    abstract = getattr(base, "__abstractmethods__", frozenset())
    members = {}
    for klass in reversed(base.__mro__[:-1]):  # without `object`
        if klass.__module__ != interfaces.__name__:
            continue  # abc.ABC and typing helpers
        for name, value in vars(klass).items():
            if not name.startswith("_") and name not in abstract:
                members[name] = value
    return members


def _has(obj: Any, name: str, module: bool) -> bool:
    if name == "forward" and module:
        import torch.nn as nn

        return type(obj).forward is not nn.Module.forward
    if name == "__call__":
        return callable(obj)
    return hasattr(obj, name)


def conform(kind: str, name: str, distribution: str, obj: Any) -> Any:
    """Check a built object; attach the base class's defaults to one that does not subclass it."""
    contract = CONTRACTS[kind]
    where = label(kind, name, distribution)
    if obj is None:
        raise ContractError(f"{where}: the factory returned None; it must return the built component")
    if contract.module:
        import torch.nn as nn

        if not isinstance(obj, nn.Module):
            raise ContractError(f"{where}: built a {type(obj).__name__}, not a torch.nn.Module; the contract "
                                f"expects `class {type(obj).__name__}(nn.Module, repa.interfaces."
                                f"{contract.base.__name__})`")
    missing = [m for m in required_members(kind) if not _has(obj, m, contract.module)]
    if missing:
        expected = f"repa.interfaces.{contract.base.__name__}" if contract.base else "a torch.optim.Optimizer"
        raise ContractError(f"{where}: the built {type(obj).__name__} has no {', '.join(missing)}; the contract "
                            f"({expected}) requires {', '.join(required_members(kind))}")
    if contract.base is not None and not isinstance(obj, contract.base):
        _attach_defaults(kind, obj)
    return obj


def _attach_defaults(kind: str, obj: Any) -> None:
    for member, default in optional_members(kind).items():
        if hasattr(obj, member):
            continue
        if isinstance(default, property):
            value = default.fget(obj)
        elif inspect.isfunction(default):
            value = types.MethodType(default, obj)
        else:
            value = default
        setattr(obj, member, value)


def build(kind: str, name: str, distribution: str, factory: Callable, params: Any, **kwargs: Any) -> Any:
    """factory(params, **kwargs), checked. A third-party factory that raises anything but a RepaError
    (whose message is already for the user) is reported in one line naming its distribution."""
    kwargs = {k: v for k, v in kwargs.items() if k not in CONTRACTS[kind].optional_keywords or _accepts(factory, k)}
    try:
        obj = factory(params, **kwargs)
    except RepaError:
        raise
    except Exception as exc:
        if distribution == BUILTIN_DISTRIBUTION:
            raise
        raise ContractError(f"{label(kind, name, distribution)}: building it raised {type(exc).__name__}: "
                            f"{_first_line(exc)} (rerun with --traceback to see where)") from exc
    return conform(kind, name, distribution, obj)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


# ============================================================================
# Probes: the object on tiny inputs, before the first step (the engine) and in repa.testing
# ============================================================================


def _fail(where: str, problem: str) -> ContractError:
    return ContractError(f"{where}: {problem}")


def _shape(x: Any) -> str:
    return str(list(x.shape)) if hasattr(x, "shape") else type(x).__name__


def _run(where: str, what: str, fn: Callable[[], Any]) -> Any:
    """Call a component; a raise inside it becomes one line naming the component."""
    try:
        return fn()
    except RepaError:
        raise
    except Exception as exc:
        raise _fail(where, f"{what} raised {type(exc).__name__}: {_first_line(exc)} "
                           "(rerun with --traceback to see where)") from exc


def _tensor(where: str, what: str, value: Any, shape: tuple[int, ...], floating: bool = True):
    import torch

    if not isinstance(value, torch.Tensor):
        raise _fail(where, f"{what} returned {type(value).__name__}, expected a tensor {list(shape)}")
    if tuple(value.shape) != tuple(shape):
        raise _fail(where, f"{what} returned shape {_shape(value)}, expected {list(shape)}")
    if floating and not bool(torch.isfinite(value).all()):
        raise _fail(where, f"{what} returned non-finite values")
    return value


def probe_encoder(where: str, encoder: Any, resolution: int, tokens: int, dim: int, device=None) -> None:
    """One black image through preprocess and forward: tokens [1, tokens, dim], float32, finite.
    `tokens` and `dim` are what validation was told (EncoderParams.tokens_for / embed_dim)."""
    import torch

    images = torch.zeros(1, 3, resolution, resolution, dtype=torch.uint8, device=device)
    x = _run(where, f"preprocess(uint8 [1, 3, {resolution}, {resolution}])", lambda: encoder.preprocess(images))
    with torch.no_grad():
        out = _run(where, "forward", lambda: encoder(x))
    _tensor(where, f"forward on a {resolution} px image", out, (1, tokens, dim))
    if out.dtype != torch.float32:
        raise _fail(where, f"forward returned {out.dtype} tokens, expected float32")


def probe_projector(where: str, projector: Any, tokens: int, in_dim: int, out_dim: int, device=None) -> None:
    import torch

    hidden = torch.randn(2, tokens, in_dim, device=device)
    out = _run(where, f"forward(hidden [2, {tokens}, {in_dim}])", lambda: projector(hidden))
    _tensor(where, f"forward(hidden [2, {tokens}, {in_dim}])", out, (2, tokens, out_dim))


def probe_alignment_loss(where: str, loss: Any, tokens: int, dim: int, device=None) -> None:
    import torch

    generator = torch.Generator().manual_seed(0)
    projected = torch.randn(2, tokens, dim, generator=generator).to(device)
    target = torch.randn(2, tokens, dim, generator=generator).to(device)
    out = _run(where, f"(projected [2, {tokens}, {dim}], target [2, {tokens}, {dim}])", lambda: loss(projected, target))
    _tensor(where, "the loss", out, (2,))  # per sample: the engine weights and averages it


def probe_target_transform(where: str, transform: Any, tokens: int, dim: int, device=None) -> None:
    import torch

    tokens_in = torch.randn(2, tokens, dim, generator=torch.Generator().manual_seed(0)).to(device)
    original = tokens_in.clone()
    out = _run(where, f"(tokens [2, {tokens}, {dim}])", lambda: transform(tokens_in))
    _tensor(where, "the transform", out, (2, tokens, dim))
    if not torch.equal(tokens_in, original):
        raise _fail(where, "changed its input tokens in place; return a new tensor (entries with one encoder "
                    "share its tokens)")


def example_conditions(backbone: Any, n: int, device=None):
    """n conditions the backbone takes: label 0, or zero contexts [n,L,D] (`Backbone.context_shape`)."""
    import torch

    shape = getattr(backbone, "context_shape", None)
    if shape is not None:
        return torch.zeros(n, *shape, device=device)
    return torch.zeros(n, dtype=torch.long, device=device)


def probe_backbone(where: str, backbone: Any, side: int, channels: int, depths: list[int], tokens: int,
                   device=None) -> None:
    """One sample in eval mode: a BackboneOutput with out [1,C,H,W] and one hidden state
    [1, tokens, hidden_size] per depth."""
    import torch

    x = torch.zeros(1, channels, side, side, device=device)
    t = torch.full((1,), 0.5, device=device)
    y = example_conditions(backbone, 1, device)
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            result = _run(where, f"forward(x [1, {channels}, {side}, {side}], t, y, hidden_depths={depths})",
                          lambda: backbone(x, t, y, drop_ids=None, hidden_depths=list(depths)))
    finally:
        backbone.train(was_training)
    if not isinstance(result, interfaces.BackboneOutput):
        raise _fail(where, f"forward returned {type(result).__name__}, expected a repa.interfaces.BackboneOutput "
                           "(out, hidden by block)")
    _tensor(where, "forward's out", result.out, (1, channels, side, side))
    missing = [d for d in depths if d not in result.hidden]
    if missing:
        raise _fail(where, f"forward returned no hidden state for blocks {missing} (hidden_depths={depths})")
    for depth in depths:
        _tensor(where, f"the hidden state of block {depth}", result.hidden[depth], (1, tokens, backbone.hidden_size))


def probe_autoencoder(where: str, autoencoder: Any, resolution: int, channels: int, factor: int, device=None) -> None:
    """One image: encode -> moments [1,2C,R/f,R/f]; sample -> [1,C,R/f,R/f]; decode -> [1,3,R,R], all finite."""
    import torch

    side = resolution // factor
    images = torch.randint(0, 256, (1, 3, resolution, resolution), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8).to(device)
    with torch.no_grad():
        moments = _tensor(where, "encode", _run(where, "encode", lambda: autoencoder.encode(images)),
                          (1, 2 * channels, side, side))
        noise = torch.randn(1, channels, side, side, generator=torch.Generator().manual_seed(2)).to(device)
        z = _tensor(where, "sample", _run(where, "sample", lambda: autoencoder.sample(moments, noise)),
                    (1, channels, side, side))
        _tensor(where, "decode", _run(where, "decode", lambda: autoencoder.decode(z)), (1, 3, resolution, resolution))


def probe_dataset(where: str, dataset: Any, resolution: int) -> None:
    """Item 0 holds image uint8 [3,R,R] and y: an int label in 0..num_classes-1, or (captioned data) a
    caption or a context [L,D] (moments optional)."""
    import torch

    if len(dataset) < 1:
        raise _fail(where, "is empty")
    item = _run(where, "dataset[0]", lambda: dataset[0])
    if not isinstance(item, dict) or "image" not in item or "y" not in item:
        keys = list(item) if isinstance(item, dict) else "-"
        raise _fail(where, f"dataset[0] is {type(item).__name__} with keys {keys}; expected a dict with `image` and "
                           "`y` (and optionally `moments`)")
    image = _tensor(where, "dataset[0]['image']", torch.as_tensor(item["image"]), (3, resolution, resolution),
                    floating=False)
    if image.dtype != torch.uint8:
        raise _fail(where, f"dataset[0]['image'] is {image.dtype}, expected uint8")
    y = item["y"]
    if isinstance(y, str) or (hasattr(y, "ndim") and y.ndim == 2):
        return  # a caption or a cached context: the conditioning checks it when it collates
    if not 0 <= int(y) < dataset.num_classes:
        raise _fail(where, f"dataset[0]['y'] = {item['y']} is outside 0..{dataset.num_classes - 1}")


class _SeededNoise:
    def randn_like(self, x):
        import torch

        return torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=x.dtype).to(x.device)


def probe_sampler(where: str, sampler: Any, x1, path: Any) -> Any:
    """Integrate velocity = x / t (all data at 0, on the linear path) from x1: x0 shaped like x1, in its
    dtype; `velocity(x, t[B], step_t: float)` called `function_evaluations()` times. Returns x0."""
    calls = []

    def velocity(x, t, step_t):
        calls.append(step_t)
        if not (isinstance(step_t, float) and tuple(t.shape) == (x.shape[0],)):
            raise _fail(where, "calls velocity(x, t[B], step_t: float) differently")
        return x / t.clamp_min(1e-3).view(-1, *[1] * (x.ndim - 1))

    x0 = _tensor(where, "sample", _run(where, "sample(velocity, x1, path, noise)",
                                       lambda: sampler.sample(velocity, x1, path, _SeededNoise())),
                 tuple(x1.shape))
    if x0.dtype != x1.dtype:
        raise _fail(where, f"sample returned {x0.dtype} for a {x1.dtype} state")
    expected = _run(where, "function_evaluations()", sampler.function_evaluations)
    if len(calls) != expected:
        raise _fail(where, f"called velocity {len(calls)} times; function_evaluations() says {expected}")
    return x0


def probe_guidance(where: str, guidance: Any) -> None:
    """active(t) -> bool; extra_evaluations(t) -> a number >= 0; guide(...) -> one output per network
    output, shaped like it; a cond/uncond guidance (it overrides combine) leaves agreeing outputs unchanged."""
    import torch

    cond = torch.randn(2, 3, generator=torch.Generator().manual_seed(1))
    for t in (0.0, 0.5, 1.0):
        active = _run(where, f"active({t})", lambda: guidance.active(t))
        if not isinstance(active, bool):
            raise _fail(where, f"active({t}) returned {type(active).__name__}, expected bool")
        extra = _run(where, f"extra_evaluations({t})", lambda: guidance.extra_evaluations(t))
        if not isinstance(extra, (int, float)) or extra < 0:
            raise _fail(where, f"extra_evaluations({t}) returned {extra!r}, expected a number >= 0")
    if getattr(type(guidance), "combine", None) is not interfaces.Guidance.combine:
        same = _tensor(where, "combine", _run(where, "combine", lambda: guidance.combine(cond, cond, 0.5)), (2, 3))
        if not torch.allclose(same, cond):
            raise _fail(where, "combine(c, c, t) differs from c: guidance must leave agreeing outputs unchanged")
        x, y = torch.randn(2, 3, generator=torch.Generator().manual_seed(2)), torch.zeros(2, dtype=torch.long)
        network = lambda x, t, y: [x * 2, x[:, :1]]  # noqa: E731 (outputs that do not depend on the labels)
        for step_t in (0.1, 0.5, 0.9):
            null = torch.full_like(y, 7) if guidance.active(step_t) else None
            outs = _run(where, "guide(network, x, t, y, null, step_t)",
                        lambda: guidance.guide(network, x, torch.full((2,), step_t), y, null, step_t))
            if len(outs) != 2 or not all(torch.allclose(o, e) for o, e in zip(outs, network(x, None, y))):
                raise _fail(where, "guide(...) must return one output per network output, unchanged where the "
                                   "conditional and unconditional outputs agree")
