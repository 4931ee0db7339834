"""The hook specifications of the `repa` pluggy project: one registration hook per kind.

A plugin is a module with functions decorated by `repa.plugins.hookimpl`, exposed as an
entry point in group "repa" of its distribution:

    [project.entry-points.repa]
    my_encoders = "my_package.repa_plugin"

Each hook receives the registry of its kind and calls
`registry.add(name, factory, params=ParamsModel, description=...)`. `registry.add` checks the
factory's signature and the params model against the kind's contract
(`repa.plugins.contract.CONTRACTS`); the built object is checked against the kind's base class
in `repa.interfaces`. Keep plugin modules light: import torch, timm, open_clip inside
factories, never at module top.
"""

from __future__ import annotations

import pluggy

PROJECT = "repa"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# kind -> hook name. The kind names are what `repa plugins KIND` accepts.
HOOKS = {
    "backbone": "repa_register_backbones",
    "projector": "repa_register_projectors",
    "path": "repa_register_paths",
    "prediction": "repa_register_predictions",
    "weighting": "repa_register_weightings",
    "alignment_loss": "repa_register_alignment_losses",
    "target_transform": "repa_register_target_transforms",
    "encoder": "repa_register_encoders",
    "sampler": "repa_register_samplers",
    "guidance": "repa_register_guidances",
    "autoencoder": "repa_register_autoencoders",
    "dataset": "repa_register_datasets",
    "metric": "repa_register_metrics",
    "tracker": "repa_register_trackers",
    "optimizer": "repa_register_optimizers",
    "analysis": "repa_register_analyses",
    "joint": "repa_register_joints",
    "attention_loss": "repa_register_attention_losses",
}
KINDS = tuple(HOOKS)


@hookspec
def repa_register_backbones(registry):
    """Add denoising backbones. factory(params, *, input_size, in_channels, num_classes,
    label_dropout, null_label, grad_checkpointing) -> `repa.interfaces.Backbone` (an nn.Module
    that returns the hidden states at the depths the engine asks for). Params subclass
    `repa.interfaces.BackboneParams`."""


@hookspec
def repa_register_projectors(registry):
    """Add REPA projectors (hidden states -> encoder width). factory(params, *, in_dim, out_dim,
    projector_dim, grid) -> `repa.interfaces.Projector`; grid = (rows, columns) of the tokens."""


@hookspec
def repa_register_paths(registry):
    """Add interpolant paths. factory(params) -> `repa.interfaces.Path`."""


@hookspec
def repa_register_predictions(registry):
    """Add prediction targets. factory(params) -> `repa.interfaces.Prediction`."""


@hookspec
def repa_register_weightings(registry):
    """Add time samplers / loss weightings. factory(params) -> `repa.interfaces.Weighting`."""


@hookspec
def repa_register_alignment_losses(registry):
    """Add alignment losses. factory(params) -> `repa.interfaces.AlignmentLoss`."""


@hookspec
def repa_register_target_transforms(registry):
    """Add transforms of the encoder's tokens before the alignment loss. factory(params) ->
    `repa.interfaces.TargetTransform`."""


@hookspec
def repa_register_encoders(registry):
    """Add frozen vision encoders. factory(params, *, resolution) -> `repa.interfaces.Encoder`.
    Params subclass `repa.interfaces.EncoderParams`."""


@hookspec
def repa_register_samplers(registry):
    """Add samplers. factory(params, *, steps) -> `repa.interfaces.Sampler`."""


@hookspec
def repa_register_guidances(registry):
    """Add guidance rules. factory(params, *, scale, interval) -> `repa.interfaces.Guidance`."""


@hookspec
def repa_register_autoencoders(registry):
    """Add image <-> latent maps. factory(params) -> `repa.interfaces.Autoencoder`.
    Params subclass `repa.interfaces.AutoencoderParams`."""


@hookspec
def repa_register_datasets(registry):
    """Add datasets. factory(params, *, split) -> `repa.interfaces.Dataset`.
    Params subclass `repa.interfaces.DatasetParams`."""


@hookspec
def repa_register_metrics(registry):
    """Add sample-quality metrics. factory(params) -> `repa.interfaces.Metric`."""


@hookspec
def repa_register_trackers(registry):
    """Add experiment trackers. factory(params, *, run_dir, config) -> `repa.interfaces.Tracker`."""


@hookspec
def repa_register_optimizers(registry):
    """Add optimizers. factory(params, *, parameters) -> torch.optim.Optimizer.
    Params subclass `repa.interfaces.OptimizerParams`."""


@hookspec
def repa_register_analyses(registry):
    """Add measurements of representations for `repa analyze`. factory(params) ->
    `repa.interfaces.Analysis` (declares in `needs` whether it compares with an encoder)."""


@hookspec
def repa_register_joints(registry):
    """Add quantities denoised jointly with the image ([[joint]], e.g. REG's class token).
    factory(params, *, hidden_size, width) -> `repa.interfaces.Joint` (an nn.Module); width = the
    embed_dim of the encoder of the [[alignment]] entry `params.source`. Params subclass
    `repa.interfaces.JointParams`."""


@hookspec
def repa_register_attention_losses(registry):
    """Add attention alignments ([[attention]], e.g. HASTE's holistic alignment). factory(params) ->
    `repa.interfaces.AttentionLoss`. Params subclass `repa.interfaces.AttentionParams`."""
