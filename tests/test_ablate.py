"""`repa ablate`: expansion and validation, the table and plots, resuming, failures, launchers,
and the two example plugins as rows of a CPU ablation table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from repa.engine.study.ablation import Ablation, expand, load_ablation
from repa.errors import ConfigError
from tests.conftest import TINY, run_cli

pytestmark = pytest.mark.slow

EVAL = '\n[eval]\nnum_samples = 8\nmetrics = ["digits-fd", "digits-accuracy"]\n'


def write(tmp_path, body: str) -> Path:
    (tmp_path / "base.toml").write_text(TINY.replace("{out}", str(tmp_path / "unused")) + EVAL)
    path = tmp_path / "ablation.toml"
    path.write_text(body.replace("{out}", str(tmp_path / "runs")))
    return path


GRID = """
[ablation]
name = "grid"
base = "base.toml"
output_dir = "{out}"
seeds = [0, 1]
steps = [2]
set = ["train.max_steps=2"]

[[ablation.axes]]
key = "alignment.depth"
values = [1, 2]

[[ablation.axes]]
name = "lambda"
variants = { low = ["alignment.coeff=0.25"], high = ["alignment.coeff=1.0"] }

[ablation.table]
rows = ["alignment.depth"]
columns = ["lambda"]
metrics = ["digits-accuracy"]
"""


def test_grid_and_zip_expansion_with_stable_ids(tmp_path):
    path = write(tmp_path, GRID)
    ablation = load_ablation(path)
    runs, configs = expand(ablation, path)
    assert len(runs) == 2 * 2 * 2
    assert {(r.labels["alignment.depth"], r.labels["lambda"], r.seed) for r in runs} == {
        (d, c, s) for d in ("1", "2") for c in ("low", "high") for s in (0, 1)}
    assert all(c.alignment[0].depth == int(r.labels["alignment.depth"]) for r, c in zip(runs, configs))
    assert [r.run_id for r in runs] == [r.run_id for r in expand(ablation, path)[0]]
    zipped = load_ablation(write(tmp_path, GRID.replace('seeds = [0, 1]', 'seeds = [0]\nmode = "zip"')))
    assert [(r.labels["alignment.depth"], r.labels["lambda"]) for r in expand(zipped, path)[0]] == [
        ("1", "low"), ("2", "high")]


@pytest.mark.parametrize("name", sorted(p.name for p in (Path(__file__).parents[1] / "experiments" / "ablations").glob("*.toml")))
def test_every_shipped_ablation_file_expands_into_valid_runs(name):
    """Every run of every file in experiments/ablations validates (plugins included: the README installs them)."""
    path = Path(__file__).parents[1] / "experiments" / "ablations" / name
    ablation = load_ablation(path)
    runs, configs = expand(ablation, path)
    assert len(runs) == len(configs) >= 2 and len({run.run_id for run in runs}) == len(runs)


def test_dry_run_validates_every_run_before_anything_starts(tmp_path):
    bad = write(tmp_path, GRID.replace("values = [1, 2]", "values = [1, 5]"))
    result = run_cli("ablate", str(bad), "--dry-run")
    assert result.returncode == 2
    assert "run {'alignment.depth': '5', 'lambda': 'low'}" in result.stderr
    assert "alignment[0].depth: must be within 1..2" in result.stderr
    assert not (tmp_path / "runs").exists()
    good = run_cli("ablate", str(write(tmp_path, GRID)), "--dry-run")
    assert good.returncode == 0 and "8 runs" in good.stdout and "cost estimate" in good.stdout
    assert not (tmp_path / "runs").exists()


def test_bad_ablation_file_gives_a_located_line(tmp_path):
    path = write(tmp_path, GRID.replace('key = "alignment.depth"\nvalues = [1, 2]', 'values = [1, 2]'))
    with pytest.raises(ConfigError) as info:
        load_ablation(path)
    assert info.value.lines == [f"{path}:10: ablation.axes[0]: an axis needs either `key` and `values`, or `variants`"]


PLUGINS = """
[ablation]
name = "plugins"
base = "base.toml"
output_dir = "{out}"
seeds = [0]
steps = [2, 4]
set = ["train.max_steps=4"]

[[ablation.axes]]
name = "method"
variants = { baseline = ["alignment=[]"], repa = [], gram = ['alignment.loss="gram"'], timm = [
    'alignment.encoder={ kind = "timm-vit", model = "vit_small_patch16_224.augreg_in21k", resize = "native", weights = "WEIGHTS" }',
    "data.resolution=64", "backbone.patch_size=16"], broken = ["optim.lr=1e30", "train.max_nonfinite_steps=1"] }

