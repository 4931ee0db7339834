"""Experiment configs: TOML -> pydantic, two-phase component validation, overrides, hashing."""

from repa.config.component import Component, Kind
from repa.config.loader import load_experiment, translate_errors, validate_component, validate_experiment
from repa.config.resolve import config_hash, to_dict, to_toml
from repa.config.schema import AlignmentEntry, ExperimentConfig
from repa.config.source import Source

__all__ = [
    "AlignmentEntry",
    "Component",
    "ExperimentConfig",
    "Kind",
    "Source",
    "config_hash",
    "load_experiment",
    "to_dict",
    "to_toml",
    "translate_errors",
    "validate_component",
    "validate_experiment",
]
