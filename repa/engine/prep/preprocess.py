"""`repa preprocess`: ImageNet-style folders -> the official REPA layout -> latents -> packed.

Official code: sihyun-yu/REPA @ 67f7145, preprocessing/dataset_tools.py and dataset.py.

    images   SRC DEST   ADM center crop, PNG, images/dataset.json (official names)
    latents  SRC DEST   SD-VAE moments (mean, std) in vae-sd/ (official names), accelerate-distributed
    pack     SRC DEST   the packed format (memory-mapped shards + manifest)
    features EXP DEST   a cache of one alignment encoder's tokens

Every step is resumable (finished outputs are kept and skipped) and writes each file
atomically (temporary name, then rename).
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from repa.components.dataset.crop import CROPS, to_rgb
from repa.components.dataset.files import IMAGE_EXTENSIONS, list_files, read_labels
from repa.console import progress_bar
from repa.errors import DataError
from repa.storage import StorageError, write_atomic, writing

log = logging.getLogger("repa")


def official_image_name(index: int) -> str:
    s = f"{index:08d}"
    return f"{s[:5]}/img{s}.png"


def official_latent_name(index: int) -> str:
    s = f"{index:08d}"
    return f"{s[:5]}/img-mean-std-{s}.npy"


def write_json_atomic(path: Path, data) -> None:
    write_atomic(path, json.dumps(data))


# ============================================================================
# images: class folders (or flat + labels file) -> images/ + dataset.json
# ============================================================================


def read_labels_file(path: Path) -> dict[str, int]:
    """JSON ({name: label} or [[name, label], ...] or dataset.json) or CSV/TXT lines `name,label` / `name label`."""
    if not path.is_file():
        raise DataError(f"{path}: labels file not found")
    text = path.read_text()
    try:
        data = json.loads(text)
        data = data.get("labels", data) if isinstance(data, dict) and "labels" in data else data
        return {str(k): int(v) for k, v in (data.items() if isinstance(data, dict) else data)}
    except ValueError:
        pass
    labels = {}
    for lineno, row in enumerate(csv.reader(text.splitlines()), 1):
        fields = row if len(row) == 2 else (row[0].split() if row else [])
        if not fields:
            continue
        if len(fields) != 2 or not fields[1].strip().lstrip("-").isdigit():
            raise DataError(f"{path}:{lineno}: expected `name,label`, got {','.join(row)!r}")
        labels[fields[0].strip()] = int(fields[1])
    return labels


def scan_source(src: Path, labels_file: Path | None = None) -> tuple[list[tuple[Path, int]], list[tuple[str, str]]]:
    """(file, label) in a fixed order: class folders sorted by name -> indices 0..K-1; and the
    (path, reason) of what was left out: links that lead nowhere or in a loop, and folder links
    back into SRC (a link to `.` would make a class of every image)."""
    if not src.is_dir():
        raise DataError(f"{src}: no such folder")
    skipped: list[tuple[str, str]] = []
    if labels_file is not None:
        labels = read_labels_file(labels_file)
        files = _readable(src, list_files(src, IMAGE_EXTENSIONS), skipped)
        missing = [f for f in files if f not in labels and Path(f).name not in labels]
        if missing:
            raise DataError(f"{labels_file}: no label for {missing[0]} (and {len(missing) - 1} more files)")
        return [(src / f, labels.get(f, labels.get(Path(f).name))) for f in files], skipped
    classes = _class_folders(src, skipped)
    if not classes:
        raise DataError(f"{src}: no class subfolders; use one folder per class or pass --labels FILE")
    entries = [(src / c / f, label) for label, c in enumerate(classes)
               for f in _readable(src / c, list_files(src / c, IMAGE_EXTENSIONS), skipped)]
    return entries, skipped


def _class_folders(src: Path, skipped: list) -> list[str]:
    """Sub-folders of SRC (links to folders elsewhere included, each target once)."""
    root, seen, classes = src.resolve(), {}, []
    for entry in sorted(src.iterdir(), key=lambda p: p.name):
        try:
            if entry.is_symlink() and not entry.exists():
                skipped.append((str(entry), "a link that leads nowhere or loops"))
                continue
            if not entry.is_dir():
                continue
            target = entry.resolve(strict=True)
        except (OSError, RuntimeError) as exc:  # a link loop (RuntimeError on Python < 3.13)
            skipped.append((str(entry), f"unreadable link ({type(exc).__name__})"))
            continue
        if target == root or target in root.parents:
            skipped.append((str(entry), f"links to {target}, which holds SRC itself"))
        elif target in seen:
            skipped.append((str(entry), f"links to the same folder as class {seen[target]!r}"))
        else:
            seen[target] = entry.name
            classes.append(entry.name)
    return classes


def _readable(folder: Path, names: list[str], skipped: list) -> list[str]:
    """The names that are files one can open; dangling and looping links go to `skipped`."""
    kept = []
    for name in names:
        try:
            if (folder / name).is_file():
                kept.append(name)
                continue
            reason = "not a regular file"
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        if (folder / name).is_symlink():
            reason = "a link that leads nowhere or loops" if reason == "not a regular file" else reason
        skipped.append((str(folder / name), reason))
    return kept


# Bytes a band of each mode takes once decoded (Pillow keeps 8-bit multi-band images at 4 bytes a pixel).
_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def decoded_bytes(image: Image.Image) -> int:
    """What decoding `image` takes (from its header alone)."""
    return image.size[0] * image.size[1] * _BYTES_PER_PIXEL.get(image.mode, 4)


def max_decoded_bytes() -> int:
    """Pillow bounds pixels (Image.MAX_IMAGE_PIXELS), not bytes: a 16-bit or float image under its pixel
    limit decodes to 2-4x what an 8-bit one does. The bound is what its limit allows an 8-bit RGB image."""
    return 3 * (Image.MAX_IMAGE_PIXELS or 89_478_485)


def crop_one(job: tuple[int, str, str, int, str]) -> tuple[int, str | None, str | None]:
    """Worker: crop one image (job: index, source, target PNG, resolution, crop: a key of CROPS) to its
    target; returns (index, why it was skipped, a write fault that stops the job)."""
    index, source, target, resolution, crop = job
    target_path = Path(target)
    tmp = target_path.with_name(f".{target_path.name}.tmp")
    try:
        with Image.open(source) as image:
            if decoded_bytes(image) > max_decoded_bytes():
                return index, (f"{image.size[0]}x{image.size[1]} {image.mode} decodes to "
                               f"{decoded_bytes(image) / 2**20:.0f} MiB, over the {max_decoded_bytes() / 2**20:.0f} MiB "
                               "bound (a decompression bomb?)"), None
            image.load()
            array = CROPS[crop](to_rgb(image), resolution)
        if array.shape != (resolution, resolution, 3):
            return index, f"cannot crop a {image.size[0]}x{image.size[1]} image to {resolution}", None
        with writing(target_path, array.nbytes, temporary=[tmp]):
            target_path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(tmp, format="png", compress_level=0)
            os.replace(tmp, target_path)
        return index, None, None
    except StorageError as exc:  # a full disk fails every image alike: stop, do not skip them all
        return index, None, str(exc)
    except Exception as exc:  # Pillow raises many types (SyntaxError for broken PNG chunks): skip, never abort
        return index, f"{type(exc).__name__}: {exc}", None


WORKER_DIED = "its worker process died on it twice (killed, e.g. by the out-of-memory killer)"

# Per worker process: where it records the index of the job it is on (-1: none), so that the parent
# knows which jobs were in flight when a worker died.
_IN_FLIGHT = None
_SLOT = -1


def _take_slot(in_flight, next_slot) -> None:
    global _IN_FLIGHT, _SLOT
    with next_slot.get_lock():
        _SLOT, next_slot.value = next_slot.value, next_slot.value + 1
    _IN_FLIGHT = in_flight


def _tracked(work, job):
    _IN_FLIGHT[_SLOT] = job[0]
    try:
        return work(job)
    finally:
        _IN_FLIGHT[_SLOT] = -1


def map_in_processes(work, jobs: list[tuple], workers: int, finished, died) -> None:
    """finished(work(job)) for every job (job[0]: a unique int), in `workers` spawned processes, a few jobs
    in flight at a time. A worker that dies (the out-of-memory killer, a crash in a decoder) breaks the
    pool: the jobs that were in flight are tried again one at a time, each alone in a process, and a job
    that kills that one too gets finished(died(job)); the other jobs go on in a new pool. `finished`
    may raise to stop everything (the jobs in flight finish first)."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    pending, suspects = list(reversed(jobs)), []
    while pending or suspects:
        alone = bool(suspects)
        batch = [suspects.pop()] if alone else pending
        size = 1 if alone else workers
        in_flight, next_slot = context.Array("q", [-1] * size), context.Value("q", 0)
        pool = ProcessPoolExecutor(size, mp_context=context, initializer=_take_slot, initargs=(in_flight, next_slot))
        running: dict = {}
        try:
            while batch or running:
                while batch and len(running) < 4 * size:
                    job = batch.pop()
                    running[pool.submit(_tracked, work, job)] = job
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()  # BrokenProcessPool when a worker died
                    del running[future]
                    finished(result)
        except BrokenProcessPool:
            if alone:
                finished(died(next(iter(running.values()))))
                continue
            on_it = {index for index in in_flight[:] if index >= 0}
            suspects = [job for job in running.values() if job[0] in on_it]
            pending = batch + [job for job in running.values() if job[0] not in on_it]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class Summary:
    written: int = 0
    kept: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