[ablation.table]
rows = ["method"]
columns = ["step"]
metrics = ["digits-fd", "digits-accuracy", "loss"]
"""


@pytest.fixture
def timm_weights(tmp_path):
    import timm

    torch.manual_seed(0)
    path = tmp_path / "vit_small.pth"
    torch.save(timm.create_model("vit_small_patch16_224.augreg_in21k", num_classes=0).state_dict(), path)
    return path


def test_cpu_table_with_both_example_plugins_then_resume_without_redoing(tmp_path, timm_weights):
    path = write(tmp_path, PLUGINS.replace("WEIGHTS", str(timm_weights)))
    result = run_cli("ablate", str(path))
    assert result.returncode == 1, result.stderr  # the broken run fails, the others finish
    root = tmp_path / "runs" / "plugins"
    table = (root / "table.md").read_text().splitlines()
    rows = {line.split("|")[1].strip(): line for line in table[2:]}
    assert set(rows) == {"baseline", "repa", "gram", "timm", "broken"}
    assert "failed: 1 non-finite steps (loss or gradient) in a row" in rows["broken"]
    for method in ("baseline", "repa", "gram", "timm"):
        cells = [c.strip() for c in rows[method].split("|")[2:-1]]
        assert len(cells) == 6 and all(c != "-" and not c.startswith("failed") for c in cells), rows[method]
    with open(root / "table.csv") as f:
        long = list(csv.DictReader(f))
    assert {(r["method"], r["metric"]) for r in long} >= {("gram", "digits-fd"), ("timm", "digits-accuracy")}
    assert "\\begin{tabular}" in (root / "table.tex").read_text()
    assert sorted(p.name for p in (root / "plots").iterdir()) == ["digits-accuracy.png", "digits-fd.png", "loss.png"]
    runs = {r["labels"]["method"]: r for r in json.loads((root / "runs.json").read_text())}
    gram_config = (Path(runs["gram"]["run_dir"]) / "config.resolved.toml").read_text()
    assert 'kind = "gram"' in gram_config

    # Interrupt one run: drop its last checkpoint and results; the rerun resumes only that one.
    repa_dir = Path(runs["repa"]["run_dir"])
    finished = {m: (Path(r["run_dir"]) / "metrics.jsonl").read_text() for m, r in runs.items() if m != "broken"}
    kept = [line for line in finished["repa"].splitlines() if json.loads(line)["step"] <= 2]
    (repa_dir / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    import shutil

    shutil.rmtree(repa_dir / "checkpoints" / "0000004")
    again = run_cli("ablate", str(path))
    assert "(resuming)" in again.stdout and "repa" in again.stdout
    for method in ("baseline", "gram", "timm"):
        assert (Path(runs[method]["run_dir"]) / "metrics.jsonl").read_text() == finished[method]
    assert "resumed from" in (repa_dir / "ablation.log").read_text()
    assert sorted(p.name for p in (repa_dir / "checkpoints").iterdir()) == ["0000002", "0000004"]
    steps = [json.loads(line)["step"] for line in (repa_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(3) == 1 and steps.count(4) == 2  # resumed at 2: steps 3, 4 trained once, 4 evaluated


def test_submitit_launcher_runs_jobs(tmp_path):
    path = write(tmp_path, GRID.replace("seeds = [0, 1]", "seeds = [0]").replace("values = [1, 2]", "values = [1]")
                 .replace('variants = { low = ["alignment.coeff=0.25"], high = ["alignment.coeff=1.0"] }',
                          'variants = { low = ["alignment.coeff=0.25"] }'))
    result = run_cli("ablate", str(path), "--launcher", "slurm", "--slurm-cluster", "local")
    assert result.returncode == 0, result.stderr
    assert "submitted 1 runs" in result.stdout
    (run,) = json.loads((tmp_path / "runs" / "grid" / "runs.json").read_text())
    assert (Path(run["run_dir"]) / "ablation_job.txt").is_file()
    assert "| 1 |" in (tmp_path / "runs" / "grid" / "table.md").read_text()
    (tmp_path / "runs" / "grid" / "table.md").unlink()
    again = run_cli("ablate", str(path), "--launcher", "slurm")  # all done: nothing to submit, the table is written
    assert again.returncode == 0, again.stderr
    assert "submitted" not in again.stdout and "| 1 |" in (tmp_path / "runs" / "grid" / "table.md").read_text()


def test_accelerate_launcher_starts_every_process(tmp_path):
    """The command the accelerate launcher builds, run for real: 2 processes (gloo on this CPU)."""
    from repa.engine.study.ablation import Launcher, Run, commands, execute

    base = tmp_path / "base.toml"
    base.write_text(TINY.replace("{out}", str(tmp_path / "exps")) + EVAL)
    run = Run(run_id="acc", labels={}, seed=0, overrides=["train.max_steps=2", "experiment.name=\"acc\""],
              run_dir=str(tmp_path / "exps" / "acc"))
    train, evaluate = commands(run, base, Launcher(kind="accelerate", num_processes=2), False, True)
    assert evaluate[: train.index("run")] == train[: train.index("run")]  # evaluation shares the launcher
    assert execute(run, [train], print), (tmp_path / "exps" / "acc" / "ablation.log").read_text()
    assert "on 2 process(es)" in (tmp_path / "exps" / "acc" / "log.txt").read_text()
    assert sorted(p.name for p in (tmp_path / "exps" / "acc" / "checkpoints" / "0000002").glob("rng-*")) == [
        "rng-0.pt", "rng-1.pt"]


def test_cells_say_when_some_of_their_runs_failed_or_are_missing():
    from repa.engine.study.ablation_report import pivot

    ablation = Ablation.model_validate({"name": "x", "base": "b.toml", "axes": [{"key": "a", "values": [1, 2]}],
                                        "seeds": [0, 1], "table": {"rows": ["a"], "columns": [], "metrics": ["m"]}})
    row = lambda a, seed, value, status="done", reason="": {"a": a, "seed": str(seed), "step": "2", "run": f"{a}{seed}",  # noqa: E731
                                                           "status": status, "reason": reason, "m": value}
    rows = [row("1", 0, 10.0), row("1", 1, None, "failed", "boom"), row("2", 0, 12.0), row("2", 1, None, "new"),
            row("3", 0, 1.0), row("3", 1, 3.0), row("4", 0, None, "failed", "nan")]
    _, body, cells = pivot(ablation, rows)
    assert body == [["1", "10 (1/2 runs; failed: boom)"], ["2", "12 (1/2 runs; 1 not done)"], ["3", "2 ± 1.4"],
                    ["4", "failed: nan"]]
    assert [c["n"] for c in cells] == [1, 1, 2, 0]


def test_dry_run_checks_the_table_layout_the_steps_and_the_metrics(tmp_path):
    bad = write(tmp_path, GRID.replace('rows = ["alignment.depth"]', 'rows = ["depth"]')
                .replace('metrics = ["digits-accuracy"]', 'metrics = ["digits-accuracy", "fid"]')
                .replace("steps = [2]", "steps = [2, 3]"))
    result = run_cli("ablate", str(bad), "--dry-run")
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{bad}: ablation.table.rows: 'depth' is not an axis; choose from ['alignment.depth', 'lambda', 'step', 'seed']",
        f"{bad}: ablation.steps: [3] lie beyond train.max_steps = 2; those runs would never finish",
        f"{bad}: ablation.table.metrics: 'fid' is neither in eval.metrics of every run (8 lack it) nor a training "
        "scalar ['loss', 'denoising_loss', 'grad_norm', 'lr', 'steps_per_s', 'images_per_s', 'peak_memory_gb', "
        "'nonfinite_steps']"]


def test_report_checkpoints_keep_the_bases_frequency(tmp_path):
    path = write(tmp_path, GRID.replace("steps = [2]", "steps = [8]").replace('"train.max_steps=2"', '"train.max_steps=8"'))
    (tmp_path / "base.toml").write_text((tmp_path / "base.toml").read_text().replace("checkpoint_every = 2",
                                                                                   "checkpoint_every = 4"))
    runs, configs = expand(load_ablation(path), path)
    assert {c.train.checkpoint_every for c in configs} == {4}  # gcd(4, 8), not 8


PREEMPTED = """
[ablation]
name = "stop"
base = "base.toml"
output_dir = "{out}"
seeds = [0]
steps = [4, 8]
set = ["train.max_steps=8", "train.log_every=4", "eval.metrics=[]"]

