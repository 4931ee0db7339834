"""Trackers: where scalars and images go besides the run record (metrics.jsonl, samples/),
which every run writes."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from repa.interfaces import Params
from repa.plugins import hookimpl


class WandbParams(Params):
    project: str = "REPA"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="default: WANDB_MODE, else online"
    )
    tags: list[str] = Field(default_factory=list)


def _jsonl(params, *, run_dir, config):
    from repa.components.tracker.trackers import RecordOnly

    return RecordOnly()


def _wandb(params, *, run_dir, config):
    from repa.components.tracker.trackers import WandbTracker

    return WandbTracker(params, run_dir, config)


@hookimpl
def repa_register_trackers(registry):
    registry.add("jsonl", _jsonl, description="the run record alone: metrics.jsonl and PNG files in the run folder")
    registry.add("wandb", _wandb, WandbParams, "Weights & Biases (online, or offline with WANDB_MODE=offline)")
