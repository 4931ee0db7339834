"""`repa run EXPERIMENT.toml`: prepare the run folder, train, report where everything is."""

from __future__ import annotations

import logging
from pathlib import Path

from repa.config import ExperimentConfig, config_hash, to_toml

log = logging.getLogger("repa")


def run_dir_of(config: ExperimentConfig) -> Path:
    return Path(config.experiment.output_dir) / config.experiment.name


def attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logging.getLogger("repa").addHandler(handler)
    return handler


def run_experiment(config: ExperimentConfig, experiment_file: str, resume=None, progress: bool = True) -> int:
    from repa.engine.trainer import Trainer

    from repa.engine.checkpoint import complete_checkpoints
    from repa.errors import RepaError

    run_dir = run_dir_of(config)
    if not resume and complete_checkpoints(run_dir / "checkpoints"):  # before anything in it is overwritten
        raise RepaError(f"{run_dir / 'checkpoints'}: this run already has checkpoints; pass --resume to continue it, "
                        "or choose another experiment.name")
    trainer = Trainer(config, run_dir, resume=resume, progress=progress)
    handler = None
    if trainer.acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.resolved.toml").write_text(f"# config hash {config_hash(config)}\n{to_toml(config)}")
        handler = attach_log_file(run_dir)
        log.info("repa: run %s (config hash %s) in %s on %d process(es), %s", config.experiment.name,
                 config_hash(config), run_dir, trainer.acc.num_processes, trainer.device)
    try:
        step = trainer.run()
    finally:
        if handler is not None:
            logging.getLogger("repa").removeHandler(handler)
            handler.close()
    if trainer.acc.is_main_process:
        if trainer.stopped:
            log.info("repa: stopped at step %d; checkpoint written. Resume with: repa run %s --resume",
                     step, experiment_file)
        else:
            log.info("repa: done at step %d; samples in %s, metrics in %s", step, run_dir / "samples",
                     run_dir / "metrics.jsonl")
    return 130 if trainer.stopped else 0
