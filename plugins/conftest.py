"""The plugins' tests share the core suite's fixtures: an isolated cache, a tiny experiment, the CLI runner."""

from tests.conftest import _isolated_cache, tiny_toml, write_toml  # noqa: F401
