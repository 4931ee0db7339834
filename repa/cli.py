"""The `repa` command. Subcommands import their heavy modules only when they run.

"Official" below means the official REPA code, sihyun-yu/REPA @ 67f7145."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path

from repa import __version__
from repa.errors import ConfigError, RepaError

TRACEBACK_ENV = "REPA_TRACEBACK"
COMPUTE_COMMANDS = {"run", "sample", "evaluate", "preprocess", "bench", "analyze"}  # where PyTorch's threads set the pace


def _add_autoencoder_args(p) -> None:
    p.add_argument("--autoencoder", default="sd-vae", help="autoencoder component (`repa plugins autoencoder`)")
    p.add_argument("--variant", help="its `variant` parameter (sd-vae: ft-mse, the default, or ft-ema)")
    p.add_argument("--vae-path", help="its `path` parameter (sd-vae: a local AutoencoderKL directory; default: HF cache)")


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("experiment", help="experiment TOML file")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a key, typed by the schema (repeatable), e.g. --set train.max_steps=1000",
    )


def _load(args):
    """The experiment as `repa run` trains it: on the processes this command was launched with."""
    from repa.config import load_experiment

    return load_experiment(args.experiment, args.overrides, processes=launched_processes())


def launched_processes() -> int:
    """Processes of this launch: torchrun and accelerate export WORLD_SIZE to every process."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


# ============================================================================
# validate / plugins
# ============================================================================


def cmd_validate(args) -> int:
    from repa.config import config_hash, to_toml

    config = _load(args)
    print(f"# {args.experiment}: valid; config hash {config_hash(config)}")
    print(to_toml(config), end="")
    commands = recipe_commands(Path(args.experiment)) or [f"repa run {args.experiment}"]
    print(f"next: {commands[0]}", file=sys.stderr)
    for command in commands[1:]:
        print(f"      {command}", file=sys.stderr)
    return 0


def recipe_commands(experiment: Path) -> list[str]:
    """The commands an experiment file's own `# Run:` comment gives (continued on the `#` lines below
    it), e.g. `accelerate launch ...` for a multi-GPU recipe; [] without one."""
    import re

    try:
        lines = experiment.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    for i, line in enumerate(lines):
        found = re.match(r"#\s*Run:\s*(\S.*)$", line)
        if found:
            commands = [found.group(1).strip()]
            for more in lines[i + 1:]:
                if not re.match(r"#\s{2,}\S", more) or re.match(r"#\s*\w+:\s", more):
                    break
                commands.append(more.lstrip("#").strip())
            return commands
    return []


def cmd_run(args) -> int:
    from repa.engine.train.run import run_experiment

    config = _load(args)
    resume = True if args.resume == "latest" else args.resume
    return run_experiment(config, args.experiment, resume=resume, progress=not args.no_progress,
                          overrides=args.overrides)


def cmd_preprocess(args) -> int:
    from pathlib import Path

    from repa.engine.prep import preprocess

    if args.step == "images":
        summary = preprocess.preprocess_images(Path(args.src), Path(args.dest), args.resolution, args.workers,
                                               Path(args.labels) if args.labels else None)
        print(f"{args.dest}/images: {summary.written} written, {summary.kept} already there, "
              f"{len(summary.skipped)} skipped")
        from repa.console import shown

        for path, reason in summary.skipped:
            print(f"  skipped {shown(path)}: {shown(reason)}")
        print(f"next: repa preprocess latents {args.dest} {args.dest}  (or train on the images: [data] kind = "
              f"\"folder\", path = \"{args.dest}\", latents = \"\")")
        return 0
    if args.step == "coco":
        return _preprocess_coco(args)
    if args.step == "latents":
        written = preprocess.encode_latents(Path(args.src), Path(args.dest), _autoencoder(args).build(),
                                            args.batch_size)
        print(f"{args.dest}/vae-sd: {written} latents written by this process")
        print(f"next: repa preprocess pack {args.dest} PACKED_DIR --resolution RES  (or train on the folder: "
              f"[data] kind = \"folder\", path = \"{args.dest}\")")
        return 0
    if args.step == "reference":
        from repa.components.metric.adm import write_reference_batch

        count = write_reference_batch(Path(args.src), Path(args.out), args.resolution, args.keep, args.weights,
                                      args.batch_size, dinov2_weights=args.dinov2_weights, fd_dinov2=args.fd_dinov2)
        print(f"{args.out}: statistics of {count} images, {min(count, args.keep)} of them kept as arr_0; "
              f"use it as eval.reference or --reference")
        return 0
    if args.step == "pack":
        written = preprocess.pack(Path(args.src), Path(args.dest), args.resolution, args.shard_size, args.workers,
                                  num_classes=args.num_classes)
        print(f"{args.dest}: {written} samples packed")
        print(f"next: in the experiment, [data] kind = \"packed\", path = \"{args.dest}\"")
        return 0
    from repa.engine.prep.features import cache_features
    from repa.precision import effective_precision, on_cpu

    config = load_experiment_args(args)
    # The precision training will run the encoder in.
    precision = effective_precision(config.train.mixed_precision, config.train.device)
    written = cache_features(config, args.encoder, Path(args.dest), args.batch_size, precision,
                             device="cpu" if on_cpu(config.train.device) else "cuda")
    print(f"{args.dest}: {written} samples of {args.encoder} features; use features = \"{args.dest}\" "
          f"in its [[alignment]] entry")
    return 0


