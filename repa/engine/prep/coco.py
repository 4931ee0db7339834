"""`repa preprocess coco SRC DEST`: MS-COCO's images and captions -> the official text-to-image layout.

The official REPA text-to-image code (sihyun-yu/REPA @ 67f7145, dataset.py `MSCOCO256Features`) trains on
U-ViT's COCO features (baofff/U-ViT, scripts/extract_mscoco_feature.py and extract_empty_feature.py)
plus each image as <i>.png:

    SRC/train2014/*.jpg, SRC/annotations/captions_train2014.json   (val2014 alike), as COCO's zips unpack
    DEST/<split>/<i>.png       image i (COCO ids in sorted order), U-ViT's crop: the centred square, Lanczos
    DEST/<split>/<i>.npy       its autoencoder moments [8, R/8, R/8]: mean and log-variance, as U-ViT's
    DEST/<split>/<i>_<k>.npy   the text encoder's context of its k-th caption (annotation order) [77, 768]
    DEST/<split>/captions.json {i: [caption, ...]}: what the contexts say (repa's grids and `repa sample`)
    DEST/empty_context.npy     the empty caption's context (guidance, label dropout)

SD-VAE ft-mse and ft-ema fine-tuned only the decoder: their encoder is the kl-f8 one in U-ViT's
autoencoder_kl.pth, so the moments are U-ViT's. Images without a caption are left out (COCO 2014 has
none) and listed in skipped.txt, so i counts the captioned images.

Resumable: finished files are kept (each written under a temporary name, then renamed), and
DEST/<split>/preprocess.json records what each image's files were made from; a changed image redoes its
PNG and moments, a changed caption redoes its context. Distributed like `preprocess latents`: under
`accelerate launch`, process r of n takes the images i = r mod n; each crops with `workers` processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from repa.console import progress_bar
from repa.engine.prep.preprocess import (
    WORKER_DIED, crop_one, map_in_processes, save_npy, source_signature, write_json_atomic,
)
from repa.errors import DataError
from repa.storage import StorageError, write_atomic, writing

SPLITS = ("train", "val")
RECORD = "preprocess.json"
OUTPUT = re.compile(r"^(\d+)(?:\.png|\.npy|_(\d+)\.npy)$")  # <i>.png, <i>.npy, <i>_<k>.npy
DOWNLOADS = "cocodataset.org/#download"


@dataclass
class CocoImage:
    file: Path
    captions: list[str]


@dataclass
class SplitSummary:
    images: int = 0
    cropped: int = 0
    encoded: int = 0
    contexts: int = 0
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (source, why): no caption
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, why): could not be cropped


def annotations_file(src: Path, split: str, year: int) -> Path:
    return src / "annotations" / f"captions_{split}{year}.json"


def read_coco(src: Path, split: str, year: int = 2014) -> tuple[list[CocoImage], list[tuple[str, str]]]:
    """The split's images in sorted id order, each with its captions in annotation order (pycocotools'
    getAnnIds, which U-ViT's MSCOCODatabase reads), and the images left out for having no caption."""
    annotations, folder = annotations_file(src, split, year), src / f"{split}{year}"
    if not annotations.is_file():
        raise DataError(f"{annotations}: not found; unpack annotations_trainval{year}.zip ({DOWNLOADS}) into {src}")
    if not folder.is_dir():
        raise DataError(f"{folder}: not found; unpack {split}{year}.zip ({DOWNLOADS}) into {src}")
    try:
        data = json.loads(annotations.read_bytes())
        files = {int(image["id"]): str(image["file_name"]) for image in data["images"]}
        captions: dict[int, list[str]] = {key: [] for key in files}
        for annotation in data["annotations"]:
            captions.get(int(annotation["image_id"]), []).append(str(annotation["caption"]))
    except ValueError as exc:
        raise DataError(f"{annotations}: not JSON ({exc}); unpack annotations_trainval{year}.zip again") from None
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{annotations}: not a COCO captions file ({type(exc).__name__}: {exc}); expected "
                        "images [{id, file_name}] and annotations [{image_id, caption}]") from None
    images, skipped = [], []
    for key in sorted(files):
        if captions[key]:
            images.append(CocoImage(folder / files[key], captions[key]))
        else:
            skipped.append((str(folder / files[key]), "no caption in " + annotations.name))
    return images, skipped


def _signature(image: CocoImage) -> list:
    """What image i's files come from: the source file (name, size, time), then a digest per caption."""
    try:
        source = source_signature(image.file)
    except OSError:
        source = [str(image.file), None, None]  # missing: it fails in the crop and is reported there
    return [*source, [hashlib.blake2b(text.encode(), digest_size=6).hexdigest() for text in image.captions]]


