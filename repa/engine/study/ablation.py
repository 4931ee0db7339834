"""`repa ablate`: expand an ablation file into runs, execute them (locally, with accelerate, or
on Slurm through submitit), then tabulate and plot their metrics.

    [ablation]
    name = "cpu-depth"
    base = "../quickstart.toml"         # relative to the ablation file
    output_dir = "exps/ablations"       # runs: <output_dir>/<name>/<run id = config hash>/
    mode = "grid"                       # or "zip"
    seeds = [0]
    steps = [500, 1000]                 # evaluate (and report) at these steps
    set = ["train.max_steps=1000"]      # overrides shared by every run

    [[ablation.axes]]                   # key + values ...
    key = "alignment.depth"
    values = [1, 2, 3]
    [[ablation.axes]]                   # ... or named variants, each a list of overrides
    name = "method"
    variants = { baseline = ["alignment=[]"], repa = [] }

    [ablation.table]
    rows = ["method"]                   # axis names (or keys); "step" and "seed" also work
    columns = ["step"]
    metrics = ["digits-fd", "digits-accuracy"]

    [ablation.launcher]
    kind = "local"                      # "local" | "accelerate" | "slurm"

`ema_stds = [0.05, 0.08]` in [ablation] also scores the post-hoc EMA at these widths (runs with
train.posthoc_ema); the table's "ema" dimension is then "classic" and each width.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from repa.config import ExperimentConfig, config_hash, load_experiment
from repa.config.source import key_lines, read_toml
from repa.engine.record import read_records
from repa.errors import ConfigError, RepaError
from repa.plugins.contract import metric_outputs
from repa.storage import write_atomic, writing

# ============================================================================
# The ablation file
# ============================================================================


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Axis(_Model):
    key: str | None = Field(None, description="experiment key to vary, e.g. alignment.depth")
    values: list[Any] | None = None
    name: str | None = Field(None, description="column/row name (default: the key)")
    variants: dict[str, list[str]] | None = Field(None, description="label -> overrides")

    @model_validator(mode="after")
    def _one_form(self):
        if (self.key is None or self.values is None) == (self.variants is None):
            raise ValueError("an axis needs either `key` and `values`, or `variants`")
        if self.variants is not None and not self.name:
            raise ValueError("an axis with `variants` needs a `name`")
        return self

    @property
    def label(self) -> str:
        return self.name or self.key

    def choices(self) -> list[tuple[str, list[str]]]:
        """(label, overrides) per value."""
        if self.variants is not None:
            return list(self.variants.items())
        return [(_show(v), [f"{self.key}={_toml(v)}"]) for v in self.values]


class Table(_Model):
    rows: list[str] = Field(default_factory=list)
    columns: list[str] = Field(default_factory=lambda: ["step"])
    metrics: list[str] = Field(default_factory=list)


class Launcher(_Model):
    kind: Literal["local", "accelerate", "slurm"] = "local"
    num_processes: int = Field(1, ge=1, description="accelerate: processes per run")
    slurm: dict[str, Any] = Field(default_factory=dict, description="submitit parameters (partition, gpus_per_node, ...)")
    folder: str = Field("slurm", description="submitit logs, under the ablation folder")


class Ablation(_Model):
    name: str
    base: str
    output_dir: str = "exps/ablations"
    mode: Literal["grid", "zip"] = "grid"
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    steps: list[int] = Field(default_factory=list)
    set: list[str] = Field(default_factory=list)
    axes: list[Axis] = Field(min_length=1)
    table: Table = Table()
    launcher: Launcher = Launcher()
    ema_stds: list[float] = Field(
        default_factory=list, description="post-hoc EMA widths scored beside the classic EMA (the runs track "
        "train.posthoc_ema); the table's \"ema\" dimension: \"classic\" and each width")

    @model_validator(mode="after")
    def _power_function_widths(self):
        from repa.config.schema import POWER_EMA_MAX_STD

        if any(not 0 < s < POWER_EMA_MAX_STD for s in self.ema_stds):
            raise ValueError(f"ema_stds: every width must be between 0 and {POWER_EMA_MAX_STD:.4f} (exclusive)")
        return self

    def ema_choices(self) -> list[float | None]:
        """None: the classic EMA; then each post-hoc width."""
        return [None, *self.ema_stds]


def _toml(value) -> str:
    import tomli_w

    return tomli_w.dumps({"v": value})[4:].strip()


def _show(value) -> str:
    return value if isinstance(value, str) else _toml(value)


def load_ablation(path: Path) -> Ablation:
    from pydantic import ValidationError

    from repa.config import Source, translate_errors

    raw, text = read_toml(path)
    if "ablation" not in raw:
        raise ConfigError([f"{path}:1: ablation: missing the [ablation] table (see experiments/ablations/)"])
    try:
        return Ablation.model_validate(raw["ablation"])
    except ValidationError as exc:
        source = Source(str(path), key_lines(text))
        raise ConfigError(source.format(translate_errors(exc, Ablation, ("ablation",)))) from None


# ============================================================================
# Expansion
# ============================================================================


class Run(_Model):
    run_id: str
    labels: dict[str, str]
    seed: int
    overrides: list[str]
    run_dir: str


def expand(ablation: Ablation, ablation_file: Path) -> tuple[list[Run], list[ExperimentConfig]]:
    """Every run, validated before anything starts (all errors reported together)."""
    base = (ablation_file.parent / ablation.base).resolve()
    choices = [axis.choices() for axis in ablation.axes]
    if ablation.mode == "zip":
        lengths = {len(c) for c in choices}
        if len(lengths) != 1:
            raise ConfigError([f"{ablation_file}: zip mode needs axes of equal length, got {sorted(lengths)}"])
        combos = list(zip(*choices))
    else:
        combos = list(itertools.product(*choices))
    root = Path(ablation.output_dir) / ablation.name
    runs, configs, errors = [], [], []
    for combo in combos:
        for seed in ablation.seeds:
            overrides = list(ablation.set) + [o for _, axis_overrides in combo for o in axis_overrides]
            overrides += [f"experiment.seed={seed}"]
            try:
                overrides += _report_overrides(ablation, load_experiment(base, overrides))
                config = load_experiment(base, overrides)
            except ConfigError as exc:
                errors += [f"run {dict(zip([a.label for a in ablation.axes], [c[0] for c in combo]))}: {line}"
                           for line in exc.lines]
                continue
            run_id = config_hash(config)
            overrides += [f"experiment.name={_toml(run_id)}", f"experiment.output_dir={_toml(str(root))}"]
            labels = {axis.label: label for axis, (label, _) in zip(ablation.axes, combo)}
            runs.append(Run(run_id=run_id, labels=labels, seed=seed, overrides=overrides, run_dir=str(root / run_id)))
            configs.append(config)
    if errors:
        raise ConfigError(errors)
    duplicates = {r.run_id for r in runs if sum(s.run_id == r.run_id for s in runs) > 1}
    if duplicates:
        raise ConfigError([f"{ablation_file}: runs {sorted(duplicates)} have identical configs; an axis changes nothing"])
    layout = check_layout(ablation, configs)
    if layout:
        raise ConfigError([f"{ablation_file}: {line}" for line in layout])
    return runs, configs


def _report_overrides(ablation: Ablation, config: ExperimentConfig) -> list[str]:
    """A checkpoint at every report step (and still at least as often as the base asks, so long
    runs stay resumable), none pruned before it is evaluated."""
    if not ablation.steps:
        return []
    base = config.train.checkpoint_every
    # A base frequency the run never reaches (50,000 in a 30-step run) would only add checkpoints.
    every = math.gcd(base, *ablation.steps) if base < config.train.max_steps else math.gcd(*ablation.steps)
    return [f"train.checkpoint_every={every}", "train.keep_checkpoints=1000000000"]


def evaluated_steps(config: ExperimentConfig) -> list[int]:
    """The steps `repa evaluate` scores in a run of the ablation: every checkpoint it writes."""
    every = config.train.checkpoint_every
    return sorted(set(range(every, config.train.max_steps + 1, every)) | {config.train.max_steps})


# What training logs (metrics.jsonl) besides the alignment losses align_loss_<k>.
TRAINING_SCALARS = ("loss", "denoising_loss", "grad_norm", "lr", "steps_per_s", "images_per_s", "peak_memory_gb",
                    "nonfinite_steps")


def check_layout(ablation: Ablation, configs: list[ExperimentConfig]) -> list[str]:
    """The table must name axes, report steps must be reached, metrics must be produced: found
    by --dry-run, not after every run has finished."""
    problems = []
    dims = [a.label for a in ablation.axes] + ["step", "seed"] + (["ema"] if ablation.ema_stds else [])
    for where in ("rows", "columns"):
        for name in getattr(ablation.table, where):
            if name not in dims:
                problems.append(f"ablation.table.{where}: {name!r} is not an axis; choose from {dims}")
    if ablation.ema_stds:
        if "ema" not in ablation.table.rows + ablation.table.columns:
            problems.append('ablation.table: with ablation.ema_stds, name "ema" in rows or columns (each width is '
                            "its own figure)")
        if any(not c.train.posthoc_ema for c in configs):
            problems.append('ablation.ema_stds: every run must track post-hoc EMA; add "train.posthoc_ema=[0.05, '
                            '0.10]" to ablation.set')
    shortest = min(c.train.max_steps for c in configs)
    late = [s for s in ablation.steps if s > shortest]
    if late:
        problems.append(f"ablation.steps: {late} lie beyond train.max_steps = {shortest}; those runs would never finish")
    for metric in ablation.table.metrics:
        lacking = [i for i, c in enumerate(configs) if not _produces(c, metric)]
        if lacking:
            problems.append(f"ablation.table.metrics: {metric!r} is neither in eval.metrics of every run "
                            f"({len(lacking)} lack it) nor a training scalar {list(TRAINING_SCALARS)}")
    return problems


def _produces(config: ExperimentConfig, metric: str) -> bool:
    if metric in TRAINING_SCALARS or metric.startswith("align_loss_"):
        return True
    return metric in {name for m in config.eval.metrics for name in metric_outputs(m.kind, m.params)}



# ============================================================================
# Cost estimate
# ============================================================================


def training_flops(config: ExperimentConfig) -> float:
    """~6 x parameters x tokens x samples (forward + backward of the backbone)."""
    import torch

    from repa.engine.build import build_network, input_geometry

    with torch.device("meta"):
        model = build_network(config, 1000)
    params = sum(p.numel() for p in model.parameters())
    side, _ = input_geometry(config)
    tokens = config.backbone.params.num_tokens(side)
    return 6.0 * params * tokens * config.train.global_batch_size * config.train.max_steps


def measured_flops_per_second() -> float:
    """This machine's float32 matmul rate (a rough ceiling for small models)."""
    import time

    import torch

    a = torch.randn(1024, 1024)
    a @ a
    started = time.perf_counter()
    for _ in range(8):
        a @ a
    return 8 * 2 * 1024**3 / (time.perf_counter() - started)


