"""The documentation says what the code does."""

from __future__ import annotations

import re

from repa.config.schema import ExperimentConfig
from tests.conftest import ROOT


def test_contributing_walkthrough_matches_the_example_plugin_line_for_line():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    blocks = re.findall(r"`(plugins/repa-gram/[^`]+)`:\n\n```\w*\n(.*?)```", text, flags=re.S)
    assert {path for path, _ in blocks} == {"plugins/repa-gram/pyproject.toml", "plugins/repa-gram/repa_gram/__init__.py",
                                            "plugins/repa-gram/repa_gram/loss.py", "plugins/repa-gram/tests/test_gram.py"}
    for path, body in blocks:
        assert body == (ROOT / path).read_text(), path


def test_readme_starts_with_the_two_commands_ci_runs():
    lines = (ROOT / "README.md").read_text().splitlines()
    fence = lines.index("```bash")
    install, test = lines[fence + 1], lines[fence + 2]
    assert "pip install -e" in install and install.endswith("repa run experiments/quickstart.toml")
    assert test.endswith("pytest -q") and lines[fence + 3] == "```"
    assert "README.md" in (ROOT / ".ci" / "run").read_text()


def test_readme_config_reference_names_every_key():
    text = (ROOT / "README.md").read_text()
    for section, info in ExperimentConfig.model_fields.items():
        assert f"[{section}]" in text or f"[[{section}]]" in text, section
        model = info.annotation
        args = getattr(model, "__args__", ())
        inner = args[0] if args else model
        fields = getattr(inner, "model_fields", {})
        for key in fields:
            assert f"`{key}`" in text, f"{section}.{key} is not documented in README.md"


def test_readme_names_every_builtin_component_and_parameter():
    from repa.plugins import KINDS, load_components

    text = (ROOT / "README.md").read_text()
    components = load_components(autoload=False)
    for kind in KINDS:
        for entry in components[kind]:
            if kind == "backbone" and entry.name.startswith("SiT-"):
                continue  # the presets are documented as SiT-{S,B,L,XL}/{2,4,8}
            if kind == "encoder":
                assert entry.name in text or entry.name.split("-vit-")[0] in text, entry.name
            else:
                assert f"`{entry.name}`" in text, f"{kind} {entry.name} is not in README.md"
            for key in entry.params.model_fields:
                assert f"`{key}`" in text, f"{kind} {entry.name}: parameter {key} is not in README.md"