def _autoencoder(args):
    """The --autoencoder component (validated, not built), with --variant / --vae-path as its `variant` /
    `path` parameters."""
    from repa.config import validate_component

    given = {"variant": args.variant, "path": args.vae_path}
    return validate_component("autoencoder", args.autoencoder, {k: v for k, v in given.items() if v is not None},
                              "--autoencoder")


def _preprocess_coco(args) -> int:
    from pathlib import Path

    from repa.config import validate_component
    from repa.engine.prep.coco import SPLITS, preprocess_coco

    text_encoder = validate_component("text_encoder", args.text_encoder,
                                      {"weights": args.text_weights} if args.text_weights else {}, "--text-encoder")
    summaries = preprocess_coco(Path(args.src), Path(args.dest), _autoencoder(args), text_encoder,
                                args.split or SPLITS, args.resolution, args.workers, args.batch_size, args.year)
    for split, summary in summaries.items():
        print(f"{args.dest}/{split}: {summary.images} images; written by this process: {summary.cropped} PNGs, "
              f"{summary.encoded} moments, {summary.contexts} caption contexts; "
              f"{len(summary.left_out)} images without a caption left out")
    if "val" in summaries:
        print(f"next: repa preprocess reference {args.dest}/val {args.dest}/val_reference.npz --resolution "
              f"{args.resolution}  (FID's reference batch), then data.path = \"{args.dest}\" and eval.reference "
              f"in experiments/mmdit_coco_repa.toml")
    return 0


PROMPT_SAMPLES = 8  # samples per prompt when --num-samples is not given