# ============================================================================
# Execution
# ============================================================================


def status_of(run: Run, max_steps: int, steps: list[int], evaluate: bool, ema_stds=()) -> str:
    """done | partial (resumable) | new | failed (the last attempt failed; it is retried)."""
    run_dir = Path(run.run_dir)
    if (run_dir / "ablation_failure.txt").is_file():
        return "failed"
    records = read_records(run_dir)
    trained = any(r.get("step") == max_steps and "loss" in r for r in records)

    def evaluated(std):
        return {r["step"] for r in records if "eval" in r and not r.get("during_training") and r.get("ema_std") == std}

    if trained and (not evaluate or all(set(steps) <= evaluated(std) for std in [None, *ema_stds])):
        return "done"
    return "partial" if has_checkpoints(run) else "new"


def has_checkpoints(run: Run) -> bool:
    from repa.engine.checkpoint import complete_checkpoints

    return bool(complete_checkpoints(Path(run.run_dir) / "checkpoints"))


def commands(run: Run, base: Path, launcher: Launcher, resume: bool, evaluate: bool,
             ema_stds=()) -> list[list[str]]:
    """Train (resuming when a checkpoint exists), then evaluate every checkpoint (and the post-hoc EMA
    at each of `ema_stds`)."""
    sets = [a for o in run.overrides for a in ("--set", o)]
    prefix = [sys.executable, "-m", "repa.cli"]
    if launcher.kind == "accelerate" or launcher.num_processes > 1:
        # --multi_gpu starts the processes (without it accelerate silently runs one); on a machine
        # without GPUs they run on the CPU over gloo.
        several = ["--multi_gpu", "--num_machines", "1"] if launcher.num_processes > 1 else []
        prefix = [sys.executable, "-m", "accelerate.commands.launch", *several, "--num_processes",
                  str(launcher.num_processes), "--dynamo_backend", "no", "-m", "repa.cli"]
    train = prefix + ["run", str(base), "--no-progress", *sets] + (["--resume"] if resume else [])
    steps = []
    if evaluate:  # sampling is shared by the same processes; scoring happens on the main one
        steps.append(prefix + ["evaluate", run.run_dir, "--no-progress"])
        if ema_stds:
            steps.append(prefix + ["evaluate", run.run_dir, "--no-progress", "--ema-std", *map(str, ema_stds)])
    return [train] + steps


