"""Experiment files: two-phase validation, shorthands, overrides, resolved TOML, and every
bad-file case giving one located line."""

from __future__ import annotations

import pytest

from repa.config import config_hash, load_experiment, to_toml
from repa.errors import ConfigError
from tests.conftest import ROOT, run_cli

EXPERIMENTS = ["sit_xl_repa.toml", "sit_l_repa.toml", "sit_b_repa.toml", "sit_xl_baseline.toml", "quickstart.toml"]


def errors_of(path, overrides=()):
    with pytest.raises(ConfigError) as info:
        load_experiment(path, overrides)
    return info.value.lines


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_files_validate(name):
    config = load_experiment(ROOT / "experiments" / name)
    assert config_hash(config) == config_hash(load_experiment(ROOT / "experiments" / name))


def test_paper_recipe_is_the_seed_command():
    c = load_experiment(ROOT / "experiments" / "sit_xl_repa.toml")
    assert (c.backbone.kind, c.path.kind, c.prediction.kind, c.weighting.kind) == ("SiT-XL/2", "linear", "v", "uniform")
    assert c.backbone.params.depth == 28 and c.backbone.params.hidden_size == 1152
    (entry,) = c.alignment
    assert (entry.encoder.kind, entry.depth, entry.coeff, entry.loss.kind) == ("dinov2-vit-b", 8, 0.5, "cosine")
    t = c.train
    assert (t.mixed_precision, t.allow_tf32, t.global_batch_size, t.max_steps) == ("fp16", True, 256, 400_000)
    assert (t.checkpoint_every, t.sample_every, c.experiment.seed, c.optim.params.lr) == (50_000, 10_000, 0, 1e-4)
    b = load_experiment(ROOT / "experiments" / "sit_b_repa.toml")
    assert b.backbone.kind == "SiT-B/2" and b.alignment[0].depth == 4
    assert load_experiment(ROOT / "experiments" / "sit_xl_baseline.toml").alignment == []


@pytest.mark.parametrize("name", ["sit_xl_repa.toml", "sit_b_repa.toml", "sit_l_repa.toml", "sit_xl_baseline.toml"])
def test_imagenet_recipes_keep_every_checkpoint_a_paper_curve_needs(name):
    c = load_experiment(ROOT / "experiments" / name)
    assert (c.train.checkpoint_every, c.train.keep_every) == (50_000, 50_000)
    assert (c.sample.labels, c.sample.allow_tf32) == ("random", True)  # as the official generate.py


def test_comma_separated_encoders_become_entries(tiny_toml):
    path = tiny_toml()
    config = load_experiment(path, ["alignment.encoder=digits-convnet,digits-convnet", "alignment.depth=2"])
    assert [a.encoder.kind for a in config.alignment] == ["digits-convnet", "digits-convnet"]
    assert all(a.depth == 2 for a in config.alignment)


def test_overrides_are_typed_by_the_schema(tiny_toml):
    config = load_experiment(tiny_toml(), ["train.max_steps=1_000", "optim.betas=[0.8, 0.9]", "train.allow_tf32=false",
                                           "experiment.name=other", "alignment[0].coeff=0.25"])
    assert config.train.max_steps == 1000 and config.optim.params.betas == (0.8, 0.9)
    assert config.train.allow_tf32 is False and config.experiment.name == "other"
    assert config.alignment[0].coeff == 0.25


def test_override_scalars_take_the_type_of_their_key(tiny_toml):
    config = load_experiment(tiny_toml(), ["experiment.name=2024", "train.label_dropout=0.2",
                                           'data={ kind = "folder", path = "x", resolution = 16 }', "data.path=2024-01-01"])
    assert config.experiment.name == "2024" and config.data.params.path == "2024-01-01"
    assert config.train.label_dropout == 0.2


def test_guidance_without_a_null_label_is_a_validation_error(tiny_toml):
    (line,) = errors_of(tiny_toml(), ["train.label_dropout=0", "sample.cfg_scale=2.0"])
    assert "sample.cfg_scale: guidance needs the null label" in line and "train.label_dropout > 0" in line


def test_baseline_by_override_drops_alignment(tiny_toml):
    assert load_experiment(tiny_toml(), ["alignment=[]"]).alignment == []


def test_resolved_toml_round_trips_with_the_same_hash(tiny_toml, tmp_path):
    config = load_experiment(tiny_toml(), ["train.max_steps=7"])
    resolved = tmp_path / "resolved.toml"
    resolved.write_text(to_toml(config))
    again = load_experiment(resolved)
    assert again == config and config_hash(again) == config_hash(config)
    assert config_hash(load_experiment(resolved, ["experiment.name=renamed"])) == config_hash(config)
    assert config_hash(load_experiment(resolved, ["train.max_steps=8"])) != config_hash(config)


