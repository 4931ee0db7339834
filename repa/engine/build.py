"""Building the configured components (one place for train, sample and evaluate), and checking
them on tiny inputs before anything is written (`repa.plugins.contract` probes).

The experiment's terms: [[joint]], [[alignment]] and [[attention]] entries are written for the
built-in terms "joint", "alignment" and "attention" (`repa.components.term`), [[term]] entries
name any registered term. Each term gets its slot in the objective (logged name, coefficient,
schedule) and its section in the trained network (where its modules live in checkpoints).
"""

from __future__ import annotations

from repa.config import ExperimentConfig
from repa.engine.network import Placement, TrainedNetwork
from repa.engine.train.objective import TermSlot
from repa.errors import ConfigError, ContractError
from repa.interfaces import Joint, Needs, TeacherNeed, TermFacts, TrainedModule
from repa.plugins import contract

TEACHER_MODELS = ("ema", "online")


def input_geometry(config: ExperimentConfig) -> tuple[int, int]:
    """(side, channels) of the backbone input: resolution / downsampling, latent channels."""
    ae = config.autoencoder.params
    return config.data.params.resolution // ae.downsample_factor(), ae.latent_channels()


def build_conditioning(config: ExperimentConfig, num_classes: int):
    """The experiment's conditioning ([conditioning]; class labels by default). Its datasets are built on
    first need, once per split (text: evaluation prompts, the stored empty context)."""
    built: dict = {}

    def dataset(split: str):
        if split not in built:
            built[split] = config.data.build(split=split)
        return built[split]

    return config.conditioning.build(num_classes=num_classes, dataset=dataset)


def build_backbone(config: ExperimentConfig, num_classes: int, null_label: bool | None = None, conditioning=None):
    """null_label: whether the label table has the null row (default: when the experiment drops labels);
    a loaded checkpoint decides it. conditioning: the built [conditioning] (default: built here)."""
    side, channels = input_geometry(config)
    dropout = config.train.label_dropout
    conditioning = build_conditioning(config, num_classes) if conditioning is None else conditioning
    return config.backbone.build(
        input_size=side, in_channels=channels, num_classes=num_classes, label_dropout=dropout,
        null_label=dropout > 0 if null_label is None else null_label,
        grad_checkpointing=config.train.grad_checkpointing, conditioning=conditioning,
    )


def build_training(config: ExperimentConfig, num_classes: int, null_label: bool | None = None,
                   autoencoder=None, conditioning=None) -> tuple[TrainedNetwork, list[TermSlot]]:
    """The trained network (backbone, the terms' modules, a trainable autoencoder's) and the terms' slots;
    the network carries its conditioning (`network.conditioning`)."""
    conditioning = build_conditioning(config, num_classes) if conditioning is None else conditioning
    backbone = build_backbone(config, num_classes, null_label, conditioning)
    slots = build_terms(config, term_facts(config, backbone, num_classes, autoencoder))
    placements = [placement for slot in slots for placement in _placements(slot)]
    if autoencoder is not None:
        placements += [Placement(f"autoencoder.{name}", _trained(module, f"autoencoder {config.autoencoder.kind!r}"))
                       for name, module in autoencoder.trained_modules().items()]
    network = TrainedNetwork(backbone, placements, [slot.joint for slot in slots if slot.joint is not None])
    network.conditioning = conditioning
    return network, slots


def build_network(config: ExperimentConfig, num_classes: int, null_label: bool | None = None,
                  autoencoder=None, conditioning=None) -> TrainedNetwork:
    return build_training(config, num_classes, null_label, autoencoder, conditioning)[0]


def term_facts(config: ExperimentConfig, backbone, num_classes: int, autoencoder=None) -> TermFacts:
    side, channels = input_geometry(config)
    params = config.backbone.params
    return TermFacts(hidden_size=backbone.hidden_size, num_blocks=params.num_blocks(), tokens=params.num_tokens(side),
                     grid=params.token_grid(side), input_shape=(channels, side, side),
                     resolution=config.data.params.resolution, num_classes=num_classes, autoencoder=autoencoder)