class AblationStopped(RepaError):
    exit_code = 130


class StopForwarder:
    """While entered, a stop signal (those `repa run` checkpoints on) is remembered and passed on to the
    running command as SIGTERM, which `repa run` answers with a checkpoint; the ablation then starts
    nothing more. SIGTERM, not the signal itself: a terminal's Ctrl-C reaches the command too, and a
    second SIGINT would make it quit without its checkpoint."""

    def __init__(self):
        self.received: int | None = None
        self.child: subprocess.Popen | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopForwarder":
        from repa.engine.processes import STOP_SIGNALS

        self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signum
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)


# `repa run` and `repa evaluate` stopped by a signal (after their checkpoint): not a failure.
STOPPED_EXIT = 130


def execute(run: Run, cmds: list[list[str]], log, stops: StopForwarder | None = None) -> str:
    """Run the commands in order: "done", "failed" (the reason kept in the run folder, shown in the table)
    or "stopped" (by a signal: the run resumes where it stopped next time)."""
    with writing(Path(run.run_dir)):
        Path(run.run_dir).mkdir(parents=True, exist_ok=True)
    failure = Path(run.run_dir) / "ablation_failure.txt"
    failure.unlink(missing_ok=True)
    for cmd in cmds:
        if stops is not None and stops.received:
            return "stopped"
        process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
        if stops is not None:
            stops.child = process
        try:
            stdout, stderr = process.communicate()
        finally:
            if stops is not None:
                stops.child = None
        entry = f"$ {' '.join(cmd)}\n{stdout}{stderr}\n"
        with writing(Path(run.run_dir) / "ablation.log", len(entry)), open(Path(run.run_dir) / "ablation.log", "a") as f:
            f.write(entry)
        if process.returncode == STOPPED_EXIT or (stops is not None and stops.received):
            return "stopped"
        if process.returncode != 0:
            lines = [ln for ln in stderr.strip().splitlines() if ln.strip()] or [f"exit {process.returncode}"]
            write_atomic(failure, lines[-1].removeprefix("error: "))
            log(f"run {run.run_id} failed: {lines[-1]}")
            return "failed"
    return "done"


