"""Orchestration of `repa ablate`: expand, validate, estimate, execute or submit, report."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

from rich.table import Table as RichTable

from repa.engine.study.ablation import (
    AblationStopped, StopForwarder, commands, evaluated_steps, execute, expand, has_checkpoints, load_ablation,
    measured_flops_per_second, status_of, still_queued, submit_slurm, training_flops,
)
from repa.engine.study.ablation_report import collect, write_reports
from repa.console import output_console, progress_bar
from repa.storage import write_atomic, writing

log = logging.getLogger("repa")


def run_ablation(path: Path, dry_run: bool = False, launcher: str | None = None, slurm_cluster: str | None = None) -> int:
    ablation = load_ablation(path)
    if launcher:
        ablation = ablation.model_copy(update={"launcher": ablation.launcher.model_copy(update={"kind": launcher})})
    runs, configs = expand(ablation, path)
    base = (path.parent / ablation.base).resolve()
    root = Path(ablation.output_dir) / ablation.name
    max_steps = {r.run_id: c.train.max_steps for r, c in zip(runs, configs)}
    evaluate = bool(ablation.steps) and bool(configs[0].eval.metrics)
    statuses = {r.run_id: status_of(r, max_steps[r.run_id], ablation.steps, evaluate, ablation.ema_stds) for r in runs}
    console = output_console()  # a terminal's width (columns fold, never cut); elsewhere the full width
    _print_plan(console, ablation, runs, configs, statuses)
    if dry_run:
        return 0
    with writing(root):
        root.mkdir(parents=True, exist_ok=True)
    write_atomic(root / "runs.json", json.dumps([r.model_dump() for r in runs], indent=1))
    todo = [r for r in runs if statuses[r.run_id] != "done"]
    jobs = [(r, commands(r, base, ablation.launcher, has_checkpoints(r), evaluate, ablation.ema_stds)) for r in todo]
    if ablation.launcher.kind == "slurm":
        folder = root / ablation.launcher.folder
        queued = [r for r, _ in jobs if still_queued(r, folder)]
        submitted = submit_slurm(jobs, ablation.launcher, folder, slurm_cluster)
        if submitted or queued:
            console.print(f"submitted {len(submitted)} runs ({', '.join(j.job_id for j in submitted)}), "
                          f"{len(queued)} still queued from before; run `repa ablate {path}` again to collect the "
                          "table once they finish")
            if slurm_cluster != "local":
                return 0
            for job in submitted:
                job.result()
    else:
        _run_locally(console, jobs, path)
    statuses = {r.run_id: status_of(r, max_steps[r.run_id], ablation.steps, evaluate, ablation.ema_stds) for r in runs}
    rows = collect(ablation, runs, statuses, max_steps)
    header, body, plots = write_reports(ablation, runs, rows, root)
    _print_table(console, ablation.name, header, body)
    console.print(f"tables: {root / 'table.md'}, {root / 'table.csv'}, {root / 'table.tex'}; plots: {root / 'plots'}")
    failed = [r for r in runs if statuses[r.run_id] == "failed"]
    return 1 if failed else 0


def _run_locally(console, jobs, path: Path) -> None:
    """One run after another; a stop signal stops the running one with its checkpoint, and nothing more
    starts (`repa ablate` again continues: a stopped run resumes, its records as if never stopped)."""
    with StopForwarder() as stops, progress_bar("ablation runs") as bar:  # a run's output: its ablation.log
        task = bar.add_task("runs", total=len(jobs), rate="")
        for i, (run, cmds) in enumerate(jobs, 1):
            console.print(f"[{i}/{len(jobs)}] run {run.run_id} {run.labels} seed {run.seed}"
                          f"{' (resuming)' if has_checkpoints(run) else ''}: log in {run.run_dir}/ablation.log",
                          markup=False, highlight=False)
            if execute(run, cmds, lambda line: console.print(line, markup=False, highlight=False), stops) == "stopped":
                cause = signal.Signals(stops.received).name if stops.received else "a signal to the run itself"
                raise AblationStopped(f"stopped by {cause} during run {run.run_id} (its checkpoint is kept; "
                                      f"{i - 1} of {len(jobs)} runs finished); `repa ablate {path}` continues where "
                                      "it stopped")
            bar.advance(task)


def _print_plan(console, ablation, runs, configs, statuses) -> None:
    table = RichTable(title=f"ablation {ablation.name}: {len(runs)} runs ({ablation.mode})")
    for column in ["run id", *[a.label for a in ablation.axes], "seed", "steps", "status"]:
        table.add_column(column, overflow="fold")
    for run, config in zip(runs, configs):
        table.add_row(run.run_id, *run.labels.values(), str(run.seed), str(config.train.max_steps), statuses[run.run_id])
    console.print(table)
    _print_additions(console, ablation, configs)
    flops = sum(training_flops(c) for c, r in zip(configs, runs) if statuses[r.run_id] != "done")
    rate = measured_flops_per_second()
    console.print(f"cost estimate (runs left): {flops / 1e15:.3g} PFLOP of training (6 x params x tokens x samples); "
                  f"~{flops / (0.3 * rate) / 3600:.2g} h at 30% of this machine's measured {rate / 1e9:.0f} GFLOP/s, "
                  f"~{flops / (0.4 * 989e12) / 3600:.2g} GPU-h on H100s at 40% of bf16 peak (sampling not included)")


def _print_additions(console, ablation, configs) -> None:
    """What the ablation sets besides the file's own overrides: a checkpoint at every report step, and
    the steps evaluated (every checkpoint) where they are more than the report steps."""
    if not ablation.steps:
        return
    every = sorted({c.train.checkpoint_every for c in configs})
    line = (f"each run also sets train.checkpoint_every={'/'.join(map(str, every))} (a checkpoint at every report "
            f"step {', '.join(map(str, ablation.steps))}) and keeps every checkpoint")
    scored = sorted({s for c in configs for s in evaluated_steps(c)})
    if configs[0].eval.metrics and scored != sorted(ablation.steps):
        line += f"; repa evaluate scores each checkpoint: steps {', '.join(map(str, scored))}"
    console.print(line, markup=False, highlight=False)


def _print_table(console, name, header, body) -> None:
    table = RichTable(title=name)
    for column in header:
        table.add_column(column, overflow="fold")
    for row in body:
        table.add_row(*row)
    console.print(table)