# ============================================================================
# The experiment's terms
# ============================================================================


def build_terms(config: ExperimentConfig, facts: TermFacts) -> list[TermSlot]:
    """The slots in the order their modules are built and placed (the network's parameter order, the
    random initialisation's order): [[alignment]] entries, [[joint]], [[attention]], [[term]]. The
    objective sums their losses joint quantities first (`TermSlot.rank`)."""
    from repa.components.term import AttentionTermParams, JointTermParams

    divide = len(config.alignment) if config.train.alignment_reduction == "mean" else 1
    slots: list[TermSlot] = []

    def add(kind, params, index, **where) -> TermSlot:
        built = TermFacts(**{**facts.__dict__, "index": index, "other_terms": tuple(s.term for s in slots)})
        slots.append(_slot(kind, params, built, index, **where))
        return slots[-1]

    alignments = [add("alignment", entry, k, name=f"align_loss_{k}", section=f"projectors.{k}",
                      label=f"[[alignment]][{k}] ({entry.encoder.kind})", coeff=entry.coeff / divide, rank=1)
                  for k, entry in enumerate(config.alignment)]
    for j, joint in enumerate(config.joint):
        source = config.alignment[joint.params.source]
        params = JointTermParams(quantity=joint, encoder=source.encoder, features=source.features,
                                 coeff=joint.params.coeff)
        slot = add("joint", params, j, name="joint_loss" if j == 0 else f"joint_loss_{j}",
                   section="joint" if j == 0 else f"joint_{j}", label=f"[[joint]][{j}] ({joint.kind})", rank=0)
        if slot.joint.aligned:  # REG: its tokens join the alignment of the entry they come from
            alignments[joint.params.source].term.prefix = slot.term
    for a, attention in enumerate(config.attention):
        source = config.alignment[attention.params.source]
        params = AttentionTermParams(loss=attention, encoder=source.encoder, blocks=attention.params.blocks,
                                     encoder_blocks=attention.params.encoder_blocks, coeff=attention.params.coeff,
                                     stop_after=attention.params.stop_after)
        add("attention", params, a, name=f"attention_loss_{a}", section=None,
            label=f"[[attention]][{a}] ({attention.kind})", rank=2)
    kinds = [term.kind for term in config.term]
    for i, term in enumerate(config.term):
        add(term.kind, term.params, i, name=f"{term.kind}_loss" + (f"_{i}" if kinds.count(term.kind) > 1 else ""),
            section=f"terms.{i}", label=f"term {term.kind!r} ([[term]][{i}])", component=term, rank=3)
    return slots


def _slot(kind: str, params, facts: TermFacts, index: int, name: str, section: str | None, label: str,
          coeff: float | None = None, component=None, rank: int = 3) -> TermSlot:
    from repa.plugins import get_components

    entry = component.entry if component is not None else get_components().get("term", kind)
    term = entry.build(params, facts=facts)
    where = f"{entry.label} as {label}"
    modules = _modules(term, where)
    joint = term.extra_tokens()
    if joint is not None:
        if not any(spec.module is joint for spec in modules.values()):
            raise ContractError(f"{where}: extra_tokens() returned a module that is not one of its modules()")
        if not isinstance(joint, Joint) and not all(hasattr(joint, a) for a in ("tokens", "width", "embed", "head")):
            raise ContractError(f"{where}: extra_tokens() must be a repa.interfaces.Joint (tokens, width, embed, head)")
    _check_needs(term, where)
    return TermSlot(term, name, params.coeff if coeff is None else coeff, where, params.stop_after,
                    section if modules else None, joint, modules, rank)


