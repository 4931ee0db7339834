"""The resolved config: written next to each run as TOML, and hashed to identify the run."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import tomli_w

from repa.config.schema import ExperimentConfig

# Keys that cannot change what a run computes; they do not enter the hash, so renaming a run
# or moving its folder keeps its identity in ablation tables.
UNHASHED = (
    ("experiment", "name"),
    ("experiment", "output_dir"),
    ("tracker",),
    ("train", "log_every"),
    ("train", "num_workers"),
    ("train", "keep_checkpoints"),
)


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude_none=True)


def to_toml(config: ExperimentConfig) -> str:
    return tomli_w.dumps(to_dict(config))


def config_hash(config: ExperimentConfig, length: int = 12) -> str:
    data = to_dict(config)
    for path in UNHASHED:
        node = data
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