RECORD = "preprocess.json"  # in DEST/images: the resolution and, per output, the source it was made from


def source_signature(source: Path) -> list:
    stat = source.stat()
    return [str(source), stat.st_size, stat.st_mtime_ns]


def _plan(out: Path, entries, resolution: int) -> dict[str, list]:
    """Per output name, the source it must come from. Outputs made from anything else (an earlier
    run over other files) are removed before the new record is written, so a kept file always
    matches the record, even if this run is interrupted."""
    previous = json.loads((out / RECORD).read_text()) if (out / RECORD).is_file() else {}
    if previous and previous.get("resolution") != resolution:
        raise DataError(f"{out}: holds {previous.get('resolution')} px images; use another DEST for "
                        f"--resolution {resolution}, or --resolution {previous.get('resolution')} to resume")
    plan = {official_image_name(i): source_signature(source) for i, (source, _) in enumerate(entries)}
    old = previous.get("sources", {})
    for existing in out.glob("*/img*.png"):
        name = existing.relative_to(out).as_posix()
        if plan.get(name) is None or old.get(name) != plan[name]:
            existing.unlink()
    write_json_atomic(out / RECORD, {"resolution": resolution, "sources": plan})
    return plan


def preprocess_images(src: Path, dest: Path, resolution: int, workers: int = 0,
                      labels_file: Path | None = None, progress: bool = True) -> Summary:
    entries, skipped = scan_source(Path(src), labels_file)
    out = Path(dest) / "images"
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    _plan(out, entries, resolution)
    summary, labels = Summary(skipped=skipped), {}
    jobs = []
    for index, (source, label) in enumerate(entries):
        name = official_image_name(index)
        labels[name] = label
        if (out / name).is_file():
            summary.kept += 1
        else:
            jobs.append((index, str(source), str(out / name), resolution, "adm"))
    workers = workers or max(1, (os.cpu_count() or 1))
    with progress_bar("crop", enabled=progress) as bar:
        task = bar.add_task("crop", total=len(jobs), rate="")

        def finished(result: tuple[int, str | None, str | None]) -> None:
            index, error, fault = result
            if fault:  # a full disk fails every image alike: stop (finished images stay for a rerun)
                raise StorageError(fault)
            if error:
                summary.skipped.append((str(entries[index][0]), error))
                labels.pop(official_image_name(index))
            else:
                summary.written += 1
            bar.advance(task)

        try:
            map_in_processes(crop_one, jobs, workers, finished, died=lambda job: (job[0], WORKER_DIED, None))
        finally:  # half-written files of stopped or dead workers
            for tmp in out.glob("*/.img*.png.tmp"):
                tmp.unlink(missing_ok=True)
    write_json_atomic(out / "dataset.json", {"labels": sorted([[k, v] for k, v in labels.items()])})
    if summary.skipped:
        listed = "".join(f"{path}\t{reason}\n" for path, reason in summary.skipped)
        # names as the file system holds them, bytes that are not UTF-8 included
        write_atomic(out / "skipped.txt", listed.encode("utf-8", "surrogateescape"))
    else:
        (out / "skipped.txt").unlink(missing_ok=True)
    return summary