def _modules(term, where: str) -> dict[str, TrainedModule]:
    found = term.modules()
    if not hasattr(found, "items"):
        raise ContractError(f"{where}: modules() returned {type(found).__name__}; expected {{name: torch.nn.Module}}")
    return {str(name): _trained(module, f"{where}: module {name!r}") for name, module in found.items()}


def _trained(module, where: str) -> TrainedModule:
    import torch.nn as nn

    spec = module if isinstance(module, TrainedModule) else TrainedModule(module)
    if not isinstance(spec.module, nn.Module):
        raise ContractError(f"{where} is a {type(spec.module).__name__}, not a torch.nn.Module (or a "
                            "repa.interfaces.TrainedModule holding one)")
    return spec


def _placements(slot: TermSlot) -> list[Placement]:
    return [Placement(slot.section if name == "" else f"{slot.section}.{name}", spec)
            for name, spec in slot.modules.items()]


def _check_needs(term, where: str) -> None:
    needs = term.needs()
    if not isinstance(needs, Needs):
        raise ContractError(f"{where}: needs() returned {type(needs).__name__}; expected repa.interfaces.Needs")
    for teacher in needs.teachers:
        if not isinstance(teacher, TeacherNeed) or teacher.model not in TEACHER_MODELS:
            raise ContractError(f"{where}: unknown need {teacher!r}; a teacher is TeacherNeed(model=\"ema\" or "
                                "\"online\", hidden=(blocks...))")
    for need in needs.encoders:
        if not hasattr(getattr(need, "encoder", None), "identity"):
            raise ContractError(f"{where}: unknown need {need!r}; an encoder need is EncoderNeed(encoder=<an encoder "
                                "component from its params>)")


def check_term_needs(config: ExperimentConfig, slots: list[TermSlot], autoencoder) -> None:
    """What the terms need must exist here: blocks of the backbone, its attention and extra tokens, a
    trainable autoencoder for latents with gradient, online encoders where attention or a global token is read."""
    backbone = config.backbone.params
    blocks = backbone.num_blocks()
    for slot in slots:
        needs = slot.term.needs()
        bad = [b for b in (*needs.hidden, *needs.attention, *(d for t in needs.teachers for d in t.hidden))
               if not 1 <= b <= blocks]
        problems = []
        if bad:
            problems.append(f"needs blocks {bad} but {config.backbone.kind} has blocks 1..{blocks}")
        if needs.attention and not backbone.gives_attention():
            problems.append(f"needs attention logits, which {config.backbone.kind} does not give")
        if slot.joint is not None and not backbone.takes_extra_tokens():
            problems.append(f"adds extra tokens, which {config.backbone.kind} cannot take")
        if needs.latent_gradient and not autoencoder.trained_modules():
            problems.append(f"needs the latents with gradient, but autoencoder {config.autoencoder.kind!r} does not "
                            "train")
        for need in needs.encoders:
            if need.features != "online" and (need.global_token or need.attention):
                problems.append(f"reads {need.encoder.kind}'s global token or attention, which a feature cache "
                                "does not hold; set features = \"online\"")
        if problems:
            raise ConfigError([f"{slot.label}: {problems[0]}"])


def compile_network(network, mode: bool | str) -> None:
    """torch.compile in place, so parameter names (checkpoints, EMA) stay as they are. true /
    "blocks": regional compilation of the backbone's repeated units (`Backbone.shard_units()`, its
    blocks): one graph is compiled and reused by every block, in seconds rather than minutes, and the
    rest stays eager. "model" (or a backbone without units): the backbone as one graph."""
    units = network.backbone.shard_units() if mode in (True, "blocks") else []
    for unit in units or [network.backbone]:
        unit.compile()


def build_sampling(config: ExperimentConfig, load_network=None):
    """(sampler, guidance) from the [sample] section; a guidance's own scale and interval, when set,
    take the place of sample.cfg_scale and sample.guidance_interval."""
    sample = config.sample
    sampler = sample.sampler.build(steps=sample.steps)
    scale, interval = sample.guidance_settings()
    guidance = sample.guidance.build(scale=scale, interval=interval, load_network=load_network)
    return sampler, guidance


