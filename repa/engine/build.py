"""Building the configured components (one place for train, sample and evaluate)."""

from __future__ import annotations

from repa.config import ExperimentConfig


def input_geometry(config: ExperimentConfig) -> tuple[int, int]:
    """(side, channels) of the backbone input: resolution / downsampling, latent channels."""
    ae = config.autoencoder.params
    return config.data.params.resolution // ae.downsample_factor(), ae.latent_channels()


def projections(config: ExperimentConfig) -> list[tuple[int, int, int]]:
    """(depth, projector_dim, encoder width) per alignment entry, from static encoder facts."""
    return [(a.depth, a.projector_dim, a.encoder.params.embed_dim()) for a in config.alignment]


def build_backbone(config: ExperimentConfig, num_classes: int, null_label: bool | None = None):
    """null_label: whether the label embedding has the null row (default: when the experiment
    drops labels); loading a checkpoint sets it from the weights."""
    side, channels = input_geometry(config)
    dropout = config.train.label_dropout
    if null_label is not None and null_label != (dropout > 0):
        dropout = 0.1 if null_label else 0.0  # only the row count matters: a loaded model samples in eval mode
    return config.backbone.build(
        input_size=side, in_channels=channels, num_classes=num_classes, projections=projections(config),
        label_dropout=dropout, grad_checkpointing=config.train.grad_checkpointing,
    )


def build_sampling(config: ExperimentConfig):
    """(sampler, guidance) from the [sample] section."""
    sample = config.sample
    sampler = sample.sampler.build(steps=sample.steps)
    guidance = sample.guidance.build(scale=sample.cfg_scale, interval=sample.guidance_interval)
    return sampler, guidance


def build_objective_parts(config: ExperimentConfig):
    return config.path.build(), config.prediction.build(), config.weighting.build()