def test_run_identity_ignores_defaults_written_out_and_checkpoint_frequency(tiny_toml):
    """A release that adds a key with a default (or a file that spells a default out) keeps run ids."""
    base = config_hash(load_experiment(tiny_toml()))
    for same in (["train.distributed=ddp"], ["path=linear"], ['weighting={ kind = "uniform" }'],
                 ["train.checkpoint_every=3"], ["sample.guidance=cfg"], ["train.keep_every=2"],
                 ['sample.labels="random"'], ["sample.allow_tf32=true"], ["eval.every_num_samples=10"]):
        assert config_hash(load_experiment(tiny_toml(), same)) == base, same
    for different in (["path=cosine"], ["train.max_steps=5"], ["alignment.coeff=0.25"]):
        assert config_hash(load_experiment(tiny_toml(), different)) != base, different


def test_the_label_key_of_earlier_releases_loads_with_the_same_run_id(tiny_toml):
    """Run folders written before `sample.labels` say `label_sampling = "uniform" | "balanced"`."""
    now = load_experiment(tiny_toml())
    before = load_experiment(tiny_toml('label_sampling = "uniform"\n'))
    assert before == now and before.sample.labels == "random" and config_hash(before) == config_hash(now)
    balanced = load_experiment(tiny_toml('label_sampling = "balanced"\n'))
    assert balanced == load_experiment(tiny_toml('labels = "balanced"\n')) and balanced.sample.labels == "balanced"
    assert config_hash(balanced) == config_hash(load_experiment(tiny_toml('labels = "balanced"\n')))
    assert config_hash(balanced) != config_hash(now)
    # an old run folder's file overridden with the new key: the new key wins
    both = load_experiment(tiny_toml('label_sampling = "uniform"\n'), ['sample.labels="balanced"'])
    assert both.sample.labels == "balanced"
    rae = load_experiment(ROOT / "experiments" / "ditdh_xl_rae.toml")
    assert rae.sample.labels == "balanced" and config_hash(rae) == "4e7258c861ea"  # its id before the rename


def test_shorthand_and_table_forms_are_equal(tiny_toml):
    a = load_experiment(tiny_toml(), ["path=cosine"])
    b = load_experiment(tiny_toml(), ['path={ kind = "cosine" }'])
    assert a == b and a.path.kind == "cosine"


def test_preset_names_from_the_paper(write_toml):
    path = write_toml("""
        [data]
        kind = "folder"
        path = "data/imagenet256"
        [backbone]
        kind = "SiT-B/4"
        [[alignment]]
        encoder = "mocov3-vit-b"
        depth = 4
        [autoencoder]
        kind = "sd-vae"
        """)
    lines = errors_of(path)
    assert len(lines) == 1
    assert "mocov3-vit-b gives 256 tokens at 256 px but SiT-B/4 has 64" in lines[0]


# ============================================================================
# Bad files: exactly one located line per problem, exit status 2
# ============================================================================

BAD_FILES = {
    "toml_syntax": ("[train]\nmax_steps = \n", 2, "invalid TOML"),
    "unknown_section": ('[trainn]\nmax_steps = 1\n', 1, "unknown section [trainn]; did you mean [train]?"),
    "unknown_key": ("[train]\nmax_stepz = 1\n", 2, "train.max_stepz: unknown key 'max_stepz'; did you mean 'max_steps'?"),
    "wrong_type": ('[train]\nmax_steps = "many"\n', 2, "train.max_steps: expected an integer, got 'many'"),
    "out_of_range": ("[[alignment]]\nencoder = \"digits-convnet\"\ncoeff = -1.0\n", 3,
                     "alignment[0].coeff: must be >= 0.0, got -1.0"),
    "unknown_component": ('[[alignment]]\nencoder = "dinov2-vit-bb"\n', 2,
                          "alignment[0].encoder: unknown encoder 'dinov2-vit-bb'; did you mean 'dinov2-vit-b'"),
    "missing_key": ('[data]\nkind = "folder"\n', 1, "data.path: missing required key of dataset 'folder'"),
    "alignment_not_a_list": ("alignment = true\n", 1, "alignment: expected a list, got True"),
    "empty_encoder_list": ('[[alignment]]\nencoder = []\n', 2, "alignment[0].encoder: names no encoder"),
    "kind_of_wrong_type": ("[path]\nkind = 3\n", 2, "path.kind: expected a path name, got 3"),
}

