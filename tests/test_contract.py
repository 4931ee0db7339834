"""The plugin contract: checked at registration and at build, one line per violation (exit 2, no
traceback, nothing written), the contract kit over every built-in, CONTRIBUTING's examples, and
plugins written against the earlier API."""

from __future__ import annotations

import json
import pathlib
import re
import sys
import textwrap

import pytest
import numpy as np
import torch

from repa.errors import ContractError
from repa.plugins import KINDS, Registry, load_components, set_components
from repa.testing import check_component
from tests.conftest import ROOT, run_cli

# ============================================================================
# Registration: the factory's signature and the params model
# ============================================================================


def test_a_factory_without_the_engines_keywords_is_not_registered():
    registry = Registry("guidance")
    with registry.provided_by("repa-bad"):
        assert registry.add("bad", lambda params, *, scale: None) is None
    assert "bad" not in registry
    assert registry.failed_plugins == [
        "repa-bad: guidance 'bad': factory <lambda>(params, *, scale) does not accept the keyword interval; the "
        "guidance contract calls factory(params, *, scale, interval, [load_network])"]


def test_a_factory_requiring_an_argument_the_engine_never_passes_is_refused():
    registry = Registry("sampler")
    with registry.provided_by("repa-bad"):
        registry.add("needy", lambda params, *, steps, order: None)
    assert "requires order, which the engine never passes (give it a default)" in registry.failed_plugins[0]


def test_a_params_model_of_the_wrong_base_is_refused():
    from repa.interfaces import Params

    registry = Registry("backbone")
    with registry.provided_by("repa-bad"):
        registry.add("nobase", lambda params, **kw: None, Params)
    assert "params must subclass repa.interfaces.BackboneParams" in registry.failed_plugins[0]


def test_every_kind_has_one_contract_and_one_hook():
    from repa.plugins import HOOKS
    from repa.plugins.contract import CONTRACTS

    assert set(CONTRACTS) == set(KINDS) == set(HOOKS)


def test_every_builtin_factory_matches_its_kinds_keywords():
    components = load_components(autoload=False)
    assert components.failed == [] and components.warnings == []
    # REPA itself denoises nothing next to the image and aligns no attention: REG and HASTE are plugins.
    follow_ups = ("joint", "attention_loss")
    assert all(len(components[kind]) for kind in KINDS if kind not in follow_ups)
    assert not any(len(components[kind]) for kind in follow_ups)


# ============================================================================
# Build: the object against its kind's base class
# ============================================================================


