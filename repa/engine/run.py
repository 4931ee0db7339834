"""`repa run EXPERIMENT.toml`: prepare the run folder, train, report where everything is."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

from repa.config import ExperimentConfig, config_hash, to_toml

log = logging.getLogger("repa")


def run_dir_of(config: ExperimentConfig) -> Path:
    return Path(config.experiment.output_dir) / config.experiment.name


LOGGERS = ("repa", "repa.record")  # messages (also on the console) and the periodic metric lines


def attach_log_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    return handler


def detach_log_file(handler: logging.Handler) -> None:
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def resume_command(experiment_file: str, overrides: list[str]) -> str:
    """The command that continues this very run (the --set arguments choose its folder and config)."""
    sets = [f"--set {shlex.quote(o)}" for o in overrides]
    return " ".join(["repa run", shlex.quote(experiment_file), *sets, "--resume"])


def run_experiment(config: ExperimentConfig, experiment_file: str, resume=None, progress: bool = True,
                   overrides: list[str] = ()) -> int:
    from repa.engine.trainer import Trainer

    from repa.engine.checkpoint import complete_checkpoints
    from repa.errors import RepaError

    run_dir = run_dir_of(config)
    if not resume and complete_checkpoints(run_dir / "checkpoints"):  # before anything in it is overwritten
        raise RepaError(f"{run_dir / 'checkpoints'}: this run already has checkpoints; pass --resume to continue it, "
                        "or choose another experiment.name")
    trainer = Trainer(config, run_dir, resume=resume, progress=progress)
    trainer.setup()  # builds and checks every component: a broken one stops here, nothing written
    handler = None
    if trainer.acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.resolved.toml").write_text(f"# config hash {config_hash(config)}\n{to_toml(config)}")
        handler = attach_log_file(run_dir)
        log.info("repa: run %s (config hash %s) in %s on %d process(es), %s", config.experiment.name,
                 config_hash(config), run_dir, trainer.acc.num_processes, trainer.device)
    try:
        step = trainer.run()
        if trainer.acc.is_main_process:
            if trainer.stopped:
                log.info("repa: stopped at step %d; checkpoint written. Resume with: %s",
                         step, resume_command(experiment_file, list(overrides)))
            else:
                log.info("repa: done at step %d; samples in %s, metrics in %s", step, run_dir / "samples",
                         run_dir / "metrics.jsonl")
    finally:
        if handler is not None:
            detach_log_file(handler)
    return 130 if trainer.stopped else 0
