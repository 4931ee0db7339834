"""Cross-field checks that need several sections at once (run after schema validation)."""

from __future__ import annotations

from repa.config.schema import ExperimentConfig
from repa.config.source import Issue


def cross_checks(config: ExperimentConfig, processes: int = 1) -> list[Issue]:
    return (_batch_checks(config, processes) + _guidance_checks(config) + _shape_checks(config)
            + _joint_checks(config) + _attention_checks(config) + _conditioning_checks(config))


def _conditioning_checks(config: ExperimentConfig) -> list[Issue]:
    """Text contexts need a backbone that takes them, and such a backbone needs them."""
    takes = getattr(config.backbone.params, "takes_context", lambda: False)()
    shape = getattr(config.conditioning.params, "context_shape", lambda: None)()
    if takes and shape is None:
        return [Issue(("conditioning", "kind"), f"backbone {config.backbone.kind!r} is conditioned on text contexts; "
                      "set [conditioning] kind = \"text\" with a text_encoder")]
    if shape is not None and not takes:
        return [Issue(("conditioning", "kind"), f"{config.conditioning.kind!r} gives contexts, but backbone "
                      f"{config.backbone.kind!r} takes class labels; use a backbone that takes contexts (\"mmdit\")")]
    return []


def _attention_checks(config: ExperimentConfig) -> list[Issue]:
    """An [[attention]] alignment pairs backbone blocks with encoder blocks; both must give attention,
    the teacher entry must run online, and the indices must exist."""
    issues = []
    backbone = config.backbone.params
    if config.attention and config.train.compile:
        issues.append(Issue(("train", "compile"), f"{config.train.compile!r}: recording attention for [[attention]] is "
                            "not compiled (it appends to a list inside the blocks); set train.compile = false"))
    for i, term in enumerate(config.attention):
        params, name = term.params, term.kind
        if not backbone.gives_attention():
            issues.append(Issue(("backbone", "kind"), f"{config.backbone.kind} does not record attention, which "
                                f"[[attention]] {name} aligns; use a backbone that does (the built-in SiT does)"))
        if len(params.blocks) != len(params.encoder_blocks) or not params.blocks:
            issues.append(Issue(("attention", i, "encoder_blocks"), f"{len(params.encoder_blocks)} encoder blocks for "
                                f"{len(params.blocks)} backbone blocks; give one per backbone block"))
        bad = [b for b in params.blocks if not 1 <= b <= backbone.num_blocks()]
        if bad:
            issues.append(Issue(("attention", i, "blocks"), f"{bad}: {config.backbone.kind} has blocks "
                                f"1..{backbone.num_blocks()}"))
        if params.source >= len(config.alignment):
            issues.append(Issue(("attention", i, "source"), f"{params.source}, but there are {len(config.alignment)} "
                                f"[[alignment]] entries; [[attention]] {name} uses that entry's encoder as teacher"))
            continue
        entry = config.alignment[params.source]
        encoder = entry.encoder.params
        if entry.features != "online":
            issues.append(Issue(("alignment", params.source, "features"), f"{entry.features!r}: [[attention]] {name} "
                                'needs the encoder online (a feature cache holds no attention); set features = "online"'))
        if not encoder.gives_attention():
            issues.append(Issue(("alignment", params.source, "encoder"), f"{entry.encoder.kind} gives no attention "
                                f"logits, which [[attention]] {name} needs; use a ViT encoder (e.g. dinov2-vit-b)"))
            continue
        top = encoder.num_blocks()
        bad = [b for b in params.encoder_blocks if top is not None and not 1 <= b <= top]
        if bad:
            issues.append(Issue(("attention", i, "encoder_blocks"), f"{bad}: {entry.encoder.kind} has blocks 1..{top}"))
    return issues


def _joint_checks(config: ExperimentConfig) -> list[Issue]:
    """A [[joint]] quantity needs a backbone that takes extra tokens and an entry whose encoder runs
    online (a feature cache holds patch tokens only) and, when read, gives a global token."""
    if len(config.joint) > 1:
        return [Issue(("joint",), f"{len(config.joint)} [[joint]] entries; one jointly denoised quantity per experiment")]
    issues = []
    for joint in config.joint:
        name, where = joint.kind, ("joint", 0, "source")
        if not config.backbone.params.takes_extra_tokens():
            issues.append(Issue(("backbone", "kind"), f"{config.backbone.kind} cannot take the extra tokens of [[joint]] "
                                f"{name}; use a backbone that does (the built-in SiT does)"))
        if joint.params.source >= len(config.alignment):
            issues.append(Issue(where, f"{joint.params.source}, but there are {len(config.alignment)} [[alignment]] entries; "
                                f"[[joint]] {name} takes its clean value from that entry's encoder"))
            continue
        entry = config.alignment[joint.params.source]
        if entry.features != "online":
            issues.append(Issue(("alignment", joint.params.source, "features"), f"{entry.features!r}: [[joint]] {name} needs "
                                'the encoder online (a feature cache holds patch tokens only); set features = "online"'))
        if joint.params.needs_global_token() and not entry.encoder.params.has_global_token():
            issues.append(Issue(("alignment", joint.params.source, "encoder"), f"{entry.encoder.kind} has no global (class) "
                                f"token, which [[joint]] {name} needs; use an encoder with one (e.g. dinov2-vit-b)"))
    return issues


