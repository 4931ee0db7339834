"""Building the configured components (one place for train, sample and evaluate), and checking
them on tiny inputs before anything is written (`repa.plugins.contract` probes)."""

from __future__ import annotations

from repa.config import ExperimentConfig
from repa.errors import ConfigError, ContractError
from repa.engine.network import AlignedNetwork, AlignmentTerm
from repa.plugins import contract


def input_geometry(config: ExperimentConfig) -> tuple[int, int]:
    """(side, channels) of the backbone input: resolution / downsampling, latent channels."""
    ae = config.autoencoder.params
    return config.data.params.resolution // ae.downsample_factor(), ae.latent_channels()


def build_network(config: ExperimentConfig, num_classes: int, null_label: bool | None = None) -> AlignedNetwork:
    """The backbone plus one projector per [[alignment]] entry. null_label: whether the label table
    has the null row (default: when the experiment drops labels); a loaded checkpoint decides it."""
    side, channels = input_geometry(config)
    dropout = config.train.label_dropout
    backbone = config.backbone.build(
        input_size=side, in_channels=channels, num_classes=num_classes, label_dropout=dropout,
        null_label=dropout > 0 if null_label is None else null_label,
        grad_checkpointing=config.train.grad_checkpointing,
    )
    grid = config.backbone.params.token_grid(side)
    projectors = [entry.projector.build(in_dim=backbone.hidden_size, out_dim=entry.encoder.params.embed_dim(),
                                        projector_dim=entry.projector_dim, grid=grid) for entry in config.alignment]
    return AlignedNetwork(backbone, projectors, [entry.depth for entry in config.alignment], *build_joint(config, backbone))


def build_joint(config: ExperimentConfig, backbone) -> tuple:
    """(the [[joint]] module, its [[alignment]] entry), or () without one."""
    if not config.joint:
        return ()
    (joint,) = config.joint
    width = config.alignment[joint.params.source].encoder.params.embed_dim()
    return joint.build(hidden_size=backbone.hidden_size, width=width), joint.params.source


def compile_network(network, mode: bool | str) -> None:
    """torch.compile in place, so parameter names (checkpoints, EMA) stay as they are. true /
    "blocks": regional compilation of the backbone's repeated units (`Backbone.shard_units()`, its
    blocks): one graph is compiled and reused by every block, in seconds rather than minutes, and the
    rest stays eager. "model" (or a backbone without units): the whole network as one graph."""
    units = network.backbone.shard_units() if mode in (True, "blocks") else []
    for unit in units or [network]:
        unit.compile()


def build_terms(config: ExperimentConfig) -> list[AlignmentTerm]:
    """Each [[alignment]] entry's loss, coefficient, early stop and target transform."""
    return [AlignmentTerm(entry.loss.build(), entry.coeff, entry.stop_after, entry.target_transform.build())
            for entry in config.alignment]


def build_attention_terms(config: ExperimentConfig) -> list:
    """Each [[attention]] entry's loss, coefficient, backbone blocks and early stop."""
    from repa.engine.train.objective import AttentionTerm

    return [AttentionTerm(term.build(), term.params.coeff, list(term.params.blocks), term.params.stop_after)
            for term in config.attention]


def build_sampling(config: ExperimentConfig):
    """(sampler, guidance) from the [sample] section."""
    sample = config.sample
    sampler = sample.sampler.build(steps=sample.steps)
    guidance = sample.guidance.build(scale=sample.cfg_scale, interval=sample.guidance_interval)
    return sampler, guidance


def build_objective_parts(config: ExperimentConfig):
    return config.path.build(), config.prediction.build(), config.weighting.build()


# ============================================================================
# Probes: every built part on a tiny input, before the run writes anything
# ============================================================================


