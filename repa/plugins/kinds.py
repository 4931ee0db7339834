"""Every component kind, declared once. The hookspecs (`repa.plugins.hookspecs`), the contract checks
(`repa.plugins.contract`), the contract kit (`repa.testing`), the built-in entry points (checked
against pyproject.toml) and the kind table of CONTRIBUTING.md (`kind_table()`, checked by the
suite) are all read from this table.

Light module: pydantic and repa.interfaces only (plugins import it at startup).
"""

from __future__ import annotations

from dataclasses import dataclass

from repa import interfaces


@dataclass(frozen=True)
class KindSpec:
    name: str  # what experiment files and `repa plugins KIND` call it
    plural: str  # the hook is repa_register_<plural>; the built-in entry point is <plural>
    summary: str  # one line: what a component of this kind is (hook docstring, CONTRIBUTING)
    base: type | None  # the built object's base class in repa.interfaces (None: `required` alone)
    keywords: tuple[str, ...] = ()  # keyword arguments the engine passes to factory(params, ...)
    optional_keywords: tuple[str, ...] = ()  # passed only to factories that accept them
    params_base: type[interfaces.Params] = interfaces.Params
    module: bool = False  # the built object must be a torch.nn.Module
    required: tuple[str, ...] = ()  # members beyond those read from `base`
    builtin: str | None = None  # the package of repa's built-ins (None: plugins only)
    kit: str = ""  # repa.testing's tiny inputs + check for it: repa.testing.kit_<kit>

    @property
    def hook(self) -> str:
        return f"repa_register_{self.plural}"

    def signature(self) -> str:
        keywords = self.keywords + tuple(f"[{k}]" for k in self.optional_keywords)
        return "factory(params" + "".join(f", {'*, ' if i == 0 else ''}{k}" for i, k in enumerate(keywords)) + ")"


_OPTIMIZER_REQUIRED = tuple(interfaces.Optimizer.__annotations__) + tuple(
    n for n in vars(interfaces.Optimizer) if not n.startswith("_"))