class LegacyEncoder(torch.nn.Module):
    """An encoder written against the earlier API: no base class, no weights_file or autocast_dtype."""

    embed_dim = 8

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(48, 8).requires_grad_(False)

    def preprocess(self, images):
        return images.float() / 255

    def forward(self, x):
        return self.proj(torch.nn.functional.unfold(x, 4, stride=4).transpose(1, 2)).float()

    def tokens_for(self, resolution):
        return (resolution // 4) ** 2


def test_an_object_of_the_earlier_api_gets_the_base_class_defaults():
    from repa.plugins.contract import conform

    encoder = conform("encoder", "legacy", "repa-old", LegacyEncoder())
    assert encoder.weights_file == "" and encoder.autocast_dtype is None and encoder.preprocessing() is None

    def loss(projected, target):  # a plain function: the earlier loss API
        return (projected - target).square().mean(dim=(1, 2))

    assert conform("alignment_loss", "l2", "repa-old", loss) is loss


def test_a_missing_method_is_one_line_naming_what_the_contract_requires():
    from repa.plugins.contract import conform

    class NoPreprocess(torch.nn.Module):
        embed_dim = 8

        def forward(self, x):
            return x

        def tokens_for(self, resolution):
            return 4

    with pytest.raises(ContractError) as info:
        conform("encoder", "nopre", "repa-bad", NoPreprocess())
    assert str(info.value) == ("repa-bad: encoder 'nopre': the built NoPreprocess has no preprocess; the contract "
                               "(repa.interfaces.Encoder) requires forward, preprocess, tokens_for, embed_dim")


def test_a_module_kind_must_be_a_module():
    from repa.plugins.contract import conform

    with pytest.raises(ContractError, match=r"repa-bad: projector 'p': built a function, not a torch.nn.Module"):
        conform("projector", "p", "repa-bad", lambda hidden: hidden)


# ============================================================================
# The contract kit over every built-in and both example plugins
# ============================================================================

TINY_SIT = {"depth": 2, "hidden_size": 32, "num_heads": 2, "patch_size": 2}
TINY_MMDIT = {"depth": 2, "patch_size": 2}
NO_WEIGHTS_HERE = {("autoencoder", "sd-vae"), ("metric", "fid"), ("metric", "sfid"), ("metric", "is"),
                   ("metric", "precision"), ("metric", "recall"), ("text_encoder", "clip-vit-l14")}
NEEDS_DATA = {("dataset", "folder"), ("dataset", "images"), ("dataset", "packed"), ("dataset", "coco")}


def builtin_cases():
    components = load_components(autoload=False)
    for kind in KINDS:
        for entry in components[kind]:
            if kind == "encoder" and entry.name != "digits-convnet":
                continue  # pretrained: tests/test_encoders.py checks each with random weights in its release format
            if kind == "backbone" and entry.name not in ("sit", "mmdit"):
                continue  # the presets are `sit` with other sizes (tests/test_sit.py counts them)
            yield kind, entry.name


@pytest.mark.parametrize("kind,name", list(builtin_cases()))
def test_every_builtin_keeps_its_contract(kind, name, tmp_path, monkeypatch):
    for variable in ("TORCH_HOME", "HF_HOME", "HF_HUB_CACHE", "XDG_CACHE_HOME"):  # no weights found by chance
        monkeypatch.setenv(variable, str(tmp_path / variable.lower()))
    params, context = None, {}
    if kind == "backbone":
        params = TINY_MMDIT if name == "mmdit" else TINY_SIT
    elif (kind, name) == ("conditioning", "text"):
        params = {"text_encoder": "digits-words"}
    elif kind == "encoder":
        params, context = {"epochs": 2}, {"resolution": 32}
    elif kind == "metric" and name.startswith("digits-") and name != "digits-attributes":
        params = {"epochs": 2}  # the scoring CNN, trained briefly
    elif (kind, name) == ("metric", "fd-dinov2"):  # random weights in the hub release format (ViT-S: fast)
        from tests.test_fd_dinov2 import release_state

        torch.save(release_state(), tmp_path / "dinov2_vits14_pretrain.pth")
        params = {"size": "s", "weights": str(tmp_path / "dinov2_vits14_pretrain.pth")}
        reference = torch.randint(0, 256, (16, 32, 32, 3), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
        np.savez(tmp_path / "reference.npz", arr_0=reference.numpy())
        context = {"reference": str(tmp_path / "reference.npz")}
    elif kind == "term":  # the built-in terms name their encoder (and loss, quantity) like experiment entries do
        digits = {"kind": "digits-convnet", "epochs": 2}
        params = {"alignment": {"encoder": digits}, "joint": {"quantity": "reg", "encoder": digits},
                  "attention": {"loss": "haste", "encoder": digits, "blocks": [1], "encoder_blocks": [1]}}[name]
    if (kind, name) in NO_WEIGHTS_HERE | NEEDS_DATA:
        from repa.errors import RepaError

        with pytest.raises(RepaError) as info:  # named, in one line, never a contract failure
            check_component(kind, name, params, **context)
        assert not isinstance(info.value, ContractError) and "\n" not in str(info.value)
        return
    check_component(kind, name, params, **context)


def test_the_example_plugins_keep_the_contract(tmp_path):
    import timm

    check_component("alignment_loss", "gram")
    net = timm.create_model("vit_small_patch16_224.augreg_in21k", pretrained=False, num_classes=0)
    torch.save(net.state_dict(), tmp_path / "vit_small.pth")
    check_component("encoder", "timm-vit", {"weights": str(tmp_path / "vit_small.pth"), "resize": "native"},
                    resolution=64)


# ============================================================================
# CONTRIBUTING.md: every example block, a plugin written from it alone
# ============================================================================


def contributing_examples(folder):
    """Write the `repa_example/<module>.py` blocks of CONTRIBUTING.md into an importable package;
    returns the modules its entry-point block names."""
    import tomli

    text = (ROOT / "CONTRIBUTING.md").read_text()
    blocks = re.findall(r"`(repa_example/\w+\.py)`:\n\n```python\n(.*?)```", text, flags=re.S)
    (folder / "repa_example").mkdir()
    (folder / "repa_example" / "__init__.py").write_text("")
    for path, body in blocks:
        (folder / path).write_text(body)
    entry_points = re.search(r"```toml\n(\[project\.entry-points\.repa\]\n.*?)```", text, re.S).group(1)
    modules = list(tomli.loads(entry_points)["project"]["entry-points"]["repa"].values())
    assert sorted(modules) == sorted(path[:-3].replace("/", ".") for path, _ in blocks)
    return modules


@pytest.fixture
def examples(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    modules = contributing_examples(tmp_path)
    for name in [m for m in sys.modules if m.startswith("repa_example")]:
        monkeypatch.delitem(sys.modules, name)
    components = load_components(autoload=False, plugins=modules)
    set_components(components)
    yield tmp_path, modules, components
    set_components(None)


EXAMPLES = [("encoder", "patch-pixels", {"resolution": 32}), ("alignment_loss", "normalised-mse", {}),
            ("projector", "example-conv", {}), ("target_transform", "example-spatial-norm", {}), ("backbone", "patch-mlp", {}),
            ("sampler", "midpoint", {}), ("metric", "pixel-diversity", {}), ("analysis", "spread", {}),
            ("joint", "mean-token", {}), ("term", "self-alignment", {}), ("autoencoder", "tiny-ae", {}),
            ("term", "reconstruction", {}), ("text_encoder", "char-codes", {})]


def test_contributing_has_an_example_per_kind_and_each_keeps_the_contract(examples):
    _, modules, components = examples
    assert sorted(modules) == sorted(f"repa_example.{m}" for m in
                                     ("encoder", "loss", "projector", "transform", "backbone", "sampler", "metric",
                                      "analysis", "joint", "self_alignment", "joint_autoencoder", "text_encoder"))
    assert components.failed == []
    for kind, name, context in EXAMPLES:
        check_component(kind, name, **context)
    block = re.search(r"## Check a plugin\n.*?```python\n(.*?)```", (ROOT / "CONTRIBUTING.md").read_text(), re.S)
    namespace = {}
    exec(block.group(1), namespace)  # the test a plugin author copies
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert len(tests) == 1
    tests[0]()


def test_the_contributing_example_plugin_trains_the_quickstart_for_five_steps(examples, tmp_path):
    folder, modules, _ = examples
    entry = re.search(r"Use the example components from an experiment:\n\n```toml\n(.*?)```",
                      (ROOT / "CONTRIBUTING.md").read_text(), re.S).group(1)
    experiment = (ROOT / "experiments" / "quickstart.toml").read_text()
    experiment = re.sub(r"\[\[alignment\]\].*?\n\n", entry + "\n", experiment, count=1, flags=re.S)
    (tmp_path / "exp.toml").write_text(experiment)
    result = run_cli(*[arg for module in modules for arg in ("-p", module)], "run", str(tmp_path / "exp.toml"), "--no-progress",
                     "--set", f"experiment.output_dir={tmp_path / 'exps'}", "--set", "train.max_steps=5",
                     "--set", "train.sample_images=10", "--set", "sample.steps=4",
                     env={"PYTHONPATH": str(folder)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [line for line in (tmp_path / "exps" / "quickstart" / "metrics.jsonl").read_text().splitlines()
               if '"align_loss_0"' in line]
    assert len(records) == 1 and '"step": 5' in records[0]  # log_every 50: the last step is logged
    resolved = (tmp_path / "exps" / "quickstart" / "config.resolved.toml").read_text()
    assert 'kind = "example-conv"' in resolved and 'kind = "example-spatial-norm"' in resolved and 'kind = "patch-pixels"' in resolved


def test_the_contributing_joint_example_trains_and_samples_with_the_tiny_experiment(examples, tiny_toml, tmp_path):
    """Another method than REG through [[joint]]: the example's mean token is denoised with the image."""
    from repa.weights import load_file

    folder, modules, _ = examples
    block = re.search(r"```toml\n(\[\[joint\]\]\nkind = \"mean-token\".*?)```", (ROOT / "CONTRIBUTING.md").read_text(),
                      re.S).group(1)
    experiment = tiny_toml("\n" + block)
    result = run_cli(*[arg for module in modules for arg in ("-p", module)], "run", str(experiment), "--no-progress",
                     "--set", "train.sample_every=4", env={"PYTHONPATH": str(folder)}, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run = tmp_path / "exps" / "tiny"
    assert load_file(run / "checkpoints" / "0000004" / "model.safetensors")["joint.inp.weight"].shape == (32, 128)
    assert '"joint_loss"' in (run / "metrics.jsonl").read_text() and (run / "samples" / "0000004.png").is_file()


def test_irepa_as_a_plugin_equals_a_transcription_of_the_released_code(examples):
    """iREPA (End2End-Diffusion/iREPA @ 99ad4ac, ldm/models/sit.py ProjectionLayer "conv" and
    ldm/utils.py spatial normalisation), transcribed here from the released code."""
    import torch.nn as nn

    def released_conv_projection(layer: nn.Conv2d, x):
        B, T, D = x.shape
        H = W = int(T ** 0.5)
        x_ = x.reshape(B, H, W, D).permute(0, 3, 1, 2).contiguous()
        y = layer(x_)
        y = y.permute(0, 2, 3, 1).contiguous()
        return y.reshape(B, T, -1)

    def released_zscore(feat, alpha, eps=1e-6):
        mean = feat.mean(dim=1, keepdim=True)
        std = feat.std(dim=1, keepdim=True)
        return (feat - alpha * mean) / (std + eps)

    torch.manual_seed(0)
    projector = check_component("projector", "example-conv", in_dim=24, out_dim=12, grid=(4, 4))
    hidden = torch.randn(3, 16, 24)
    torch.testing.assert_close(projector(hidden), released_conv_projection(projector.conv, hidden), atol=1e-5, rtol=0)
    transform = check_component("target_transform", "example-spatial-norm")
    tokens = torch.randn(3, 16, 12) * 3 + 1
    torch.testing.assert_close(transform(tokens), released_zscore(tokens, 0.6), atol=1e-5, rtol=0)


# ============================================================================
# Contract breaks from the command line: one line, exit 2, no traceback, nothing written
# ============================================================================

# The encoder of the experiment: 128-d tokens, one per 4x4 patch (16 at 16 px, as the tiny SiT).
ENCODER_HEAD = """
import torch
from repa.interfaces import Encoder, EncoderParams
from repa.plugins import hookimpl

class P(EncoderParams):
    def embed_dim(self): return 128
    def tokens_for(self, resolution): return (resolution // 4) ** 2
"""

BROKEN = {
    "wrong_signature": ENCODER_HEAD + """
def build(params):  # the engine passes resolution=
    raise AssertionError("never called")

@hookimpl
def repa_register_encoders(registry):
    registry.add("broken-enc", build, P)
""",
    "no_preprocess": ENCODER_HEAD + """
class E(torch.nn.Module):
    embed_dim = 128
    def forward(self, x): return torch.zeros(len(x), 16, 128)
    def tokens_for(self, resolution): return 16

@hookimpl
def repa_register_encoders(registry):
    registry.add("broken-enc", lambda params, *, resolution: E(), P)
""",
    "wrong_tokens": ENCODER_HEAD + """
class E(torch.nn.Module, Encoder):
    embed_dim = 128
    def preprocess(self, images): return images.float()
    def forward(self, x): return torch.zeros(len(x), 15, 128)
    def tokens_for(self, resolution): return 16

@hookimpl
def repa_register_encoders(registry):
    registry.add("broken-enc", lambda params, *, resolution: E(), P)
""",
    "scalar_loss": """
from repa.plugins import hookimpl

def build(params):
    return lambda projected, target: (projected - target).square().mean()

@hookimpl
def repa_register_alignment_losses(registry):
    registry.add("broken-loss", build)
""",
    "raises_at_import": """
raise ImportError("No module named 'missing_dependency'")
""",
}

EXPECTED = {
    "wrong_signature": "factory build(params) does not accept the keyword resolution",
    "no_preprocess": "encoder 'broken-enc': the built E has no preprocess",
    "wrong_tokens": "encoder 'broken-enc': forward on a 16 px image returned shape [1, 15, 128], expected [1, 16, 128]",
    "scalar_loss": "alignment loss 'broken-loss': the loss returned shape [], expected [2]",
    "raises_at_import": "plugin 'broken_plugin' from distribution '<module broken_plugin>' failed to import",
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_broken_plugin_stops_the_run_in_one_line_before_anything_is_written(case, tmp_path, tiny_toml):
    (tmp_path / "broken_plugin.py").write_text(BROKEN[case])
    experiment = tiny_toml()
    if case == "scalar_loss":
        experiment.write_text(experiment.read_text().replace("depth = 1\n", 'depth = 1\nloss = "broken-loss"\n', 1))
    else:
        experiment.write_text(experiment.read_text().replace('{ kind = "digits-convnet", epochs = 2 }', '"broken-enc"'))
    result = run_cli("-p", "broken_plugin", "run", str(experiment), "--no-progress",
                     env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()  # progress lines (`repa: training the offline ...`) aside, no warning
    errors = [line for line in lines if not line.startswith("repa: ") or line.startswith("repa: warning")]
    assert len(errors) == 1 and EXPECTED[case] in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "exps").exists()  # no run folder, grid or checkpoint
    if case in ("wrong_signature", "raises_at_import"):  # unknown, and said where it may come from
        assert "unknown encoder 'broken-enc'" in errors[0] and "may come from a plugin that failed" in errors[0]
    if case == "no_preprocess":  # the traceback on demand
        shown = run_cli("--traceback", "-p", "broken_plugin", "run", str(experiment), "--no-progress",
                        env={"PYTHONPATH": str(tmp_path)})
        assert shown.returncode == 2 and "Traceback" in shown.stderr and "ContractError" in shown.stderr


def test_two_plugins_registering_one_name_is_one_line_exit_2(tmp_path):
    for name in ("first_dup", "second_dup"):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent("""
            from repa.plugins import hookimpl

            @hookimpl
            def repa_register_alignment_losses(registry):
                registry.add("twice", lambda params: None)
        """))
    result = run_cli("-p", "first_dup", "-p", "second_dup", "plugins", env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert ("alignment loss 'twice' is registered twice: as 'twice' by distribution '<module first_dup>' and by "
            "'<module second_dup>'") in line and "pip uninstall" in line


def test_plugins_lists_a_failed_plugin_and_check_fails_on_it(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError(\"No module named 'missing_dependency'\")\n")
    env = {"PYTHONPATH": str(tmp_path)}
    listing = run_cli("-p", "broken_plugin", "plugins", "alignment_loss", env=env)
    assert listing.returncode == 0
    assert ("failed: plugin 'broken_plugin' from distribution '<module broken_plugin>' failed to import "
            "(broken_plugin): ImportError: No module named 'missing_dependency'") in " ".join(listing.stdout.split())
    check = run_cli("-p", "broken_plugin", "plugins", "alignment_loss", "--check", env=env)
    assert check.returncode == 2, check.stderr
    assert "ok          alignment_loss cosine (repa)" in check.stdout
    assert "FAIL        plugin 'broken_plugin'" in check.stdout and "1 contract failure(s)" in check.stdout


# ============================================================================
# CONTRIBUTING.md's terms: a new method written outside repa/
# ============================================================================


def _toml_block(first_line: str) -> str:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    return re.search(r"```toml\n(" + re.escape(first_line) + r".*?)```", text, re.S).group(1)


@pytest.mark.slow
@pytest.mark.parametrize("block,logged", [('[[term]]\nkind = "self-alignment"', "self-alignment_loss"),
                                          ('[autoencoder]\nkind = "tiny-ae"', "reconstruction_loss")])
def test_each_contributing_term_example_trains_five_steps_samples_and_resumes(examples, tiny_toml, tmp_path, block,
                                                                              logged):
    folder, modules, _ = examples
    experiment = tiny_toml()
    text = experiment.read_text()
    if block.startswith("[autoencoder]"):  # the example's autoencoder replaces the tiny experiment's
        text = text.replace('[autoencoder]\nkind = "identity"\n', "")
    text = re.sub(r"\[\[alignment\]\].*?\n\n", "", text, flags=re.S)  # the term alone
    text = text.replace("resolution = 16", "resolution = 32").replace("patch_size = 4", "patch_size = 2")
    text = text.replace("depth = 2\n", "depth = 4\n", 1)
    experiment.write_text(text + "\n" + _toml_block(block))
    plugin_args = [arg for module in modules for arg in ("-p", module)]
    env = {"PYTHONPATH": str(folder)}
    straight = run_cli(*plugin_args, "run", str(experiment), "--no-progress", "--set", "train.max_steps=5",
                       "--set", "experiment.name=straight", env=env, cwd=tmp_path)
    assert straight.returncode == 0, straight.stderr
    run = tmp_path / "exps" / "straight"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and all(r[logged] > 0 for r in records)
    sampled = run_cli(*plugin_args, "sample", str(experiment), "--set", "experiment.name=straight", "--num-samples", "2",
                      "--out", str(tmp_path / "samples"), "--no-progress", env=env, cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr
    split = [run_cli(*plugin_args, "run", str(experiment), "--no-progress", "--set", f"train.max_steps={steps}",
                     "--set", "experiment.name=split", *resume, env=env, cwd=tmp_path)
             for steps, resume in ((3, []), (5, ["--resume"]))]
    assert all(r.returncode == 0 for r in split), split[-1].stderr
    from repa.weights import load_file

    for which in ("model", "ema"):
        a = load_file(run / "checkpoints" / "0000005" / f"{which}.safetensors")
        b = load_file(tmp_path / "exps" / "split" / "checkpoints" / "0000005" / f"{which}.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), which


def test_the_joint_autoencoder_example_stops_each_loss_at_its_module(examples, tiny_toml):
    """The diffusion loss gives the autoencoder a zero gradient; the reconstruction loss gives it all of its
    gradient and the backbone none."""
    from repa.config import load_experiment
    from repa.testing import ObjectiveHarness

    text = tiny_toml().read_text().replace('kind = "identity"', 'kind = "tiny-ae"').replace("resolution = 16",
                                                                                            "resolution = 32")
    text = re.sub(r"\[\[alignment\]\].*?\n\n", "", text, flags=re.S).replace("patch_size = 4", "patch_size = 2")
    config_path = pathlib.Path(examples[0]) / "ae.toml"
    config_path.write_text(text + '\n[[term]]\nkind = "reconstruction"\n')
    harness = ObjectiveHarness(load_experiment(config_path))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, 32, 32), generator=g, dtype=torch.uint8)
    noise, posterior = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    parts = harness.loss(images=images, posterior=posterior, noise=noise, t=torch.tensor([0.3, 0.8]),
                         y=torch.tensor([1, 2]))
    autoencoder = list(harness.network.autoencoder.parameters())
    backbone = [p for p in harness.network.backbone.parameters() if p.requires_grad]
    total = torch.autograd.grad(parts.total, autoencoder + backbone, allow_unused=True, retain_graph=True)
    reconstruction = harness.term("reconstruction_loss").loss(harness.context).mean()  # the term alone, same step
    assert torch.allclose(reconstruction, parts.terms["reconstruction_loss"].mean())
    alone = torch.autograd.grad(reconstruction, autoencoder + backbone, allow_unused=True)
    for mine, all_of_it in zip(alone[:len(autoencoder)], total[:len(autoencoder)]):
        assert mine.abs().sum() > 0 and torch.equal(mine, all_of_it)  # the diffusion loss adds exactly nothing
    assert all(g is None for g in alone[len(autoencoder):])  # and the reconstruction nothing to the backbone
    assert any(g is not None and g.abs().sum() > 0 for g in total[len(autoencoder):])


BROKEN_TERMS = {
    "an unknown need": ("Needs(teachers=(TeacherNeed(model='student'),))", "torch.zeros(len(ctx.t))", "{}",
                        "unknown need TeacherNeed(model='student'"),
    "a loss of the wrong shape": ("Needs()", "torch.zeros(len(ctx.t), 3)", "{}",
                                  "loss(ctx) returned shape [2, 3]; a term returns a per-sample loss [B] (here [2])"),
    "a module that is not an nn.Module": ("Needs()", "torch.zeros(len(ctx.t))", "{'head': lambda x: x}",
                                          "module 'head' is a function, not a torch.nn.Module"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_TERMS))
def test_a_term_breaking_its_contract_is_one_line_exit_2_before_the_run_folder(tiny_toml, tmp_path, case):
    needs, loss, modules, expected = BROKEN_TERMS[case]
    (tmp_path / "broken_term.py").write_text(f"""
import torch
from repa.interfaces import Needs, TeacherNeed, Term, TermParams
from repa.plugins import hookimpl


class Broken(Term):
    def needs(self):
        return {needs}

    def modules(self):
        return {modules}

    def loss(self, ctx):
        return {loss}


@hookimpl
def repa_register_terms(registry):
    registry.add("broken", lambda params, *, facts: Broken(), TermParams)
""")
    experiment = tiny_toml('\n[[term]]\nkind = "broken"\n')
    result = run_cli("-p", "broken_term", "run", str(experiment), "--no-progress", env={"PYTHONPATH": str(tmp_path)},
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and expected in result.stderr.strip().splitlines()[-1], result.stderr
    assert "term 'broken' ([[term]][0])" in result.stderr
    assert not (tmp_path / "exps" / "tiny").exists()
