"""The resolved config: written next to each run as TOML, and hashed to identify the run."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import tomli_w

from pydantic import BaseModel

from repa.config.component import Component, Kind
from repa.config.schema import ExperimentConfig

# Keys that cannot change what a run computes; they do not enter the hash, so renaming a run,
# moving its folder or checkpointing it more often keeps its identity in ablation tables.
UNHASHED = (
    ("experiment", "name"),
    ("experiment", "output_dir"),
    ("tracker",),
    ("train", "log_every"),
    ("train", "num_workers"),
    ("train", "threads"),  # (it can change float reductions' order: runs compared bitwise fix it)
    ("train", "keep_checkpoints"),
    ("train", "checkpoint_every"),  # resuming is exact: checkpoints do not change the weights
)
# Keys added since, which do not change the weights either: hashed as if unset, so a run that sets one
# keeps the id of the same run without it (removing them from the hashed data instead would leave an
# empty section behind: another id).
UNSET_FOR_HASH = (
    ("train", "keep_every"),
    ("eval", "every"),  # evaluating during training reads the EMA; the weights are those of a run without it
    ("eval", "every_num_samples"),
)


def to_dict(config: ExperimentConfig) -> dict[str, Any]:
    return config.model_dump(mode="json", exclude_none=True)


def to_toml(config: ExperimentConfig) -> str:
    return tomli_w.dumps(to_dict(config))


def config_hash(config: ExperimentConfig, length: int = 12) -> str:
    """The run's identity: the values that differ from the defaults (so a release that adds a
    key with a default keeps every earlier run id), minus UNHASHED. Changing a default is
    therefore a breaking change for run ids, made on purpose or not at all."""
    data = _non_default(_as_if_unset(config, UNSET_FOR_HASH))
    if "labels" in data.get("sample", {}):  # hashed under its earlier name: run ids stay as they were
        data["sample"]["label_sampling"] = data["sample"].pop("labels")
    for path in UNHASHED:
        node = data
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _as_if_unset(config: ExperimentConfig, paths) -> ExperimentConfig:
    """The config with these (section, key) values at their defaults."""
    for section, key in paths:
        part = getattr(config, section)
        default = type(part).model_fields[key].get_default(call_default_factory=True)
        config = config.model_copy(update={section: part.model_copy(update={key: default})})
    return config


def _non_default(model: BaseModel) -> dict[str, Any]:
    out = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if value is None:
            continue
        rendered = _render(value)
        if not info.is_required() and rendered == _render(info.get_default(call_default_factory=True)):
            continue
        shorthand = next((m.default for m in info.metadata if isinstance(m, Kind)), None)
        if shorthand is not None and rendered == {"kind": shorthand}:
            continue  # the loader's default component, e.g. path = "linear"
        out[name] = rendered
    return out


def _render(value: Any) -> Any:
    if isinstance(value, Component):
        return {"kind": value.kind, **_non_default(value.params)}
    if isinstance(value, BaseModel):
        return _non_default(value)
    if isinstance(value, (list, tuple)):
        return [_render(v) for v in value]
    if isinstance(value, dict):
        return {k: _render(v) for k, v in value.items()}
    return value