def plan(out: Path, images: list[CocoImage], settings: dict) -> None:
    """Remove the outputs that no longer match `images` (a changed image: its PNG and moments; a changed or
    removed caption: its context; indices past the end), then record what every image's files come from.
    A folder holding such files that this command did not write, or written with other settings, is
    refused: nothing is removed."""
    previous = json.loads((out / RECORD).read_text()) if (out / RECORD).is_file() else None
    names = os.listdir(out) if out.is_dir() else []
    if previous is None and any(OUTPUT.match(name) for name in names):
        raise DataError(f"{out}: holds files that `repa preprocess coco` did not write (no {RECORD}); give another "
                        "DEST, or move them away")
    if previous is not None and previous.get("settings") != settings:
        was = previous.get("settings") or {}
        key = next((k for k in settings if was.get(k) != settings[k]), None)
        differs = f"{key} {was.get(key)}, this run asks for {settings[key]}" if key else f"settings {was}"
        raise DataError(f"{out}: was written with {differs}; give another DEST, or the same options to resume")
    old = previous["sources"] if previous else []
    new = [_signature(image) for image in images]
    for name in names:
        found = OUTPUT.match(name)
        if name.startswith(".") and ".tmp" in name:  # half-written by a stopped run
            (out / name).unlink(missing_ok=True)
        if not found:
            continue
        i, caption = int(found[1]), found[2]
        if i >= len(new) or i >= len(old):
            stale = True
        elif caption is None:
            stale = old[i][:-1] != new[i][:-1]
        else:
            k, was, now = int(caption), old[i][-1], new[i][-1]
            stale = k >= len(now) or k >= len(was) or was[k] != now[k]
        if stale:
            (out / name).unlink()
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / RECORD, {"settings": settings, "sources": new})


def log_variance(moments) -> np.ndarray:
    """repa's moments (mean, std) [B, 2C, h, w] -> U-ViT's (mean, log-variance), float32; the
    log-variance is clamped to [-30, 20] as the readers clamp it."""
    import torch

    mean, std = moments.float().chunk(2, dim=1)
    return torch.cat([mean, (2 * torch.log(std)).clamp(-30.0, 20.0)], dim=1).numpy()


class Lazy:
    """A component built on first use (a resumed run with every file present loads no weights)."""

    def __init__(self, component, device):
        self.component, self.device, self._built = component, device, None

    def __call__(self):
        if self._built is None:
            self._built = self.component.build().to(self.device)
        return self._built


@contextlib.contextmanager
def stage(description: str, total: int, progress: bool):
    """A progress bar (or plain lines) for one stage, shown only with `progress` (the main process's)."""
    with progress_bar(description, enabled=progress) as bar:
        task = bar.add_task(description, total=total, rate="", visible=progress)
        yield lambda n=1: bar.advance(task, n)


def crop_images(out: Path, images: list[CocoImage], mine: list[int], resolution: int, workers: int,
                summary: SplitSummary, progress: bool) -> set[int]:
    """Write this process's missing <i>.png; -> the indices that failed (listed in the summary)."""
    jobs = [(i, str(images[i].file), str(out / f"{i}.png"), resolution, "uvit") for i in mine
            if not (out / f"{i}.png").is_file()]
    failed: set[int] = set()
    with stage("crop", len(jobs), progress) as advance:

        def finished(result: tuple[int, str | None, str | None]) -> None:
            index, error, fault = result
            if fault:  # a full disk fails every image alike: stop (finished images stay for a rerun)
                raise StorageError(fault)
            if error:
                failed.add(index)
                summary.failed.append((str(images[index].file), error))
            else:
                summary.cropped += 1
            advance()

        try:
            map_in_processes(crop_one, jobs, max(1, workers), finished, died=lambda job: (job[0], WORKER_DIED, None))
        finally:  # half-written files of this process's stopped or dead workers (not the other processes')
            for job in jobs:
                (out / f".{job[0]}.png.tmp").unlink(missing_ok=True)
    return failed


def encode_moments(out: Path, todo: list[int], autoencoder: Lazy, batch_size: int, summary: SplitSummary,
                   progress: bool) -> None:
    import torch

    from repa.components.dataset.files import read_image

    with stage("moments", len(todo), progress) as advance:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = torch.stack([torch.from_numpy(read_image(out / f"{i}.png")) for i in chunk])
            encoder = autoencoder()
            moments = log_variance(encoder.encode(batch.to(autoencoder.device)).cpu())
            for i, moment in zip(chunk, moments):
                save_npy(out / f"{i}.npy", moment)
            summary.encoded += len(chunk)
            advance(len(chunk))