[[ablation.axes]]
name = "method"
variants = { repa = [] }

[ablation.table]
rows = ["method"]
columns = ["step"]
metrics = ["loss", "denoising_loss", "align_loss_0", "grad_norm"]
"""

# A term that adds nothing to the loss and, during the step PREEMPT_AT, sends SIGINT to the process that
# started training (`repa ablate`), as a user's `kill -INT` or a scheduler would.
PREEMPT_TERM = """
import os
import signal

import torch
from repa.interfaces import Term, TermParams
from repa.plugins import hookimpl


class Preempt(Term):
    def loss(self, ctx):
        if ctx.step == int(os.environ.get("PREEMPT_AT", "-1")):
            os.kill(os.getppid(), signal.SIGINT)
        return torch.zeros(len(ctx.t))


@hookimpl
def repa_register_terms(registry):
    registry.add("preempt", lambda params, *, facts: Preempt(), TermParams)
"""


def test_a_stopped_ablation_keeps_the_runs_checkpoint_and_resumes_to_the_uninterrupted_table(tmp_path):
    """The signal reaches the ablation only: it is forwarded to the run, which checkpoints mid-window; the
    run is listed as stopped, not failed, and the resumed run's records equal an uninterrupted run's."""
    (tmp_path / "preempt_term.py").write_text(PREEMPT_TERM)
    (tmp_path / "base.toml").write_text(TINY.replace("{out}", str(tmp_path / "unused")) + '\n[[term]]\nkind = "preempt"\n')
    env = {"PYTHONPATH": str(tmp_path), "REPA_PLUGINS": "preempt_term"}
    tables = {}
    for name, preempt_at in (("straight", "-1"), ("stopped", "4")):
        path = tmp_path / f"{name}.toml"
        path.write_text(PREEMPTED.replace("{out}", str(tmp_path / name)))
        result = run_cli("ablate", str(path), env={**env, "PREEMPT_AT": preempt_at})
        root = tmp_path / name / "stop"
        if name == "stopped":
            assert result.returncode == 130, result.stderr[-2000:]
            line = result.stderr.strip().splitlines()[-1]
            assert line.startswith("error: stopped by SIGINT during run ") and "continues where it stopped" in line
            (run_dir,) = [p for p in root.iterdir() if p.is_dir()]
            assert not (run_dir / "ablation_failure.txt").exists()
            assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["0000002", "0000004", "0000005"]
            assert [json.loads(r)["step"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()] == [4]
            result = run_cli("ablate", str(path), env=env)
            assert "(resuming)" in result.stdout
        assert result.returncode == 0, result.stderr[-2000:]
        tables[name] = (root / "table.md").read_text()
    assert tables["stopped"] == tables["straight"]


def test_a_base_frequency_the_run_never_reaches_adds_no_checkpoints_and_the_plan_says_what_is_added(tmp_path):
    path = write(tmp_path, GRID.replace("steps = [2]", "steps = [6]").replace('"train.max_steps=2"', '"train.max_steps=6"'))
    (tmp_path / "base.toml").write_text((tmp_path / "base.toml").read_text().replace("checkpoint_every = 2",
                                                                                   "checkpoint_every = 50000"))
    runs, configs = expand(load_ablation(path), path)
    assert {c.train.checkpoint_every for c in configs} == {6}  # not gcd(50000, 6) = 2: no steps 2 and 4
    plan = run_cli("ablate", str(path), "--dry-run")
    assert "each run also sets train.checkpoint_every=6 (a checkpoint at every report step 6)" in plan.stdout
    (tmp_path / "base.toml").write_text((tmp_path / "base.toml").read_text().replace("checkpoint_every = 50000",
                                                                                   "checkpoint_every = 4"))
    plan = run_cli("ablate", str(path), "--dry-run")  # gcd(4, 6) = 2: checkpoints, so scores, at 2, 4 and 6
    assert "train.checkpoint_every=2" in plan.stdout and "repa evaluate scores each checkpoint: steps 2, 4, 6" in plan.stdout


POSTHOC = """
[ablation]
name = "posthoc"
base = "base.toml"
output_dir = "{out}"
seeds = [0]
steps = [4]
set = ["train.max_steps=4", "train.posthoc_ema=[0.05, 0.10]"]
ema_stds = [0.07]

