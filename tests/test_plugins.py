"""Plugins and registries: discovery through entry points, every failure mode, laziness."""

from __future__ import annotations

import importlib.metadata as metadata
import json
import re
import subprocess
import sys
import textwrap

import pytest

from repa.errors import PluginError
from repa.plugins import KINDS, Registry, UnknownComponentError, load_components
from repa.plugins.manager import ENTRY_POINT_GROUP
from tests.conftest import run_cli


def builtin_entry_points():
    return [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.dist.name == "repa"]


class FakeDist:
    def __init__(self, name):
        self.name = name


def fake_entry_point(name, module, dist):
    ep = metadata.EntryPoint(name=name, value=module, group=ENTRY_POINT_GROUP)
    return ep._for(FakeDist(dist)) if hasattr(ep, "_for") else ep


@pytest.fixture
def plugin_modules(tmp_path, monkeypatch):
    """Write plugin modules into an importable folder."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(name, body):
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
        sys.modules.pop(name, None)
        return name

    return write


GOOD = """
from repa.plugins import hookimpl

def _factory(params):
    return "built"

@hookimpl
def repa_register_alignment_losses(registry):
    registry.add("{name}", _factory, description="a test loss")
"""


def test_registry_add_get_names():
    registry = Registry("alignment_loss")
    with registry.provided_by("dist-a"):
        registry.add("cosine", lambda p: "c")
        registry.add("nt-xent", lambda p: "n")
    assert registry.names() == ["cosine", "nt-xent"]
    assert registry.get("cosine").distribution == "dist-a"
    assert registry.get("COSINE").name == "cosine"  # lookup ignores case
    with pytest.raises(UnknownComponentError, match="did you mean 'cosine'"):
        registry.get("cosin")


def test_a_name_differing_only_in_case_is_a_clash_that_says_how_to_keep_one():
    """Lookup ignores case, so registration must too: `COSINE` would make `loss = "Cosine"` ambiguous."""
    registry = Registry("alignment_loss")
    with registry.provided_by("repa"):
        registry.add("cosine", lambda p: "c")
    with registry.provided_by("repa-shout"), pytest.raises(PluginError) as info:
        registry.add("COSINE", lambda p: "C")
    message = str(info.value)
    assert "'COSINE' is registered twice: as 'cosine' by distribution 'repa' and by 'repa-shout'" in message
    assert "pip uninstall" in message and "REPA_DISABLE_PLUGIN_AUTOLOAD=1 REPA_PLUGINS=" in message
    assert registry.get("Cosine").distribution == "repa"


def test_every_kind_has_builtins_attributed_to_repa():
    components = load_components(autoload=False)
    for kind in KINDS:
        entries = list(components[kind])
        if kind in ("joint", "attention_loss"):  # REPA has neither; REG and HASTE are plugins
            assert entries == []
            continue
        assert entries, f"no built-in {kind}"
        assert {e.distribution for e in entries} == {"repa"}


def test_same_name_twice_names_both_distributions(plugin_modules):
    module = plugin_modules("dup_plugin", GOOD.format(name="cosine"))
    eps = builtin_entry_points() + [fake_entry_point("dup", module, "repa-dup-dist")]
    with pytest.raises(PluginError) as info:
        load_components(entry_points=eps)
    message = str(info.value)
    assert "'cosine'" in message and "'repa'" in message and "'repa-dup-dist'" in message


def test_plugin_that_fails_to_import_is_reported_and_others_load(plugin_modules, caplog):
    broken = plugin_modules("broken_plugin", "raise RuntimeError('boom at import')\n")
    good = plugin_modules("good_plugin", GOOD.format(name="my-loss"))
    eps = builtin_entry_points() + [fake_entry_point("broken", broken, "repa-broken"),
                                    fake_entry_point("good", good, "repa-good")]
    components = load_components(entry_points=eps)
    assert "my-loss" in components["alignment_loss"]
    assert components.get("alignment_loss", "my-loss").distribution == "repa-good"
    assert components.warnings == [] and len(components.failed) == 1
    failure = components.failed[0]
    assert "'broken'" in failure and "repa-broken" in failure and "boom at import" in failure
    assert "\n" not in failure


def test_missing_builtin_entry_points_say_reinstall(plugin_modules):
    good = plugin_modules("good_plugin2", GOOD.format(name="x"))
    with pytest.raises(PluginError, match=r"reinstall with `pip install -e \.`"):
        load_components(entry_points=[fake_entry_point("good", good, "repa-good")])


def test_one_missing_builtin_entry_point_says_reinstall_and_names_it():
    eps = [ep for ep in builtin_entry_points() if ep.name != "optimizers"]
    with pytest.raises(PluginError, match=r"entry points optimizers of group 'repa' are missing.*reinstall"):
        load_components(entry_points=eps)


def test_builtin_entry_point_list_matches_pyproject():
    import tomli
    from pathlib import Path

    from repa.plugins.manager import BUILTIN_ENTRY_POINTS

    pyproject = tomli.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert sorted(pyproject["project"]["entry-points"]["repa"]) == sorted(BUILTIN_ENTRY_POINTS)


def test_plugins_may_reuse_an_entry_point_name(plugin_modules):
    """Entry-point names are per distribution: `encoders` in a third-party package is fine."""
    first = plugin_modules("same_name_a", GOOD.format(name="loss-a"))
    second = plugin_modules("same_name_b", GOOD.format(name="loss-b"))
    eps = builtin_entry_points() + [fake_entry_point("alignment_losses", first, "repa-a"),
                                    fake_entry_point("alignment_losses", second, "repa-b")]
    components = load_components(entry_points=eps)
    assert components.warnings == []
    assert components.get("alignment_loss", "loss-a").distribution == "repa-a"
    assert components.get("alignment_loss", "loss-b").distribution == "repa-b"


def test_autoload_disabled_loads_builtins_and_explicit_plugins_only(plugin_modules, monkeypatch):
    first = plugin_modules("first_plugin", GOOD.format(name="first-loss"))
    second = plugin_modules("second_plugin", GOOD.format(name="second-loss"))
    eps = builtin_entry_points() + [fake_entry_point("first", first, "repa-first"),
                                    fake_entry_point("second", second, "repa-second")]
    monkeypatch.setenv("REPA_DISABLE_PLUGIN_AUTOLOAD", "1")
    components = load_components(entry_points=eps)
    assert "first-loss" not in components["alignment_loss"] and "cosine" in components["alignment_loss"]
    components = load_components(entry_points=eps, plugins=["second"])
    assert "second-loss" in components["alignment_loss"] and "first-loss" not in components["alignment_loss"]
    monkeypatch.setenv("REPA_PLUGINS", "first")
    components = load_components(entry_points=eps)
    assert "first-loss" in components["alignment_loss"]


def test_explicit_module_path_plugin(plugin_modules):
    module = plugin_modules("module_path_plugin", GOOD.format(name="by-module"))
    components = load_components(autoload=False, plugins=[module])
    assert components.get("alignment_loss", "by-module").distribution == f"<module {module}>"


def test_misspelt_hook_is_reported(plugin_modules):
    module = plugin_modules("typo_plugin", """
        from repa.plugins import hookimpl
        def repa_register_alignment_loss(registry):
            pass
    """)
    components = load_components(autoload=False, plugins=[module])
    assert any("repa_register_alignment_loss" in w and "repa_register_alignment_losses" in w
               for w in components.warnings)


HEAVY = ("torch", "timm", "diffusers", "open_clip", "accelerate", "wandb")


@pytest.mark.parametrize("argv", [["--help"], ["plugins"], ["validate", "experiments/sit_xl_repa.toml"]])
def test_cli_does_not_import_heavy_libraries(argv):
    code = (
        "import sys, runpy; sys.argv = ['repa'] + %r\n"
        "try:\n    runpy.run_module('repa.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "import json; print(json.dumps([m for m in %r if m in sys.modules]), file=sys.stderr)" % (argv, HEAVY)
    )
    from tests.conftest import ROOT

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert json.loads(result.stderr.strip().splitlines()[-1]) == []


PLUGIN_PYPROJECT = """
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "repa-test-l1"
version = "0.0.1"

