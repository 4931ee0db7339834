"""The plugins' tests share the core suite's fixtures: an isolated cache, a tiny experiment, the CLI runner,
the test-only "given" encoder."""

from tests.conftest import _isolated_cache, given_encoders, tiny_toml, write_toml  # noqa: F401