[[ablation.axes]]
key = "alignment.coeff"
values = [0.5]

[ablation.table]
rows = ["ema"]
columns = ["step"]
metrics = ["digits-fd"]
"""


def test_post_hoc_ema_widths_are_rows_of_the_table(tmp_path):
    path = write(tmp_path, POSTHOC)
    result = run_cli("ablate", str(path))
    assert result.returncode == 0, result.stderr
    root = tmp_path / "runs" / "posthoc"
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in (root / "table.md").read_text().splitlines()[2:]}
    (run,) = json.loads((root / "runs.json").read_text())
    records = [json.loads(line) for line in (Path(run["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    scored = {r.get("ema_std"): r["eval"]["digits-fd"] for r in records if "eval" in r and r["step"] == 4}
    assert set(scored) == {None, 0.07} and scored[None] != scored[0.07]
    assert rows == {"classic": f"{scored[None]:.4g}", "0.07": f"{scored[0.07]:.4g}"}
    again = run_cli("ablate", str(path), "--dry-run")
    assert "done" in again.stdout  # both EMAs scored: nothing left to run

    unlaid = write(tmp_path, POSTHOC.replace('rows = ["ema"]', 'rows = ["alignment.coeff"]')
                   .replace(', "train.posthoc_ema=[0.05, 0.10]"', ""))
    lines = run_cli("ablate", str(unlaid), "--dry-run").stderr.strip().splitlines()
    assert lines == [
        f'{unlaid}: ablation.table: with ablation.ema_stds, name "ema" in rows or columns (each width is its own figure)',
        f'{unlaid}: ablation.ema_stds: every run must track post-hoc EMA; add "train.posthoc_ema=[0.05, 0.10]" to '
        "ablation.set"]
