"""`repa run EXPERIMENT.toml`: prepare the run folder, train, report where everything is."""

from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import sys
from pathlib import Path

from repa.config import ExperimentConfig, config_hash, to_toml
from repa.engine.checkpoint import complete_checkpoints
from repa.engine.record import run_dir_of
from repa.engine.processes import main_decides
from repa.engine.locks import RunLock
from repa.precision import on_cpu
from repa.threads import policy
from repa.errors import RepaError
from repa.storage import write_atomic, writing

log = logging.getLogger("repa")


LOGGERS = ("repa", "repa.record")  # messages (also on the console) and the periodic metric lines


class RunLogHandler(logging.FileHandler):
    """log.txt; a write that fails (a full disk) is said once on the console, not as a traceback per line."""

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        if not self.failed:
            self.failed = True
            print(f"warning: {self.baseFilename}: cannot write the log; messages go to the terminal only",
                  file=sys.stderr)


def attach_log_file(run_dir: Path) -> logging.Handler:
    handler = RunLogHandler(run_dir / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    return handler


def record_failure(handler: logging.Handler, exc: BaseException) -> None:
    """The error that ends a run, in its log.txt (the console gets it from the command)."""
    message = str(exc) if isinstance(exc, RepaError) else f"{type(exc).__name__}: {exc}"
    handler.emit(logging.LogRecord("repa", logging.ERROR, __file__, 0, "error: %s", (message,), None))


def check_output_location(config: ExperimentConfig, experiment_file: str) -> None:
    """experiment.output_dir and the run folder must be folders (or not exist yet)."""
    output, run_dir = Path(config.experiment.output_dir), run_dir_of(config)
    for path, key in ((output, "experiment.output_dir"), (run_dir, "experiment.name")):
        if path.exists() and not path.is_dir():
            raise RepaError(f"{experiment_file}: {key}: {path} is a file, not a folder; "
                            f"choose another {key} or move the file")


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
    from repa.engine.train.trainer import Trainer

    run_dir = run_dir_of(config)
    check_output_location(config, experiment_file)
    lock = RunLock(run_dir)
    lock.check_free()  # a live run holds the folder: say so before building anything
    policy().start(config.train.threads, "cpu" if on_cpu(config.train.device) else "cuda")
    if not resume:
        refuse_existing_checkpoints(run_dir)
    trainer = Trainer(config, run_dir, resume=resume, progress=progress)
    with stop_signals_refuse_setup():
        trainer.setup()  # builds and checks every component: a broken one stops here, nothing written
    handler = None

    def claim_run_folder():
        with writing(run_dir):
            run_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # held until this process ends; a second `repa run` here is refused
        if not resume:
            refuse_existing_checkpoints(run_dir)  # written by a run that finished meanwhile
        write_atomic(run_dir / "config.resolved.toml", f"# config hash {config_hash(config)}\n{to_toml(config)}")

    try:
        main_decides(trainer.acc, claim_run_folder)  # refused: every process of the launch stops
        if trainer.acc.is_main_process:
            handler = attach_log_file(run_dir)
            log.info("repa: run %s (config hash %s) in %s on %d process(es), %s", config.experiment.name,
                     config_hash(config), run_dir, trainer.acc.num_processes, trainer.device)
        step = trainer.run()
        if trainer.acc.is_main_process:
            if trainer.stopped:
                log.info("repa: stopped at step %d; checkpoint written. Resume with: %s",
                         step, resume_command(experiment_file, list(overrides)))
            else:
                log.info("repa: done at step %d; samples in %s, metrics in %s", step, run_dir / "samples",
                         run_dir / "metrics.jsonl")
                log.info("next: %s", next_command(config, experiment_file, run_dir))
    except BaseException as exc:
        if handler is not None and not isinstance(exc, KeyboardInterrupt):
            record_failure(handler, exc)
        raise
    finally:
        if handler is not None:
            detach_log_file(handler)
        lock.release()
    return 130 if trainer.stopped else 0


class StoppedBeforeTraining(RepaError):
    exit_code = 130


@contextlib.contextmanager
def stop_signals_refuse_setup():
    """A stop signal while the run is being built (weights loading, encoder training on first use) ends it
    at once, in one line, before anything is written."""
    from repa.engine.processes import STOP_SIGNALS

    def stop(signum, frame):
        raise StoppedBeforeTraining(f"{signal.Signals(signum).name} received while the run was being built; stopped "
                                    "before training, nothing was written")

    previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def next_command(config: ExperimentConfig, experiment_file: str, run_dir: Path) -> str:
    """What a researcher does after training: score the checkpoints, or draw samples to look at."""
    if config.eval.metrics:
        return f"repa evaluate {shlex.quote(str(run_dir))}  (scores every checkpoint with {', '.join(m.kind for m in config.eval.metrics)})"
    return (f"repa sample {shlex.quote(experiment_file)}  (draws from the latest checkpoint; set [eval] metrics "
            f"to score it with repa evaluate {shlex.quote(str(run_dir))})")


def refuse_existing_checkpoints(run_dir: Path) -> None:
    """A fresh run must not overwrite another's checkpoints."""
    if complete_checkpoints(run_dir / "checkpoints"):
        raise RepaError(f"{run_dir / 'checkpoints'}: this run already has checkpoints; pass --resume to continue "
                        "it, or choose another experiment.name")