def build_objective_parts(config: ExperimentConfig):
    return config.path.build(), config.prediction.build(), config.weighting.build()


# ============================================================================
# Probes: every built part on a tiny input, before the run writes anything
# ============================================================================


def probe_network(config: ExperimentConfig, network: TrainedNetwork, slots: list[TermSlot], device=None) -> None:
    """The backbone's output and hidden states, and each [[alignment]] projector's output width."""
    side, channels = input_geometry(config)
    tokens = config.backbone.params.num_tokens(side)
    depths = sorted({d for slot in slots for d in slot.term.needs().hidden})
    contract.probe_backbone(config.backbone.entry.label, network.backbone, side, channels, depths, tokens, device)
    alignments = [slot.term for slot in slots if slot.name.startswith("align_loss_")]
    for k, (entry, term) in enumerate(zip(config.alignment, alignments)):
        extra = term.prefix.quantity.tokens if term.prefix is not None else 0
        try:
            contract.probe_projector(entry.projector.entry.label, term.projector, tokens + extra,
                                     network.backbone.hidden_size, entry.encoder.params.embed_dim(), device)
        except ContractError as exc:
            if not extra:
                raise
            raise ConfigError([f"alignment[{k}].projector: [[joint]] {config.joint[0].kind} aligns its {extra} "
                               f"token(s) with this entry, so its projector sees {tokens + extra} tokens, not a "
                               f"{tokens}-token grid, and fails ({exc}); use a per-token projector (mlp)"]) from None


def probe_attention(config: ExperimentConfig, network: TrainedNetwork, encoders: list, device=None) -> None:
    """Each [[attention]] pair on one blank image: the backbone must have at least the teacher's heads
    and the same tokens, so a mismatch is one line before anything is written, not a failed step.
    `encoders`: the [[alignment]] entries' built encoders (None where the entry reads a cache)."""
    import torch

    if not config.attention:
        return
    side, channels = input_geometry(config)
    resolution = config.data.params.resolution
    x = torch.zeros(1, channels, side, side, device=device)
    t, y = torch.full((1,), 0.5, device=device), contract.example_conditions(network, 1, device)
    backbone, training = network.backbone, network.backbone.training
    backbone.eval()  # no label dropout: the probe draws nothing from the global RNG
    for i, term in enumerate(config.attention):
        params = term.params
        with torch.no_grad():
            student = backbone(x, t, y, drop_ids=None, attention_blocks=list(params.blocks)).attention
        encoder = encoders[params.source]
        images = torch.zeros(1, 3, resolution, resolution, dtype=torch.uint8, device=device)
        _, teachers = encoder.forward_with_attention(encoder.preprocess(images), list(params.encoder_blocks))
        mine, theirs = tuple(student[params.blocks[0]].shape[1:]), tuple(teachers[0].shape[1:])
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


def probe_alignment(config: ExperimentConfig, slots: list[TermSlot], encoders: list, device=None) -> None:
    """Each [[alignment]] entry's encoder (when online), target transform and loss on tokens of the run's shape."""
    resolution = config.data.params.resolution
    alignments = [slot.term for slot in slots if slot.name.startswith("align_loss_")]
    for entry, term, encoder in zip(config.alignment, alignments, encoders):
        tokens, dim = entry.encoder.params.tokens_for(resolution), entry.encoder.params.embed_dim()
        if encoder is not None:
            contract.probe_encoder(entry.encoder.entry.label, encoder, resolution, tokens, dim, device)
        contract.probe_target_transform(entry.target_transform.entry.label, term.transform, tokens, dim, device)
        contract.probe_alignment_loss(entry.loss.entry.label, term.alignment_loss, tokens, dim, device)