[project.entry-points.repa]
l1 = "repa_test_l1"
"""

PLUGIN_MODULE = """
from pydantic import Field

from repa.interfaces import Params
from repa.plugins import hookimpl


class L1Params(Params):
    scale: float = Field(1.0, gt=0)


def _l1(params):
    import torch

    def loss(projected, target):
        return params.scale * (projected.float() - target.float()).abs().mean(dim=(1, 2))

    return loss


@hookimpl
def repa_register_alignment_losses(registry):
    registry.add("l1", _l1, L1Params, "mean absolute error between tokens")
"""


def test_pip_installed_plugin_registers_a_loss_usable_from_toml(tmp_path, tiny_toml):
    package = tmp_path / "repa-test-l1"
    package.mkdir()
    (package / "pyproject.toml").write_text(PLUGIN_PYPROJECT)
    (package / "repa_test_l1.py").write_text(PLUGIN_MODULE)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(package)], check=True, capture_output=True)
    env = {"PYTHONPATH": str(site)}
    listing = run_cli("plugins", "alignment_loss", env=env)
    assert listing.returncode == 0
    block = re.search(r"^  l1  \(from (\S+)\)\n((?:    .*\n)*)", listing.stdout, re.M)
    assert block.group(1) == "repa-test-l1" and "parameters: scale=1.0" in block.group(2)
    experiment = tiny_toml('\n[[alignment]]\nencoder = { kind = "digits-convnet", epochs = 2 }\n'
                           'depth = 2\nprojector_dim = 32\nloss = { kind = "l1", scale = 2.0 }\n')
    result = run_cli("validate", str(experiment), env=env)
    assert result.returncode == 0, result.stderr
    assert 'kind = "l1"' in result.stdout and "scale = 2.0" in result.stdout
    without = run_cli("validate", str(experiment))
    assert without.returncode == 2 and "unknown alignment loss 'l1'" in without.stderr
