"""Errors a user can act on. Each renders as one line; the CLI prints it without a traceback."""

from __future__ import annotations


class RepaError(Exception):
    """Base class: an error whose message alone tells the user what is wrong and what to do."""

    exit_code = 1


class ConfigError(RepaError):
    """An experiment file (or an override) is invalid. Holds one line per problem."""

    exit_code = 2

    def __init__(self, lines: list[str]):
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


class PluginError(RepaError):
    """The plugin set is inconsistent (a name registered twice, built-ins missing)."""

    exit_code = 2


class ContractError(PluginError):
    """A component breaks its kind's contract (repa.interfaces): a factory's signature, a params
    model, or the built object. One line naming distribution, kind, name and what is expected."""


class MissingWeightsError(RepaError):
    """Pretrained weights are not on this machine; the message says what to download and where."""


class DataError(RepaError):
    """A dataset on disk is missing, malformed or does not match the experiment."""


class CheckpointError(RepaError):
    """A checkpoint cannot be used (corrupt, truncated, incompatible shapes)."""
