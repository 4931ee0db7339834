"""`repa analyze`: which runs, encoders and analyses, where the outputs go (the measuring itself:
`repa.engine.study.analysis`; the tables: `repa.engine.study.analysis_report`)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

from repa.errors import RepaError

log = logging.getLogger("repa")

ANALYSIS_ORDER = ["cknna", "cknna-tokens", "linear-probe", "lds", "cds", "srss", "rmsc"]  # table columns


def analyze_command(target_paths: list[str], encoder_names: list[str], experiment_file: str | None,
                    overrides: list[str], analysis_names: str | None, settings, out: Path | None,
                    progress: bool = True):
    """-> (tables, notes, written files, output folder)."""
    from repa.config import load_experiment
    from repa.engine.study.analysis import analyze, encoder_components, load_target
    from repa.engine.study.analysis_report import tables, write_outputs

    if not target_paths and not encoder_names:
        raise RepaError("repa analyze: give run folders to analyse (RUN_DIR ...) or an encoder (--encoder NAME)")
    if not target_paths and not experiment_file:
        raise RepaError("repa analyze --encoder: say which data with --experiment FILE "
                        "(e.g. --experiment experiments/quickstart.toml)")
    if target_paths and (experiment_file or overrides):
        raise RepaError("repa analyze: --experiment and --set are for --encoder alone; a run folder brings its own "
                        "experiment (its config.resolved.toml)")
    targets = distinct_names([load_target(Path(t), settings.latest_only) for t in target_paths])
    experiment = load_experiment(experiment_file, overrides) if experiment_file else None
    encoders = encoder_components(targets, [run_encoder(name, targets) for name in encoder_names])
    if targets and not encoders:
        log.warning("note: no encoder to compare with (no run has an [[alignment]] entry): CKNNA is not measured; "
                    "name one with --encoder NAME")
    rows, notes = analyze(targets, experiment, encoders, chosen_analyses(analysis_names), settings, progress=progress)
    out = out or analysis_folder(target_paths)
    depths = {t.name: t.depths for t in targets}
    runs = {t.name: {"checkpoints": [str(c) for c in t.checkpoints], "aligned_blocks": t.depths} for t in targets}
    written = write_outputs(rows, notes, settings.describe(), runs, out, depths)
    return tables(rows), notes, written, out


def distinct_names(targets: list) -> list:
    """Two targets with one name (two checkpoints of a run, same-named runs elsewhere) get its parent's."""
    counts = Counter(t.name for t in targets)
    for target in targets:
        if counts[target.name] > 1:
            last = target.checkpoints[-1]
            target.name = f"{target.name}@{last.name}" if len(target.checkpoints) == 1 else \
                f"{last.parent.parent.parent.name}/{target.name}"
    return targets


def run_encoder(name: str, targets):
    """A run's own configuration of that encoder (its weights, its seed) when it aligns with it."""
    from repa.config import validate_component

    for target in targets:
        for entry in target.config.alignment:
            if entry.encoder.kind == name:
                return entry.encoder
    return validate_component("encoder", name, {}, "--encoder")


def chosen_analyses(names: str | None) -> dict:
    """The analyses named (comma-separated), or every registered one in table order."""
    from repa.config import validate_component
    from repa.plugins import get_components

    registered = sorted(get_components()["analysis"].names(), key=lambda n: (ANALYSIS_ORDER.index(n)
                                                                             if n in ANALYSIS_ORDER else 99, n))
    chosen = [n.strip() for n in names.split(",") if n.strip()] if names else registered
    return {name: validate_component("analysis", name, {}, "--analyses").build() for name in chosen}


def analysis_folder(targets: list[str]) -> Path:
    """<first run>/analysis[/vs-<other runs>], or ./analysis for encoders alone."""
    if not targets:
        return Path("analysis")
    first = Path(targets[0])
    run_dir = first.parent.parent if first.parent.name == "checkpoints" else first
    others = [Path(t).name for t in targets[1:]]
    return run_dir / "analysis" / ("vs-" + "-".join(others) if others else "")
