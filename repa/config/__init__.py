"""Experiment configs: TOML -> pydantic, two-phase component validation, overrides, hashing."""

from repa.config.component import Component, Kind
from repa.config.loader import load_experiment, validate_experiment
from repa.config.resolve import config_hash, to_dict, to_toml
from repa.config.schema import AlignmentEntry, ExperimentConfig

__all__ = [
    "AlignmentEntry",
    "Component",
    "ExperimentConfig",
    "Kind",
    "config_hash",
    "load_experiment",
    "to_dict",
    "to_toml",
    "validate_experiment",
]