class SubmititRun:
    """A picklable job for submitit: executes the run's commands on the cluster node."""

    def __init__(self, run: Run, cmds: list[list[str]]):
        self.run, self.cmds = run, cmds

    def __call__(self) -> bool:
        return execute(self.run, self.cmds, print) == "done"


def still_queued(run: Run, folder: Path) -> bool:
    """Whether this run's last Slurm job is pending or running (not to be submitted twice)."""
    job_file = Path(run.run_dir) / "ablation_job.txt"
    if not job_file.is_file():
        return False
    try:
        from submitit.slurm.slurm import SlurmJob

        state = SlurmJob(folder=str(folder), job_id=job_file.read_text().strip()).state
    except Exception:  # not on a Slurm cluster (or sacct unavailable): nothing is queued there
        return False
    return state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED")


def submit_slurm(jobs: list[tuple[Run, list[list[str]]]], launcher: Launcher, folder: Path, cluster: str | None = None):
    import submitit

    jobs = [(run, cmds) for run, cmds in jobs if not still_queued(run, folder)]
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    executor.update_parameters(**launcher.slurm)
    submitted = []
    for run, cmds in jobs:
        job = executor.submit(SubmititRun(run, cmds))
        (Path(run.run_dir)).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(run.run_dir) / "ablation_job.txt", str(job.job_id))
        submitted.append(job)
    return submitted