# ============================================================================
# latents: images/ -> vae-sd/ (moments), distributed with accelerate
# ============================================================================


def encode_latents(src: Path, dest: Path, autoencoder, batch_size: int = 64, progress: bool = True) -> int:
    """Encode every image of SRC/images into DEST/vae-sd moments; returns how many were written here."""
    import torch
    from accelerate import PartialState

    state = PartialState(cpu=not torch.cuda.is_available())  # CPU ranks need cpu=True
    images_dir = Path(src) / "images" if (Path(src) / "images").is_dir() else Path(src)
    labels = read_labels(images_dir / "dataset.json")
    names = sorted(labels)
    out = Path(dest) / "vae-sd"
    out.mkdir(parents=True, exist_ok=True)
    todo = [n for i, n in enumerate(names) if i % state.num_processes == state.process_index
            and not (out / _latent_for(n)).is_file()]
    autoencoder.to(state.device)
    with progress_bar("encode", enabled=progress) as bar:
        task = bar.add_task("encode", total=len(todo), rate="", visible=state.is_main_process)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            batch = torch.stack([torch.from_numpy(_read_png(images_dir / n)) for n in chunk]).to(state.device)
            moments = autoencoder.encode(batch).cpu().numpy().astype(np.float32)
            for name, moment in zip(chunk, moments):
                save_npy(out / _latent_for(name), moment)
            bar.advance(task, len(chunk))
    state.wait_for_everyone()
    if state.is_main_process:
        write_json_atomic(out / "dataset.json", {"labels": [[_latent_for(n), labels[n]] for n in names]})
    return len(todo)