def _prompts(args) -> list[str]:
    """--prompt (repeatable) and --prompts FILE (one per line, blank lines skipped), in that order."""
    from pathlib import Path

    from repa.errors import RepaError

    prompts = list(args.prompt or [])
    if args.prompts:
        path = Path(args.prompts)
        if not path.is_file():
            raise RepaError(f"--prompts {args.prompts}: no such file; give a text file with one prompt per line")
        prompts += [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not prompts:
            raise RepaError(f"--prompts {args.prompts}: holds no prompt; write one per line")
    return prompts


def cmd_sample(args) -> int:
    from pathlib import Path

    from repa.engine.generate.sampling import SampleRun, default_out, experiment_checkpoint
    from repa.presets import PAPER_PRESET, RELEASED_EXPERIMENT

    overrides = (PAPER_PRESET if args.preset == "paper" else []) + args.overrides
    if args.backbone:
        overrides.append(f'backbone="{args.backbone}"')  # the named preset as released, not the file's table
    config = _sampling_config(args.experiment, overrides, RELEASED_EXPERIMENT)
    own_run = args.experiment if not args.backbone else None  # --backbone: the released preset's weights
    checkpoint = Path(args.checkpoint) if args.checkpoint else experiment_checkpoint(config, own_run)
    labels = {"uniform": "random"}.get(args.labels, args.labels) or config.sample.labels
    prompts = _prompts(args)
    num = args.num_samples or (PROMPT_SAMPLES * len(prompts) if prompts else 50_000)
    out = Path(args.out) if args.out else default_out(config, checkpoint, args.seed,
                                                      labels if not prompts else "prompts:" + "\n".join(prompts))
    npz = SampleRun(config, checkpoint, out, num, args.seed, args.batch_size or config.sample.batch_size,
                    labels, progress=not args.no_progress, prompts=prompts).run()
    if prompts:
        print(f"{out / 'grid.png'}: the prompts' samples, one row per prompt")
    print(f"{npz}: {num} samples (PNGs in {out / 'images'})")
    if args.experiment and config.eval.metrics:  # its [eval] metrics and reference
        print(f"next: repa evaluate {npz} --experiment {args.experiment}")
    else:
        print(f"next: repa evaluate {npz} --metrics fid,sfid,is,precision,recall --reference REFERENCE.npz "
              f"(the ADM reference batch, e.g. VIRTUAL_imagenet256_labeled.npz)")
    return 0


def _sampling_config(experiment, overrides, default_raw):
    from repa.config import load_experiment, validate_experiment
    from repa.config import Source

    if experiment:
        return load_experiment(experiment, overrides)
    return validate_experiment(default_raw, Source("<released SiT-XL/2 defaults>"), overrides)


def cmd_evaluate(args) -> int:
    from pathlib import Path

    from repa.cli_tables import print_results
    from repa.engine.generate.evaluation import evaluate_images, evaluate_run, read_samples
    from repa.presets import METRICS_ONLY_EXPERIMENT

    target = Path(args.target)
    if args.ema_std and not target.is_dir():
        raise RepaError(f"{target}: --ema-std evaluates a run folder (its post-hoc EMA snapshots), not a samples file")
    if target.is_dir():
        results = evaluate_run(target, args.overrides, progress=not args.no_progress, ema_stds=args.ema_std or ())
        print_results(f"{target}: checkpoints evaluated now", results)
        print(f"results appended to {target / 'metrics.jsonl'}; next: compare runs with repa ablate ABLATION.toml "
              f"(see experiments/ablations/)")
        return 0
    if not args.experiment and not args.metrics:
        raise RepaError(f"{target}: say which metrics: --metrics fid,sfid,is,precision,recall or --experiment FILE")
    config = _sampling_config(args.experiment, args.overrides + ([f"eval.metrics={_toml_list(args.metrics)}"]
                                                                  if args.metrics else []),
                              METRICS_ONLY_EXPERIMENT)
    images, labels, prompts = read_samples(target)
    scores = evaluate_images(config.eval.metrics, images, labels, args.reference or config.eval.reference, prompts)
    print_results(f"{target}: {len(images)} samples", [scores])
    return 0


def cmd_ema(args) -> int:
    from pathlib import Path

    from repa.engine.train.phema import write_reconstructions

    for path in write_reconstructions(Path(args.run), args.std, args.step, args.inputs):
        print(path)
    print(f"next: repa sample {Path(args.run) / 'config.resolved.toml'} --checkpoint FILE, or repa evaluate "
          f"{args.run} --ema-std {' '.join(map(str, args.std))}")
    return 0


def _toml_list(names: str) -> str:
    return "[" + ", ".join(f'"{n.strip()}"' for n in names.split(",") if n.strip()) + "]"


def cmd_ablate(args) -> int:
    from pathlib import Path

    from repa.engine.study.ablate import run_ablation

    return run_ablation(Path(args.ablation), dry_run=args.dry_run, launcher=args.launcher,
                        slurm_cluster=args.slurm_cluster)


def cmd_bench(args) -> int:
    import json

    from repa.bench import run

    figures = run(args.name, device=args.device)
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


def cmd_analyze(args) -> int:
    from pathlib import Path

    from repa.cli_tables import print_analysis_tables
    from repa.engine.study.analysis import Settings
    from repa.engine.study.analyze import analyze_command

    settings = Settings(times=_times(args.t), samples=args.samples, token_images=args.token_images,
                        batch_size=args.batch_size, latest_only=args.latest, split=args.split)
    found, notes, written, out = analyze_command(
        args.targets, args.encoders, args.experiment, args.overrides, args.analyses, settings,
        Path(args.out) if args.out else None, progress=not args.no_progress)
    print_analysis_tables(found)
    for note in notes:
        print(f"note: {note}")
    plots = f" and {len(written) - 2} plots in {out / 'plots'}" if len(written) > 2 else ""
    print(f"{out}: {', '.join(p.name for p in written[:2])}{plots}")
    return 0


def _ema_width(text: str) -> float:
    """A post-hoc EMA width: a float strictly between 0 and the plain running mean's 0.2887."""
    from repa.config.schema import POWER_EMA_MAX_STD

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number such as 0.05, got {text!r}") from None
    if not 0 < value < POWER_EMA_MAX_STD:
        raise argparse.ArgumentTypeError(f"a power-function EMA width is between 0 and {POWER_EMA_MAX_STD:.4f} "
                                         f"(exclusive), got {value}")
    return value


def _at_least(low: int, high: int | None = None):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value}")
        return value

    return parse