def probe_network(config: ExperimentConfig, network: AlignedNetwork, device=None) -> None:
    """The backbone's output and hidden states, and each projector's output width."""
    side, channels = input_geometry(config)
    tokens = config.backbone.params.num_tokens(side)
    contract.probe_backbone(config.backbone.entry.label, network.backbone, side, channels,
                            sorted(set(network.depths)), tokens, device)
    joint = network.joint
    for k, (entry, projector) in enumerate(zip(config.alignment, network.projectors)):
        seen = tokens + (joint.tokens if joint is not None and joint.aligned and k == network.joint_entry else 0)
        try:
            contract.probe_projector(entry.projector.entry.label, projector, seen, network.backbone.hidden_size,
                                     entry.encoder.params.embed_dim(), device)
        except ContractError as exc:
            if seen == tokens:
                raise
            raise ConfigError([f"alignment[{k}].projector: [[joint]] {config.joint[0].kind} aligns its {joint.tokens} "
                               f"token(s) with this entry, so its projector sees {seen} tokens, not a {tokens}-token "
                               f"grid, and fails ({exc}); use a per-token projector (mlp)"]) from None


def probe_attention(config: ExperimentConfig, network: AlignedNetwork, encoders: list, device=None) -> None:
    """Each [[attention]] pair on one blank image: the backbone must have at least the teacher's heads
    and the same tokens, so a mismatch is one line before anything is written, not a failed step."""
    import torch

    if not config.attention:
        return
    side, channels = input_geometry(config)
    resolution = config.data.params.resolution
    x = torch.zeros(1, channels, side, side, device=device)
    t, y = torch.full((1,), 0.5, device=device), torch.zeros(1, dtype=torch.long, device=device)
    backbone, training = network.backbone, network.backbone.training
    backbone.eval()  # no label dropout: the probe draws nothing from the global RNG
    for i, term in enumerate(config.attention):
        params = term.params
        with torch.no_grad(), backbone.record_attention(params.blocks) as student:
            backbone(x, t, y, drop_ids=None, hidden_depths=[])
        encoder = encoders[params.source]
        images = torch.zeros(1, 3, resolution, resolution, dtype=torch.uint8, device=device)
        _, teachers = encoder.forward_with_attention(encoder.preprocess(images), list(params.encoder_blocks))
        mine, theirs = tuple(student[0].shape[1:]), tuple(teachers[0].shape[1:])
        if mine[0] < theirs[0] or mine[1:] != theirs[1:]:
            raise ConfigError([f"attention[{i}]: {config.backbone.kind}'s attention is {mine[0]} heads x {mine[1]} "
                               f"tokens but {config.alignment[params.source].encoder.kind}'s is {theirs[0]} heads x "
                               f"{theirs[1]} tokens; the backbone needs at least the encoder's heads and its tokens"])
    backbone.train(training)


def probe_data(config: ExperimentConfig, dataset, autoencoder, device=None) -> None:
    """Item 0 of the dataset, and one image through the autoencoder and back."""
    resolution, ae = config.data.params.resolution, config.autoencoder.params
    contract.probe_dataset(config.data.entry.label, dataset, resolution)
    contract.probe_autoencoder(config.autoencoder.entry.label, autoencoder, resolution, ae.latent_channels(),
                               ae.downsample_factor(), device)


def probe_generation(config: ExperimentConfig, sampler, guidance, path) -> None:
    """The sampler on a toy velocity field (shapes, dtype, evaluation count) and the guidance rule."""
    import torch

    x1 = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    contract.probe_sampler(config.sample.sampler.entry.label, sampler, x1, path)
    contract.probe_guidance(config.sample.guidance.entry.label, guidance)


def probe_alignment(config: ExperimentConfig, terms: list[AlignmentTerm], encoders: list, device=None) -> None:
    """Each entry's encoder (when online), target transform and loss on tokens of the run's shape."""
    resolution = config.data.params.resolution
    for entry, term, encoder in zip(config.alignment, terms, encoders):
        tokens, dim = entry.encoder.params.tokens_for(resolution), entry.encoder.params.embed_dim()
        if encoder is not None:
            contract.probe_encoder(entry.encoder.entry.label, encoder, resolution, tokens, dim, device)
        contract.probe_target_transform(entry.target_transform.entry.label, term.transform, tokens, dim, device)
        contract.probe_alignment_loss(entry.loss.entry.label, term.loss, tokens, dim, device)
