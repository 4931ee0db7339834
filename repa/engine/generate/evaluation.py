"""`repa evaluate`: score samples with the configured metrics; on a run folder, sample and score
every checkpoint not evaluated yet, appending the results to the run's metrics.jsonl."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

from repa.config import ExperimentConfig, load_experiment, to_dict
from repa.engine import checkpoint as ckpt
from repa.errors import DataError

log = logging.getLogger("repa")


def evaluate_images(metrics, images: np.ndarray, labels: np.ndarray | None, reference: str | None,
                    prompts: list[str] | None = None) -> dict:
    """Metrics sharing a feature_key share one feature pass (and one reference pass); `prompts` (text models'
    samples) go to the metrics whose `score` takes them."""
    features, references, results = {}, {}, {}
    for component in metrics:
        metric = component.build()
        key = metric.feature_key
        if key not in features:
            features[key] = metric.features(images)
        ref_key = (key, type(metric).reference)  # metrics that read the reference the same way share it
        if ref_key not in references:
            references[ref_key] = metric.reference(reference)
        results.update(metric_score(metric, features[key], references[ref_key], labels, prompts))
    return results


def metric_score(metric, features, reference, labels, prompts=None) -> dict:
    """metric.score, with the prompts when it declares a `prompts` parameter (a metric that scores text)."""
    import inspect

    takes_prompts = "prompts" in inspect.signature(metric.score).parameters
    return metric.score(features, reference, labels, **({"prompts": prompts} if takes_prompts else {}))


def read_samples(npz: Path) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """arr_0 uint8 [N,H,W,3] (N >= 1) and, when the file has them, integer labels [N] and the prompts [N] a
    text model drew them for; anything else is one line."""
    if not npz.is_file():
        raise DataError(f"{npz}: no such file")
    try:
        with np.load(npz) as data:
            if "arr_0" not in data:
                raise DataError(f"{npz}: no 'arr_0' (uint8 [N,H,W,3]); not an ADM-format sample batch")
            images = data["arr_0"]
            labels = data["labels"] if "labels" in data else None
            prompts = data["prompts"] if "prompts" in data else None
    except (ValueError, OSError, EOFError, __import__("zipfile").BadZipFile) as exc:
        raise DataError(f"{npz}: not a readable .npz of arrays ({type(exc).__name__}: {str(exc).strip()[:120]}); "
                        "redraw the samples with repa sample") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise DataError(f"{npz}: arr_0 is {images.dtype} {list(images.shape)}, expected uint8 [N, H, W, 3] with N >= 1")
    if labels is not None:
        labels = checked_labels(npz, labels, len(images))
    if prompts is not None and (prompts.dtype.kind != "U" or prompts.shape != (len(images),)):
        raise DataError(f"{npz}: prompts are {prompts.dtype} {list(prompts.shape)}, expected {len(images)} strings")
    return images, labels, None if prompts is None else prompts.tolist()


def checked_labels(npz: Path, labels: np.ndarray, count: int) -> np.ndarray:
    """Integer class labels, one per image, none negative (a null or a string label is not a class)."""
    if labels.shape != (count,) or labels.dtype.kind not in "iu":
        raise DataError(f"{npz}: labels are {labels.dtype} {list(labels.shape)}, expected integers [{count}]")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{npz}: labels hold {int(labels.min())}; class labels are 0 or more")
    return labels


def _digest(data) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def settings_key(config: ExperimentConfig) -> str:
    """Identifies how samples were drawn (sampler, guidance, autoencoder, count, seed, labels)."""
    data = to_dict(config)
    sample = {k: v for k, v in data["sample"].items() if k != "batch_size"}
    return _digest({"sample": sample, "autoencoder": data["autoencoder"], "num": config.eval.num_samples,
                    "seed": config.experiment.seed})


def metrics_key(config: ExperimentConfig) -> str:
    """Identifies how samples were scored: the metrics, their parameters and the reference."""
    data = to_dict(config)
    return _digest({"metrics": data["eval"]["metrics"], "reference": config.eval.reference})


def posthoc_key(key: str, std: float) -> str:
    """The settings key of samples drawn from the post-hoc EMA reconstructed at width `std`."""
    return _digest({"settings": key, "ema_std": std})


def evaluated_steps(run_dir: Path, key: str, scored_by: str) -> set[int]:
    from repa.engine.record import read_records

    return {r["step"] for r in read_records(run_dir)
            if r.get("eval_settings") == key and r.get("eval_metrics") == scored_by}


def evaluate_run(run_dir: Path, overrides=(), progress: bool = True, ema_stds=()) -> list[dict]:
    """Sample and score each checkpoint of a run that has no result for these settings and metrics
    yet (samples already drawn with these settings are reused). Sampling is shared by every
    process; scoring and the record are the main process's. `ema_stds`: instead of the classic EMA,
    the post-hoc EMA reconstructed at each of these widths, at each checkpoint step with a snapshot."""
    from accelerate import PartialState

    from repa.engine.processes import main_decides
    from repa.engine.locks import EvaluateLock

    config_file = run_dir / "config.resolved.toml"
    if not config_file.is_file():
        raise DataError(f"{run_dir}: no config.resolved.toml; not a run folder written by `repa run`")
    config = load_experiment(config_file, overrides)
    if not config.eval.metrics:
        raise DataError(f"{config_file}: [eval] metrics is empty; set eval.metrics (e.g. --set eval.metrics=[\"fid\"])")
    key, scored_by = settings_key(config), metrics_key(config)
    if not ckpt.complete_checkpoints(run_dir / "checkpoints"):
        raise DataError(f"{run_dir}: no checkpoint to evaluate (checkpoints/ is empty or missing); train it first, "
                        "or resume it with repa run ... --resume")
    state = PartialState(cpu=not _cuda())
    lock = EvaluateLock(run_dir)
    main_decides(state, lock.acquire)  # refused: every process of the launch stops
    try:
        if not ema_stds:
            steps = [(int(f.name), lambda f=f: f) for f in ckpt.complete_checkpoints(run_dir / "checkpoints")]
            return _evaluate_checkpoints(run_dir, config, key, scored_by, state, progress, steps)
        results = []
        for std in ema_stds:
            steps = [(step, lambda step=step, std=std: _posthoc_weights(run_dir, step, std, state))
                     for step in _posthoc_steps(run_dir, config)]
            results += _evaluate_checkpoints(run_dir, config, posthoc_key(key, std), scored_by, state, progress,
                                             steps, {"ema_std": std})
        return results
    finally:
        lock.release()


def _posthoc_steps(run_dir: Path, config: ExperimentConfig) -> list[int]:
    """The snapshot steps at the checkpoint cadence and the last one (pruned checkpoints included:
    a reconstruction needs only the snapshots)."""
    from repa.engine.train.phema import snapshots

    taken = sorted(snapshots(run_dir))
    return [step for step in taken if step % config.train.checkpoint_every == 0 or step == taken[-1]]


def _posthoc_weights(run_dir: Path, step: int, std: float, state) -> Path:
    """The post-hoc EMA at (step, std): written by the main process the first time it is needed."""
    from repa.engine.processes import main_decides
    from repa.engine.train.phema import reconstructed_file, write_reconstructions

    path = reconstructed_file(run_dir, step, std)
    main_decides(state, lambda: path.is_file() or write_reconstructions(run_dir, [std], step))  # every process calls
    return path


def _evaluate_checkpoints(run_dir: Path, config, key: str, scored_by: str, state, progress: bool, steps,
                          extra: dict | None = None) -> list[dict]:
    """`steps`: (step, a function giving the weights to sample: a checkpoint folder or a post-hoc EMA file)
    pairs, each evaluated unless done; `extra`: recorded with each result."""
    from repa.engine.record import RunRecord
    from repa.engine.generate.sampling import SampleRun

    done = evaluated_steps(run_dir, key, scored_by)
    results = []
    for step, weights in steps:
        if step in done:
            continue
        out = run_dir / "eval" / f"{step:07d}-{key}"
        npz = SampleRun(config, weights(), out, config.eval.num_samples, config.experiment.seed,
                        config.sample.batch_size, config.sample.labels, progress).run()
        if state.is_main_process:
            images, labels, prompts = read_samples(npz)
            scores = evaluate_images(config.eval.metrics, images, labels, config.eval.reference, prompts)
            record = {"eval": scores, "eval_settings": key, "eval_metrics": scored_by, **(extra or {}),
                      **sampling_record(config)}
            RunRecord(run_dir).log(step, record)
            results.append({"step": step, **(extra or {}), **scores})
        state.wait_for_everyone()
    return results


def sampling_record(config: ExperimentConfig) -> dict:
    """How an evaluation's samples were drawn, as its record states it (beside the settings digest)."""
    scale, interval = config.sample.guidance_settings()
    return {"num_samples": config.eval.num_samples, "labels": config.sample.labels,
            "sampler": config.sample.sampler.kind, "steps": config.sample.steps, "cfg_scale": scale,
            "guidance_interval": list(interval), "allow_tf32": config.sample.allow_tf32}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()