def _guidance_checks(config: ExperimentConfig) -> list[Issue]:
    """A guidance's own scale / interval and [sample]'s must not disagree; null-label guidance needs a
    model trained with label dropout."""
    sample, params = config.sample, config.sample.guidance.params
    issues = []
    own_scale, own_interval = getattr(params, "scale", None), getattr(params, "interval", None)
    if own_scale is not None and sample.cfg_scale not in (1.0, own_scale):
        issues.append(Issue(("sample", "cfg_scale"), f"{sample.cfg_scale} differs from sample.guidance.scale = "
                            f"{own_scale}; set it in one place"))
    interval = tuple(sample.guidance_interval)
    if own_interval is not None and interval not in ((0.0, 1.0), tuple(own_interval)):
        issues.append(Issue(("sample", "guidance_interval"), f"{list(interval)} differs from sample.guidance.interval "
                            f"= {list(own_interval)}; set it in one place"))
    scale, _ = sample.guidance_settings()
    uses_null = getattr(params, "uses_null_label", lambda: True)()
    if uses_null and config.train.label_dropout == 0 and scale != 1.0:
        issues.append(Issue(("sample", "cfg_scale"), f"guidance needs the null label, which the model only has "
                            f"when train.label_dropout > 0; set cfg_scale = 1 or a label dropout, got {scale}"))
    return issues


def _batch_checks(config: ExperimentConfig, processes: int) -> list[Issue]:
    train = config.train
    if train.distributed == "fsdp" and train.mixed_precision == "fp16":
        return [Issue(("train", "distributed"), 'fsdp runs in float32 or bf16 (fp16 would need a sharded grad '
                      'scaler); set train.mixed_precision = "bf16"')]
    if train.global_batch_size % (processes * train.grad_accum_steps):
        return [
            Issue(
                ("train", "global_batch_size"),
                f"{train.global_batch_size} does not split evenly over {processes} process(es) x "
                f"train.grad_accum_steps={train.grad_accum_steps}; use a multiple of {processes * train.grad_accum_steps}",
            )
        ]
    return []


def _shape_checks(config: ExperimentConfig) -> list[Issue]:
    """Alignment depth, autoencoder downsampling, patch size and token counts must agree."""
    issues: list[Issue] = []
    backbone = config.backbone.params
    blocks = backbone.num_blocks()
    issues += _alignment_count(config, blocks)
    for i, entry in enumerate(config.alignment):
        if entry.depth > blocks:
            issues.append(
                Issue(
                    ("alignment", i, "depth"),
                    f"must be within 1..{blocks} ({config.backbone.kind} has {blocks} blocks), got {entry.depth}",
                )
            )
    resolution = config.data.params.resolution
    factor = config.autoencoder.params.downsample_factor()
    if resolution % factor:
        issues.append(
            Issue(
                ("data", "resolution"),
                f"{resolution} is not divisible by the {config.autoencoder.kind} autoencoder's downsampling "
                f"factor {factor}; use a multiple of {factor}",
            )
        )
        return issues
    side, multiple = resolution // factor, backbone.input_multiple()
    if side % multiple:
        issues.append(
            Issue(
                ("data", "resolution"),
                f"the backbone input is {side}x{side} ({resolution} px / {factor}), not a multiple of "
                f"{config.backbone.kind}'s patch size {multiple}",
            )
        )
        return issues
    tokens = backbone.num_tokens(side)
    for i, entry in enumerate(config.alignment):
        issues += _token_check(config, i, entry, resolution, tokens, side)
    return issues


def _alignment_count(config: ExperimentConfig, blocks: int) -> list[Issue]:
    """At most one entry per block and encoder: each entry costs a projector (and, before
    encoders were shared, a copy of its encoder): more is a generated file gone wrong."""
    entries = config.alignment
    encoders = {entry.encoder.identity() for entry in entries}
    usable = blocks * len(encoders)
    if len(entries) > usable:
        return [Issue(("alignment",), f"{len(entries)} entries, but {blocks} blocks x {len(encoders)} distinct "
                      f"encoder(s) allow at most {usable} (one per block and encoder)")]
    return []


def _token_check(config, i, entry, resolution, tokens, side) -> list[Issue]:
    where = ("alignment", i, "encoder")
    try:
        encoder_tokens = entry.encoder.params.tokens_for(resolution)
    except ValueError as exc:
        return [Issue(where, f"{entry.encoder.kind}: {exc}")]
    if encoder_tokens == tokens:
        return []
    patch = config.backbone.params.input_multiple()
    return [
        Issue(
            where,
            f"{entry.encoder.kind} gives {encoder_tokens} tokens at {resolution} px but {config.backbone.kind} "
            f"has {tokens} ({side}x{side} input / patch {patch}); use a backbone whose token grid is "
            f"{int(encoder_tokens ** 0.5)}x{int(encoder_tokens ** 0.5)} or another resolution",
        )
    ]