def encode_captions(out: Path, todo: list[tuple[int, int, str]], text_encoder: Lazy, batch_size: int,
                    summary: SplitSummary, progress: bool) -> None:
    with stage("captions", len(todo), progress) as advance:
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            contexts = text_encoder().encode([caption for _, _, caption in chunk]).float().cpu().numpy()
            for (i, k, _), context in zip(chunk, contexts):
                save_npy(out / f"{i}_{k}.npy", context)
            summary.contexts += len(chunk)
            advance(len(chunk))


def preprocess_split(src: Path, dest: Path, split: str, settings: dict, autoencoder: Lazy, text_encoder: Lazy,
                     state, workers: int, batch_size: int, year: int, progress: bool) -> SplitSummary:
    from accelerate.utils import gather_object

    images, left_out = read_coco(src, split, year)
    if not images:
        raise DataError(f"{annotations_file(src, split, year)}: no image has a caption")
    out = dest / split
    if state.is_main_process:
        plan(out, images, settings)
    state.wait_for_everyone()
    summary = SplitSummary(images=len(images), left_out=left_out)
    mine = [i for i in range(len(images)) if i % state.num_processes == state.process_index]
    progress = progress and state.is_main_process
    failed = crop_images(out, images, mine, settings["resolution"], workers, summary, progress)
    encode_moments(out, [i for i in mine if i not in failed and not (out / f"{i}.npy").is_file()], autoencoder,
                   batch_size, summary, progress)
    encode_captions(out, [(i, k, caption) for i in mine for k, caption in enumerate(images[i].captions)
                          if not (out / f"{i}_{k}.npy").is_file()], text_encoder, batch_size, summary, progress)
    state.wait_for_everyone()
    summary.failed = sorted(gather_object(summary.failed))  # every process's, for the one error line
    if state.is_main_process:
        write_json_atomic(out / "captions.json", {str(i): image.captions for i, image in enumerate(images)})
        _write_skipped(out, summary.left_out + summary.failed)
    return summary


def _write_skipped(out: Path, skipped: list[tuple[str, str]]) -> None:
    """Every image without files: left out (no caption) or failed, with why; none: no file."""
    if skipped:
        listed = "".join(f"{path}\t{reason}\n" for path, reason in skipped)
        write_atomic(out / "skipped.txt", listed.encode("utf-8", "surrogateescape"))
    else:
        (out / "skipped.txt").unlink(missing_ok=True)


def write_empty_context(dest: Path, text_encoder: Lazy) -> bool:
    """DEST/empty_context.npy: the context of "" (U-ViT's extract_empty_feature.py); False if it was there."""
    path = dest / "empty_context.npy"
    if path.is_file():
        return False
    save_npy(path, text_encoder().encode([""])[0].float().cpu().numpy())
    return True


def preprocess_coco(src: Path, dest: Path, autoencoder, text_encoder, splits=SPLITS, resolution: int = 256,
                    workers: int = 0, batch_size: int = 64, year: int = 2014,
                    progress: bool = True) -> dict[str, SplitSummary]:
    """`autoencoder` and `text_encoder`: validated components (built only if a file needs them).
    -> a summary per split; images that failed to crop raise one DataError at the end (the rest is kept)."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # CPU ranks need cpu=True
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise DataError(f"{src}: no such folder; give the folder holding COCO's train{year}/, val{year}/ and "
                        f"annotations/ ({DOWNLOADS})")
    settings = {"resolution": resolution, "autoencoder": autoencoder.to_dict(), "text_encoder": text_encoder.to_dict()}
    lazy_autoencoder, lazy_text = Lazy(autoencoder, state.device), Lazy(text_encoder, state.device)
    workers = workers or max(1, (os.cpu_count() or 1) // state.num_processes)
    summaries = {split: preprocess_split(src, dest, split, settings, lazy_autoencoder, lazy_text, state, workers,
                                         batch_size, year, progress) for split in splits}
    if state.is_main_process:
        write_empty_context(dest, lazy_text)
    failed = [(split, path, why) for split, s in summaries.items() for path, why in s.failed]
    if failed:
        split, path, why = failed[0]
        raise DataError(f"{path}: {why}; {len(failed)} image(s) could not be read (listed in "
                        f"{dest / split}/skipped.txt): replace them from COCO's zip and run the same command again "
                        "(the rest is kept)")
    return summaries