KIND_SPECS: tuple[KindSpec, ...] = (
    KindSpec("backbone", "backbones", "the denoising network: output plus the hidden states / attention terms ask for",
             interfaces.Backbone, ("input_size", "in_channels", "num_classes", "label_dropout", "null_label",
                                   "grad_checkpointing"), ("conditioning",), params_base=interfaces.BackboneParams,
             module=True,
             builtin="repa.components.backbone", kit="backbone"),
    KindSpec("projector", "projectors", "REPA's h_phi: hidden states -> the encoder's width (one per alignment)",
             interfaces.Projector, ("in_dim", "out_dim", "projector_dim", "grid"), module=True,
             builtin="repa.components.projector", kit="projector"),
    KindSpec("path", "paths", "interpolant x_t = alpha(t) x_0 + sigma(t) eps", interfaces.Path,
             builtin="repa.components.path", kit="path"),
    KindSpec("prediction", "predictions", "what the network outputs (v, eps, x0) and how to read velocity from it",
             interfaces.Prediction, builtin="repa.components.prediction", kit="prediction"),
    KindSpec("weighting", "weightings", "the training distribution of t and the loss weight", interfaces.Weighting,
             builtin="repa.components.weighting", kit="weighting"),
    KindSpec("alignment_loss", "alignment_losses", "(projected, target tokens) -> per-sample alignment loss",
             interfaces.AlignmentLoss, builtin="repa.components.alignment", kit="alignment_loss"),
    KindSpec("target_transform", "target_transforms", "a transform of the encoder's tokens before the loss",
             interfaces.TargetTransform, builtin="repa.components.target_transform", kit="target_transform"),
    KindSpec("encoder", "encoders", "a frozen vision encoder: uint8 images -> patch tokens", interfaces.Encoder,
             ("resolution",), params_base=interfaces.EncoderParams, module=True, builtin="repa.components.encoder",
             kit="encoder"),
    KindSpec("sampler", "samplers", "integrates the velocity from noise (t=1) to data (t=0)", interfaces.Sampler,
             ("steps",), builtin="repa.components.sampler", kit="sampler"),
    KindSpec("guidance", "guidances", "how the network's outputs are combined at sampling, and when",
             interfaces.Guidance, ("scale", "interval"), ("load_network",), builtin="repa.components.guidance",
             kit="guidance"),
    KindSpec("autoencoder", "autoencoders", "images <-> the backbone's input (latents or pixels); may train",
             interfaces.Autoencoder, params_base=interfaces.AutoencoderParams, builtin="repa.components.autoencoder",
             kit="autoencoder"),
    KindSpec("dataset", "datasets", "images, labels and optionally stored latents", interfaces.Dataset, ("split",),
             params_base=interfaces.DatasetParams, builtin="repa.components.dataset", kit="dataset"),
    KindSpec("metric", "metrics", "scores samples against a reference (FID, IS, ...)", interfaces.Metric,
             builtin="repa.components.metric", kit="metric"),
    KindSpec("tracker", "trackers", "where a run's scalars and images go", interfaces.Tracker, ("run_dir", "config"),
             builtin="repa.components.tracker", kit="tracker"),
    KindSpec("optimizer", "optimizers", "a torch.optim.Optimizer over the trained parameters (groups)", None,
             ("parameters",), params_base=interfaces.OptimizerParams, required=_OPTIMIZER_REQUIRED,
             builtin="repa.components.optimizer", kit="optimizer"),
    KindSpec("analysis", "analyses", "a measurement of representations for `repa analyze`", interfaces.Analysis,
             builtin="repa.components.analysis", kit="analysis"),
    KindSpec("term", "terms", "one loss term of training: declares its needs, computes its loss from the step",
             interfaces.Term, ("facts",), params_base=interfaces.TermParams, builtin="repa.components.term",
             kit="term"),
    KindSpec("conditioning", "conditionings", "what the network is conditioned on: class labels or text contexts",
             interfaces.Conditioning, ("num_classes", "dataset"), params_base=interfaces.ConditioningParams,
             builtin="repa.components.conditioning", kit="conditioning"),
    KindSpec("text_encoder", "text_encoders", "a frozen text encoder: captions -> context tokens [L, D]",
             interfaces.TextEncoder, params_base=interfaces.TextEncoderParams, builtin="repa.components.text_encoder",
             kit="text_encoder"),
    KindSpec("joint", "joints", "[[joint]]: a quantity denoised jointly with the image (its modules)",
             interfaces.Joint, ("hidden_size", "width"), params_base=interfaces.JointParams, module=True, kit="joint"),
    KindSpec("attention_loss", "attention_losses", "[[attention]]: (student, teacher attention logits) -> loss",
             interfaces.AttentionLoss, params_base=interfaces.AttentionParams, kit="attention_loss"),
)

KINDS_BY_NAME = {spec.name: spec for spec in KIND_SPECS}
KINDS = tuple(KINDS_BY_NAME)
HOOKS = {spec.name: spec.hook for spec in KIND_SPECS}
BUILTIN_ENTRY_POINTS = tuple(sorted(spec.plural for spec in KIND_SPECS if spec.builtin))


def hook_doc(spec: KindSpec) -> str:
    """The hookspec's docstring: what to register and what the factory receives and returns."""
    base = f"`repa.interfaces.{spec.base.__name__}`" if spec.base else "a torch.optim.Optimizer"
    params = "" if spec.params_base is interfaces.Params else \
        f" Params subclass `repa.interfaces.{spec.params_base.__name__}`."
    return f"Add {spec.plural.replace('_', ' ')}: {spec.summary}. {spec.signature()} -> {base}.{params}"


def kind_table() -> str:
    """CONTRIBUTING.md's table of kinds (markdown): hook, factory signature, what it returns."""
    rows = ["| kind | hook | factory | returns |", "|---|---|---|---|"]
    for spec in KIND_SPECS:
        base = f"`{spec.base.__name__}`" if spec.base else "torch.optim.Optimizer"
        params = "" if spec.params_base is interfaces.Params else f" (params: `{spec.params_base.__name__}`)"
        rows.append(f"| `{spec.name}` | `{spec.hook}` | `{spec.signature()}`{params} | {base}: {spec.summary} |")
    return "\n".join(rows)
