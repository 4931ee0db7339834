"""A training run's checkpoints: what a step's state is, how it is written and restored (the
files themselves: repa.engine.checkpoint)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from repa.config import ExperimentConfig, config_hash
from repa.engine import checkpoint as ckpt
from repa.engine.network import checkpoint_layout, network_layout
from repa.engine.processes import main_decides
from repa.errors import CheckpointError
from repa.storage import require_space, writing

log = logging.getLogger("repa")


@dataclass
class Counters:
    step: int = 0
    nonfinite_total: int = 0
    nonfinite_in_row: int = 0
    # This process's values of each step since the last log line ({name: float} per step): a checkpoint
    # between log steps keeps them (in rng-<rank>.pt), so the next record averages the same steps
    # whether or not the run stopped and resumed in between.
    unlogged: list = field(default_factory=list)


class RunCheckpoints:
    """checkpoints/<step>/ of one run: model, EMA, optimizer (+ grad scaler), counters, RNG."""

    def __init__(self, config: ExperimentConfig, acc, parallel, folder: Path):
        self.config, self.acc, self.parallel, self.folder = config, acc, parallel, Path(folder)

    def restore(self, resume: str | bool, model, ema, optimizer, phema=None) -> Counters | None:
        """Load the checkpoint `resume` names (a folder, or True: the latest usable) into the run;
        None when `resume` is True and there is none (a run killed before its first checkpoint
        starts again from step 0)."""
        acc, rank = self.acc, self.acc.process_index
        if isinstance(resume, str):
            folder = Path(resume)
            saved = ckpt.read(folder, rank)
        else:
            found = ckpt.latest_usable(self.folder, rank, log.warning)
            if found is None and ckpt.complete_checkpoints(self.folder):  # all corrupt: never start over them
                raise CheckpointError(f"{self.folder}: no checkpoint verifies (see the lines above); restore one, "
                                      "or move the folder away to start this run again")
            if found is None:
                if acc.is_main_process:
                    log.warning("repa: no checkpoint in %s yet (the run stopped before its first); starting from "
                                "step 0", self.folder)
                return None
            folder, saved = found
        if saved.state.get("layout") != ckpt.LAYOUT:
            raise CheckpointError(
                f"{folder}: written by repa before contract 1.0, whose parameter order differs; its weights still "
                f"sample and evaluate (`repa sample --checkpoint {folder}`), but training cannot resume from it")
        saved.model, saved.ema = network_layout(saved.model, ema), network_layout(saved.ema, ema)
        self.parallel.load(model, ema, optimizer, saved, str(folder))
        if phema is not None:
            phema.load(self._phema_state(folder), str(folder / ckpt.PHEMA_FILE))
        if saved.optimizer.get("scaler") and acc.scaler is not None:
            acc.scaler.load_state_dict(saved.optimizer["scaler"])
        state = saved.state
        counters = Counters(state["step"], state.get("nonfinite_total", 0), state.get("nonfinite_in_row", 0))
        if saved.rng is not None:
            ckpt.set_rng_state(saved.rng)
            counters.unlogged = saved.rng.get("unlogged", [])
        if state.get("config_hash") != config_hash(self.config):
            log.warning("repa: the experiment's resolved config differs from the one of checkpoint %s "
                        "(hash %s vs %s); continuing with the current file", folder.name,
                        config_hash(self.config), state.get("config_hash"))
        if acc.is_main_process:
            log.info("repa: resumed from %s at step %d", folder, counters.step)
        return counters

    @staticmethod
    def _phema_state(folder: Path) -> dict:
        path = folder / ckpt.PHEMA_FILE
        if not path.is_file():
            raise CheckpointError(f"{folder}: has no {ckpt.PHEMA_FILE} (written without train.posthoc_ema); resume "
                                  "with the setting it was trained with, or start a new run to track post-hoc EMA")
        from repa.weights import load_file

        return load_file(path)

    def save(self, model, ema, optimizer, counters: Counters, diagnostic: bool = False, phema=None) -> Path:
        """Every process writes its RNG state, the main one the rest; atomically (rename last)."""
        acc, step = self.acc, counters.step
        name = f"diagnostic-{step:07d}" if diagnostic else ckpt.checkpoint_name(step)
        tmp = self.folder / f".tmp-{name}"
        model_state, ema_state, optimizer_state = self.parallel.states(model, ema, optimizer)
        phema_state = phema.state() if phema is not None else None
        needed = ckpt.state_bytes((model_state, ema_state, optimizer_state, phema_state or {}))
        main_decides(acc, lambda: require_space(self.folder, needed))  # every process stops, not only main
        # a full disk: one line, no .tmp-* left (main removes it: the folder is shared), older ones kept
        with writing(tmp, needed, temporary=[tmp] if acc.is_main_process else []):
            if acc.is_main_process:
                ckpt.begin(self.folder, step) if not diagnostic else tmp.mkdir(parents=True, exist_ok=True)
            acc.wait_for_everyone()
            ckpt.write_rank_state(tmp, acc.process_index, self.parallel.unwrapped(model), counters.unlogged)
            acc.wait_for_everyone()
            final = self.folder / name
            if acc.is_main_process:
                optimizer_state["scaler"] = acc.scaler.state_dict() if acc.scaler is not None else None
                state = {"step": step, "nonfinite_total": counters.nonfinite_total,
                         "nonfinite_in_row": counters.nonfinite_in_row, "config_hash": config_hash(self.config),
                         "processes": acc.num_processes, "distributed": self.config.train.distributed,
                         "layout": ckpt.LAYOUT}
                ckpt.write_main(tmp, checkpoint_layout(model_state), checkpoint_layout(ema_state), optimizer_state,
                                state, phema_state)
                if diagnostic:  # a resumed run may diverge at the same step again: replace the old one
                    ckpt.write_manifest(tmp)
                    ckpt.move_into_place(tmp, final)
                else:
                    final = ckpt.commit(tmp, self.folder, step, self.config.train.keep_checkpoints,
                                        self.config.train.keep_every)
        acc.wait_for_everyone()
        return final