def _latent_for(image_name: str) -> str:
    folder, file = image_name.rsplit("/", 1) if "/" in image_name else ("", image_name)
    digits = "".join(ch for ch in file if ch.isdigit())
    name = f"img-mean-std-{digits}.npy"
    return f"{folder}/{name}" if folder else name


def _read_png(path: Path) -> np.ndarray:
    from repa.components.dataset.files import read_image

    return read_image(path)


def save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp.npy")
    with writing(path, array.nbytes, temporary=[tmp]):
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp, array)
        os.replace(tmp, path)


# ============================================================================
# pack: the official layout -> repa's packed format
# ============================================================================


def source_digest(dataset, start: int, stop: int) -> str:
    """What samples start..stop of a folder dataset were made from: each image's (and latent's) name, size
    and modification time."""
    import hashlib

    digest = hashlib.blake2b(digest_size=8)
    for i in range(start, stop):
        files = [dataset.images_dir / dataset.images[i]]
        if dataset.latents is not None:
            files.append(dataset.latents_dir / dataset.latents[i])
        for path in files:
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()


def pack(src: Path, dest: Path, resolution: int, shard_size: int = 8192, workers: int = 2,
         progress: bool = True, num_classes: int = 1000) -> int:
    import torch

    from repa.components.dataset import FolderParams
    from repa.components.dataset.folder import FolderDataset
    from repa.packs import PackWriter

    latents = "vae-sd" if (Path(src) / "vae-sd").is_dir() else None
    dataset = FolderDataset(FolderParams(path=str(src), resolution=resolution, latents=latents,
                                         num_classes=num_classes))
    fields = {"images": ("uint8", (3, resolution, resolution)), "labels": ("int64", ())}
    if latents:
        fields["moments"] = ("float32", tuple(dataset[0]["moments"].shape))
    # The folder's own path is not recorded: a moved source keeps its files' names, sizes and times.
    source = {"resolution": resolution, "latents": latents, "num_classes": num_classes}
    writer = PackWriter(Path(dest), len(dataset), resolution, fields, shard_size, source=source,
                        shard_inputs=lambda start, stop: source_digest(dataset, start, stop), what="a packed dataset")
    if writer.changed_from is not None:
        log.info("repa: source files of shard %d changed since it was packed; packing again from there",
                 writer.changed_from)
    start = writer.done_until
    indices = list(range(start, len(dataset)))
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=None,
                                         num_workers=workers)
    with progress_bar("pack", enabled=progress) as bar:
        task = bar.add_task("pack", total=len(dataset), completed=start, rate="")
        for index, item in zip(indices, loader):
            values = {"images": item["image"].numpy(), "labels": item["y"]}
            if latents:
                values["moments"] = item["moments"].numpy()
            writer.write(index, **values)
            bar.advance(task)
    return len(indices)
