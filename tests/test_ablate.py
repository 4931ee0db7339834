"""`repa ablate`: expansion and validation, the table and plots, resuming, failures, launchers,
and the two example plugins as rows of a CPU ablation table."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from repa.engine.ablation import Ablation, expand, load_ablation
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
    assert info.value.lines == [f"{path}:10: ablation.axes[0]: an axis needs either `key` and `values`, or `variants`, "
                                f"got {{'values': [1, 2]}}"]


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
    assert "failed: 1 non-finite losses in a row" in rows["broken"]
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


def test_accelerate_launcher_command():
    from repa.engine.ablation import Launcher, Run, commands

    run = Run(run_id="abc", labels={}, seed=0, overrides=["train.max_steps=2"], run_dir="/tmp/x")
    (train, evaluate) = commands(run, Path("base.toml"), Launcher(kind="accelerate", num_processes=4), True, True)
    assert train[1:6] == ["-m", "accelerate.commands.launch", "--num_processes", "4", "-m"]
    assert train[-1] == "--resume" and ["--set", "train.max_steps=2"] == train[-3:-1]
    assert evaluate[-3:] == ["evaluate", "/tmp/x", "--no-progress"]