BASE = '[backbone]\nkind = "sit"\ndepth = 2\nhidden_size = 32\nnum_heads = 2\npatch_size = 4\n'
DATA = '[data]\nkind = "digits"\nresolution = 16\n[autoencoder]\nkind = "identity"\n'


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_file_gives_one_located_line(case, write_toml):
    text, line, message = BAD_FILES[case]
    body = text + "\n" + BASE + (DATA if "[data]" not in text else '[autoencoder]\nkind = "identity"\n')
    path = write_toml(body)
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{path}:{line}: "), lines[0]
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_several_problems_give_one_line_each(write_toml):
    path = write_toml(BASE + DATA + "[train]\nmax_stepz = 1\nema_decay = 2.0\n")
    lines = run_cli("validate", str(path)).stderr.strip().splitlines()
    assert len(lines) == 2
    assert f"{path}:13: train.max_stepz" in lines[0] and f"{path}:14: train.ema_decay: must be <= 1" in lines[1]


def test_set_on_a_key_that_does_not_exist(tiny_toml):
    result = run_cli("validate", str(tiny_toml()), "--set", "train.max_stepz=5")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "--set train.max_stepz=5: train.max_stepz: unknown key 'max_stepz'; did you mean 'max_steps'?"
    ]


def test_set_problems_are_located_at_the_set_argument(tiny_toml):
    def only_line(*sets):
        result = run_cli("validate", str(tiny_toml()), *[a for s in sets for a in ("--set", s)])
        assert result.returncode == 2 and "Traceback" not in result.stderr
        (line,) = result.stderr.strip().splitlines()
        return line

    assert only_line("trainn.max_steps=1") == "--set trainn.max_steps=1: trainn: unknown section [trainn]; did you mean [train]?"
    assert only_line("train.max_steps=0") == "--set train.max_steps=0: train.max_steps: must be >= 1, got 0"
    line = only_line("backbone.hidden_size=33")
    assert line.startswith("--set backbone.hidden_size=33: backbone: ") and "not divisible" in line and "{" not in line


@pytest.mark.parametrize("case", ["missing", "directory", "empty", "not_utf8"])
def test_unreadable_files(case, tmp_path):
    path = tmp_path / "exp.toml"
    expected = {"missing": f"{path}: no such file", "directory": f"{path}: is a directory",
                "empty": f"{path}:1: the file is empty", "not_utf8": f"{path}:2: not valid UTF-8 (byte 0xff"}[case]
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.write_text("\n  \n")
    elif case == "not_utf8":
        path.write_bytes(b"[train]\nmax_steps = 1 # \xff\n")
    result = run_cli("validate", str(path))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr


def test_alignment_depth_beyond_the_backbone(tiny_toml):
    lines = errors_of(tiny_toml(), ["alignment.depth=3"])
    assert lines == [f"--set alignment.depth=3: alignment[0].depth: must be within 1..2 (sit has 2 blocks), got 3"]


def test_resolution_not_divisible_by_the_autoencoder(tiny_toml):
    (line,) = errors_of(tiny_toml(), ["autoencoder=sd-vae", "alignment=[]", "data.resolution=20"])
    assert "data.resolution: 20 is not divisible by the sd-vae autoencoder's downsampling factor 8" in line


@pytest.mark.parametrize("key,hint", [
    ("train.lr=1e-3", "train.lr: unknown key 'lr'; did you mean optim.lr?"),
    ("train.optimizer.lr=1e-3", "train.optimizer: unknown key 'optimizer'; did you mean optim.lr?"),
    ("train.optimizer.foo=1", "train.optimizer: unknown key 'optimizer'; did you mean section [optim]?"),
    ("experiment.max_steps=3", "experiment.max_steps: unknown key 'max_steps'; did you mean train.max_steps?"),
    ("train.zzz=1", "train.zzz: unknown key 'zzz'"),
])
def test_a_key_in_the_wrong_section_names_the_section_that_has_it(tiny_toml, key, hint):
    result = run_cli("validate", str(tiny_toml()), "--set", key)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [f"--set {key}: {hint}"]


def test_validate_suggests_the_command_the_recipe_itself_gives(tiny_toml):
    root = ROOT / "experiments"
    hint = run_cli("validate", str(root / "sit_xl_repa.toml")).stderr.strip().splitlines()
    assert hint == ["next: accelerate launch -m repa.cli run experiments/sit_xl_repa.toml --set data.path=/path/to/imagenet256"]
    hint = run_cli("validate", str(root / "ditdh_xl_rae.toml")).stderr.strip().splitlines()
    assert hint == ["next: pip install -e plugins/repa-rae",
                    "      accelerate launch -m repa.cli run experiments/ditdh_xl_rae.toml --set data.path=/path/to/imagenet256"]
    plain = tiny_toml()
    assert run_cli("validate", str(plain)).stderr.strip().splitlines() == [f"next: repa run {plain}"]