SEED_MAX = 2**63 - 1  # torch generators take 64-bit seeds


def _batch_size(text: str):
    if text == "auto":
        return text
    return _at_least(1)(text)


def _times(text: str) -> tuple[float, ...]:
    try:
        times = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise RepaError(f"--t {text}: expected comma-separated times in [0, 1], e.g. 0.1,0.5,0.9") from None
    if not times or not all(0.0 <= t <= 1.0 for t in times):
        raise RepaError(f"--t {text}: every t must lie in [0, 1] (0: data, 1: noise)")
    return times


def load_experiment_args(args):
    from repa.config import load_experiment

    return load_experiment(args.experiment, args.overrides)


def cmd_plugins(args) -> int:
    from repa.cli_tables import print_plugins

    if args.check:
        from repa.cli_tables import print_check

        return print_check(args.kind)
    return print_plugins(args.kind)


# ============================================================================
# parser
# ============================================================================


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="repa", description="REPA: representation alignment for diffusion transformers."
    )
    parser.add_argument("--version", action="version", version=f"repa {__version__}")
    parser.add_argument(
        "-p", "--plugin", dest="plugins", action="append", default=[], metavar="NAME",
        help="also load this plugin (entry-point name, distribution or module path); see REPA_PLUGINS",
    )
    parser.add_argument(
        "--no-autoload", action="store_true",
        help="load only built-ins and --plugin ones (same as REPA_DISABLE_PLUGIN_AUTOLOAD=1)",
    )
    parser.add_argument(
        "--traceback", action="store_true",
        help=f"on an error, print the Python traceback too (same as {TRACEBACK_ENV}=1)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("validate", help="check an experiment file and print the resolved config")
    _add_config_args(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("run", help="train an experiment (under accelerate launch / torchrun for several GPUs)")
    _add_config_args(p)
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from the latest complete checkpoint, or from this checkpoint folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=cmd_run)

    pre = sub.add_parser("preprocess", help="prepare datasets: images, latents, pack, features, reference, coco")
    steps = pre.add_subparsers(dest="step", metavar="STEP", required=True)
    p = steps.add_parser("images", help="class folders -> ADM center crop -> official layout (images/ + dataset.json)")
    p.add_argument("src")
    p.add_argument("dest")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--labels", help="labels file for a flat folder: JSON {name: class} or lines `name,class`")
    p.add_argument("--workers", type=int, default=0, help="processes (default: all cores)")
    p.set_defaults(func=cmd_preprocess)
    p = steps.add_parser("latents", help="images/ -> autoencoder moments in vae-sd/ (official layout)")
    p.add_argument("src")
    p.add_argument("dest")
    _add_autoencoder_args(p)
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_preprocess)
    p = steps.add_parser("coco", help="MS-COCO images + captions -> the official text-to-image layout (PNGs, "
                                      "moments, caption contexts, empty_context.npy)")
    p.add_argument("src", help="the folder holding COCO's train2014/, val2014/ and annotations/ as its zips unpack")
    p.add_argument("dest")
    p.add_argument("--split", action="append", choices=("train", "val"), help="repeatable (default: train and val)")
    p.add_argument("--year", type=int, default=2014, help="COCO release: 2014 (the official data) or 2017")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--workers", type=int, default=0, help="crop processes (default: all cores)")
    p.add_argument("--batch-size", type=int, default=64, help="images (and captions) encoded at once")
    _add_autoencoder_args(p)
    p.add_argument("--text-encoder", default="clip-vit-l14", help="text encoder component (`repa plugins text_encoder`)")
    p.add_argument("--text-weights", help="its `weights` parameter (clip-vit-l14: the CLIP checkpoint; default: "
                                          "the Hugging Face cache)")
    p.set_defaults(func=cmd_preprocess)
    p = steps.add_parser("pack", help="official layout -> packed memory-mapped shards + manifest")
    p.add_argument("src")
    p.add_argument("dest")
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--shard-size", type=int, default=8192)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_preprocess)
    p = steps.add_parser("reference", help="a folder of real images -> an ADM-format reference batch (.npz)")
    p.add_argument("src")
    p.add_argument("out", help="the .npz to write (arr_0, mu, sigma, mu_s, sigma_s; mu_dinov2, sigma_dinov2)")
    p.add_argument("--resolution", type=int, default=256, help="ADM center crop size (the samples' resolution)")
    p.add_argument("--keep", type=int, default=10_000, help="images stored as arr_0 for precision/recall (ADM: 10,000)")
    p.add_argument("--weights", help="FID Inception weights file (default: the usual places)")
    p.add_argument("--fd-dinov2", action="store_true",
                   help="also store FD-DINOv2's statistics (mu_dinov2, sigma_dinov2; DINOv2 ViT-L/14, as edm2)")
    p.add_argument("--dinov2-weights", help="DINOv2 ViT-L/14 weights file (default: the usual places)")
    p.add_argument("--batch-size", type=int, default=100)
    p.set_defaults(func=cmd_preprocess)
    p = steps.add_parser("features", help="cache an alignment encoder's tokens for an experiment's dataset")
    _add_config_args(p)
    p.add_argument("dest")
    p.add_argument("--encoder", required=True, help="one of the experiment's alignment encoders")
    p.add_argument("--batch-size", type=int, default=64)
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("sample", help="generate N images (PNG + ADM .npz) from a checkpoint")
    p.add_argument("experiment", nargs="?", help="experiment TOML (default: the released SiT-XL/2 REPA model)")
    p.add_argument("--checkpoint", help="run folder, checkpoint folder, official .pt or bare state dict "
                                        "(default: the latest checkpoint of the experiment's run; without an "
                                        "experiment, or with --backbone, the released SiT-XL/2 REPA checkpoint)")
    p.add_argument("--backbone", help="backbone preset, e.g. SiT-XL/2 (default: the experiment's)")
    p.add_argument("--num-samples", type=_at_least(1),
                   help=f"default: 50,000, or {PROMPT_SAMPLES} per prompt with --prompt / --prompts")
    p.add_argument("--prompt", action="append", metavar="TEXT",
                   help="draw for this text (text-conditioned experiments; repeatable): sample i gets prompt i mod "
                        "their number, and grid.png shows them")
    p.add_argument("--prompts", metavar="FILE", help="a text file of prompts, one per line")
    p.add_argument("--out", help="output folder (images/ + samples.npz)")
    p.add_argument("--seed", type=_at_least(0, SEED_MAX // 1_000_004), default=0,
                   help="sample i depends only on (seed, i)")
    p.add_argument("--labels", choices=["random", "balanced", "uniform"],
                   help="class labels: uniform at random (official; \"uniform\" is its earlier name) or the same "
                        "count per class (default: sample.labels)")
    p.add_argument("--preset", choices=["paper"], help="paper: SDE Euler-Maruyama, 250 steps, cfg 1.8 on [0, 0.7], "
                                                       "sd-vae ft-ema")
    p.add_argument("--batch-size", type=_batch_size,
                   help='samples per process per forward, or "auto" (default: sample.batch_size)')
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("evaluate", help="FID/sFID/IS/precision/recall (ADM) or the digits metrics of samples or a run")
    p.add_argument("target", help="samples .npz (arr_0 uint8 [N,H,W,3]) or a run folder (evaluates new checkpoints)")
    p.add_argument("--reference", help="ADM reference batch .npz or an image folder")
    p.add_argument("--metrics", help="comma-separated metric names (default: the experiment's eval.metrics)")
    p.add_argument("--experiment", help="experiment TOML whose [eval] to use")
    p.add_argument("--ema-std", nargs="+", type=_ema_width, metavar="STD",
                   help="a run: evaluate the post-hoc EMA reconstructed at these widths (train.posthoc_ema) instead "
                        "of the classic EMA, at the checkpoint steps")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("ema", help="reconstruct the post-hoc EMA of a run at any width (Karras et al. 2024)")
    p.add_argument("run", help="run folder trained with train.posthoc_ema (its phema/ snapshots)")
    p.add_argument("--std", nargs="+", type=_ema_width, required=True, metavar="STD",
                   help="relative widths, e.g. 0.05 0.10 (edm2's best ImageNet-512 XL: 0.045-0.085)")
    p.add_argument("--step", type=_at_least(1), help="reconstruct at this snapshot step (default: the last)")
    p.add_argument("--inputs", nargs="+", type=_ema_width, metavar="STD",
                   help="reconstruct from the snapshots of these tracked widths only (default: every tracked width)")
    p.set_defaults(func=cmd_ema)

    p = sub.add_parser("analyze", help="CKNNA, linear probes and spatial scores of a run's hidden states or an encoder")
    p.add_argument("targets", nargs="*", metavar="RUN_DIR",
                   help="run folders (every checkpoint) or checkpoint folders; two or more are overlaid")
    p.add_argument("--encoder", dest="encoders", action="append", default=[], metavar="NAME",
                   help="compare with this encoder (default: the runs' aligned encoders); alone: analyse its tokens")
    p.add_argument("--experiment", help="experiment TOML whose data the encoders are analysed on (without RUN_DIR)")
    p.add_argument("--analyses", help="comma-separated analysis names (default: all; `repa plugins analysis`)")
    p.add_argument("--t", default="0.1,0.3,0.5,0.7,0.9", help="noise levels (0: data, 1: noise)")
    p.add_argument("--samples", type=_at_least(4), default=10_000, help="images analysed (default 10,000, or all there are)")
    p.add_argument("--token-images", type=_at_least(1), default=100,
                   help="images whose every token is kept (per-token CKNNA, spatial scores)")
    p.add_argument("--batch-size", type=_at_least(1), default=64)
    p.add_argument("--latest", action="store_true", help="only the latest checkpoint of each run")
    p.add_argument("--split", default="train",
                   help="the data split read (the digits also have 'heldout', images no model trained on, and "
                        "'all'; datasets without splits read all their images)")
    p.add_argument("--out", help="output folder (default: RUN_DIR/analysis, or RUN_DIR/analysis/vs-OTHER)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of --experiment")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("ablate", help="run an ablation grid and write its table (Markdown, CSV, LaTeX) and plots")
    p.add_argument("ablation", help="ablation TOML (see experiments/ablations/)")
    p.add_argument("--dry-run", action="store_true", help="expand and validate every run, print ids and cost; run nothing")
    p.add_argument("--launcher", choices=["local", "accelerate", "slurm"], help="override [ablation.launcher].kind")
    p.add_argument("--slurm-cluster", choices=["slurm", "local", "debug"], help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_ablate)

    from repa.bench import BENCHMARKS

    p = sub.add_parser("bench", help="performance benchmarks (figures, not tests); see benchmarks/README.md")
    p.add_argument("name", choices=sorted(BENCHMARKS))
    p.add_argument("--device", help="cpu or cuda (default: cuda when present)")
    p.add_argument("--out", help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("plugins", help="list registered components, their parameters and providers")
    p.add_argument("kind", nargs="?", help="only this kind (backbone, encoder, sampler, ...)")
    p.add_argument("--check", action="store_true",
                   help="build every component on tiny inputs and check it against its contract (repa.testing)")
    p.set_defaults(func=cmd_plugins)
    return parser


def _configure_plugins(args) -> None:
    if not (args.plugins or args.no_autoload):
        return
    from repa.plugins import load_components, set_components

    set_components(load_components(autoload=False if args.no_autoload else None, plugins=args.plugins))


def _user_lines(exc: Exception) -> list[str]:
    """The message; for errors re-raised from a DataLoader worker, without the worker's traceback."""
    text = str(exc)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        return [last.split(": ", 1)[1] if last.startswith(type(exc).__module__) else last]
    return text.splitlines()


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if args.command in COMPUTE_COMMANDS:
            from repa.threads import before_torch_loads

            before_torch_loads()
        _configure_plugins(args)
        if args.command in COMPUTE_COMMANDS - {"run"}:  # `repa run`: its train.threads and device decide
            from repa.threads import policy

            policy().start(device="cuda" if _cuda_available() else "cpu")
        return args.func(args) or 0
    except RepaError as exc:
        if args.traceback or os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
            traceback.print_exc()
        # Config errors are already located lines (FILE:LINE: key: message); others get a prefix.
        prefix = "" if isinstance(exc, ConfigError) else "error: "
        for line in _user_lines(exc):
            print(f"{prefix}{line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a write the disk refused, where no write site said it already
        from repa.storage import describe, write_errno

        number = write_errno(exc)
        if number is None:
            raise
        if args.traceback or os.environ.get(TRACEBACK_ENV, "").strip() not in ("", "0"):
            traceback.print_exc()
        where = getattr(exc, "filename", None) or "<unknown path>"
        print(f"error: {describe(where, number, action='read or write')}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
