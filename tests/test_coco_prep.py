"""`repa preprocess coco`: MS-COCO's images and captions -> the official text-to-image layout, checked against
U-ViT's preprocessing transcribed (crop, moments, contexts), resumed, refused, and trained on end to end.
The SD-VAE and CLIP's text tower are random, saved in their release formats (nothing is downloaded here)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repa.config import validate_component
from repa.engine.prep import coco
from repa.errors import DataError

RES = 16

# COCO 2014's layout, in small: image ids out of order, captions interleaved in the annotation file, an image
# without a caption, a portrait, a landscape (both an odd number of pixels off square) and a greyscale image,
# an annotation of an unknown image.
TRAIN = {42: ((41, 30), "RGB"), 9: ((31, 50), "RGB"), 30: ((20, 20), "RGB"), 25: ((24, 24), "L")}
TRAIN_CAPTIONS = [(42, "A dog on a couch."), (9, "Two birds on a wire"), (42, "a brown dog sleeping"),
                  (25, "A grey square."), (9, "birds sitting together"), (999, "an image nobody has"),
                  (42, "the dog rests"), (9, "a wire with birds")]
VAL = {7: ((32, 32), "RGB"), 3: ((50, 20), "RGB")}
VAL_CAPTIONS = [(3, "a red bus"), (7, "a plate of food"), (3, "a bus on a street")]


def write_image(path: Path, size, mode, seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path, format="JPEG", quality=95)


def write_annotations(src: Path, split: str, images: dict, captions: list) -> None:
    data = {"images": [{"id": key, "file_name": f"COCO_{split}2014_{key:012d}.jpg"} for key in images],
            "annotations": [{"id": n, "image_id": key, "caption": text} for n, (key, text) in enumerate(captions)]}
    (src / "annotations").mkdir(exist_ok=True)
    (src / "annotations" / f"captions_{split}2014.json").write_text(json.dumps(data))


def write_coco_source(src: Path) -> Path:
    for split, images, captions in (("train", TRAIN, TRAIN_CAPTIONS), ("val", VAL, VAL_CAPTIONS)):
        (src / f"{split}2014").mkdir(parents=True)
        for key, (size, mode) in images.items():
            write_image(src / f"{split}2014" / f"COCO_{split}2014_{key:012d}.jpg", size, mode, key)
        write_annotations(src, split, images, captions)
    return src


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    """An AutoencoderKL with SD-VAE's structure (4 blocks, 8x down, 4 latent channels), small and random."""
    from diffusers.models import AutoencoderKL

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("vae") / "sd-vae-ft-mse"
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
                  block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, sample_size=RES).save_pretrained(path)
    return path


def components(vae_dir):
    return (validate_component("autoencoder", "sd-vae", {"path": str(vae_dir)}, "--autoencoder"),
            validate_component("text_encoder", "clip-vit-l14", {}, "--text-encoder"))


def preprocess(src, dest, vae_dir, **kwargs):
    return coco.preprocess_coco(src, dest, *components(vae_dir), resolution=kwargs.pop("resolution", RES),
                                workers=kwargs.pop("workers", 1), batch_size=3, progress=False, **kwargs)


def uvit_center_crop(width, height, img):
    """baofff/U-ViT datasets.py `center_crop`, transcribed (MSCOCODatabase: image -> RGB uint8 -> this)."""
    crop = np.min(img.shape[:2])
    img = img[(img.shape[0] - crop) // 2: (img.shape[0] + crop) // 2,
              (img.shape[1] - crop) // 2: (img.shape[1] + crop) // 2]
    return np.array(Image.fromarray(img, "RGB").resize((width, height), Image.LANCZOS)).astype(np.uint8)


def uvit_moments(vae, png: Path) -> np.ndarray:
    """U-ViT's autoencoder(x, fn='encode_moments'): quant_conv(encoder(x)), x in [-1, 1] -> (mean, logvar)."""
    x = torch.from_numpy(np.array(Image.open(png))).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.no_grad():
        return vae.quant_conv(vae.encoder(x))[0].numpy()


def test_it_writes_the_official_layout_as_uvit_makes_it(tmp_path, tiny_clip, vae_dir):
    from diffusers.models import AutoencoderKL

    src, dest = write_coco_source(tmp_path / "coco"), tmp_path / "features"
    summaries = preprocess(src, dest, vae_dir)
    train = dest / "train"
    assert summaries["train"].images == 3 and summaries["train"].contexts == 7 and summaries["val"].images == 2
    # ids in sorted order (9, 25, 42; 30 has no caption), each image's captions in annotation order
    assert json.loads((train / "captions.json").read_text()) == {
        "0": ["Two birds on a wire", "birds sitting together", "a wire with birds"], "1": ["A grey square."],
        "2": ["A dog on a couch.", "a brown dog sleeping", "the dog rests"]}
    assert summaries["train"].left_out == [(str(src / "train2014" / "COCO_train2014_000000000030.jpg"),
                                            "no caption in captions_train2014.json")]
    assert "000000000030.jpg\tno caption" in (train / "skipped.txt").read_text()
    for i, key in enumerate((9, 25, 42)):
        source = np.array(Image.open(src / "train2014" / f"COCO_train2014_{key:012d}.jpg").convert("RGB"))
        np.testing.assert_array_equal(np.asarray(Image.open(train / f"{i}.png")), uvit_center_crop(RES, RES, source))
    vae = AutoencoderKL.from_pretrained(vae_dir).eval()
    for i in range(3):
        moments = np.load(train / f"{i}.npy")
        assert moments.shape == (8, RES // 8, RES // 8) and moments.dtype == np.float32
        np.testing.assert_allclose(moments, uvit_moments(vae, train / f"{i}.png"), atol=1e-5, rtol=1e-5)
    encoder = components(vae_dir)[1].build()
    for i, captions in json.loads((train / "captions.json").read_text()).items():
        for k, caption in enumerate(captions):
            context = np.load(train / f"{i}_{k}.npy")
            assert context.shape == (77, 32) and context.dtype == np.float32
            np.testing.assert_allclose(context, encoder.encode([caption])[0].numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.load(dest / "empty_context.npy"), encoder.encode([""])[0].numpy(), atol=1e-6)
    assert not [p for p in dest.rglob("*") if ".tmp" in p.name]

    from repa.components.dataset import CocoParams
    from repa.components.dataset.coco import CocoDataset

    data = CocoDataset(CocoParams(path=str(dest), resolution=RES), "train")
    assert len(data) == 7 and data.pairs[3] == (1, 0)
    item = data[6]  # image 2 (id 42), caption 2
    torch.testing.assert_close(item["y"], encoder.encode(["the dog rests"])[0], atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        dist = vae.encode(item["image"][None].float() / 127.5 - 1).latent_dist
    torch.testing.assert_close(item["moments"], torch.cat([dist.mean, dist.std], 1)[0], atol=1e-5, rtol=1e-4)
    assert CocoDataset(CocoParams(path=str(dest), resolution=RES), "val").prompts(0, [0], "random")[0][2] in (
        "a red bus", "a bus on a street")


def written(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir() if p.suffix in (".png", ".npy")}


def test_a_rerun_keeps_what_is_done_and_redoes_what_changed(tmp_path, tiny_clip, vae_dir, monkeypatch):
    src, dest = write_coco_source(tmp_path / "coco"), tmp_path / "features"
    preprocess(src, dest, vae_dir, splits=("train",))
    train = dest / "train"
    times = written(train)
    with monkeypatch.context() as patched:  # every file is there: no weights are loaded
        patched.setattr(coco.Lazy, "__call__", lambda self: pytest.fail(f"{self.component.kind} was built"))
        again = preprocess(src, dest, vae_dir, splits=("train",))["train"]
    assert (again.cropped, again.encoded, again.contexts) == (0, 0, 0)
    assert written(train) == times

    # image 9 (i 0) is replaced and loses its last caption; image 42 (i 2) has a caption reworded; 1_0 is lost
    write_image(src / "train2014" / "COCO_train2014_000000000009.jpg", (33, 44), "RGB", seed=123)
    captions = [(k, "A dog on a sofa." if t == "A dog on a couch." else t) for k, t in TRAIN_CAPTIONS
                if t != "a wire with birds"]
    write_annotations(src, "train", TRAIN, captions)
    (train / "1_0.npy").unlink()
    redone = preprocess(src, dest, vae_dir, splits=("train",))["train"]
    assert (redone.cropped, redone.encoded, redone.contexts) == (1, 1, 2)  # 2_0 and 1_0
    assert not (train / "0_2.npy").exists()
    source = np.array(Image.open(src / "train2014" / "COCO_train2014_000000000009.jpg").convert("RGB"))
    np.testing.assert_array_equal(np.asarray(Image.open(train / "0.png")), uvit_center_crop(RES, RES, source))
    encoder = components(vae_dir)[1].build()
    np.testing.assert_allclose(np.load(train / "2_0.npy"), encoder.encode(["A dog on a sofa."])[0].numpy(), atol=1e-5)
    now = written(train)
    assert sorted(name for name in times if now.get(name) != times[name]) == ["0.npy", "0.png", "0_2.npy", "1_0.npy", "2_0.npy"]
    from repa.components.dataset.coco import caption_counts

    assert caption_counts(train) == [2, 1, 3]


def test_bad_input_is_one_line_and_loses_nothing(tmp_path, tiny_clip, vae_dir):
    src, dest = write_coco_source(tmp_path / "coco"), tmp_path / "features"
    (src / "annotations" / "captions_val2014.json").unlink()
    with pytest.raises(DataError, match=r"captions_val2014.json: not found; unpack annotations_trainval2014.zip "
                                        r"\(cocodataset.org/#download\) into"):
        preprocess(src, dest, vae_dir, splits=("val",))
    (src / "annotations" / "captions_val2014.json").write_text('{"images": [{"id": 1}], "annotations": []}')
    with pytest.raises(DataError, match=r"captions_val2014.json: not a COCO captions file \(KeyError: 'file_name'\)"):
        preprocess(src, dest, vae_dir, splits=("val",))

    broken = src / "train2014" / "COCO_train2014_000000000025.jpg"
    good = broken.read_bytes()
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError) as error:
        preprocess(src, dest, vae_dir, splits=("train",), workers=2)
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"{broken}: ") and "1 image(s) could not be read" in message
    assert sorted(p.name for p in (dest / "train").glob("*.png")) == ["0.png", "2.png"]
    assert (dest / "train" / "2_2.npy").is_file() and (dest / "train" / "1_0.npy").is_file()  # its captions too
    assert str(broken) in (dest / "train" / "skipped.txt").read_text()
    broken.write_bytes(good)
    fixed = preprocess(src, dest, vae_dir, splits=("train",))["train"]
    assert (fixed.cropped, fixed.encoded, fixed.contexts) == (1, 1, 0)

    kept = sorted(os.listdir(dest / "train"))
    with pytest.raises(DataError, match=r"train: was written with resolution 16, this run asks for 32; give another "
                                        r"DEST, or the same options to resume"):
        preprocess(src, dest, vae_dir, splits=("train",), resolution=32)
    assert sorted(os.listdir(dest / "train")) == kept
    (tmp_path / "uvit" / "train").mkdir(parents=True)
    np.save(tmp_path / "uvit" / "train" / "0.npy", np.zeros((8, 2, 2), np.float32))  # U-ViT's own files
    with pytest.raises(DataError, match=r"holds files that `repa preprocess coco` did not write"):
        preprocess(src, tmp_path / "uvit", vae_dir, splits=("train",))
    assert os.listdir(tmp_path / "uvit" / "train") == ["0.npy"]


def test_missing_coco_is_one_line_from_the_command_line(tmp_path):
    from tests.conftest import run_cli

    result = run_cli("preprocess", "coco", str(tmp_path / "nothing"), str(tmp_path / "out"))
    assert result.returncode != 0 and result.stderr.strip().count("\n") == 0, result.stderr
    assert "nothing: no such folder; give the folder holding COCO's train2014/, val2014/ and annotations/" in result.stderr


def test_a_preprocessed_folder_trains_and_samples_for_a_prompt(tmp_path, tiny_clip, vae_dir, capsys):
    from repa.cli import main

    src, dest = write_coco_source(tmp_path / "coco"), tmp_path / "features"
    assert main(["preprocess", "coco", str(src), str(dest), "--resolution", str(RES), "--vae-path", str(vae_dir),
                 "--workers", "1", "--batch-size", "4"]) == 0
    assert "next: repa preprocess reference" in capsys.readouterr().out
    sets = [a for o in [f"experiment.output_dir={json.dumps(str(tmp_path / 'exps'))}", f"data.path={json.dumps(str(dest))}",
                        f"data.resolution={RES}", f"autoencoder.path={json.dumps(str(vae_dir))}", "backbone.depth=2",
                        "train.global_batch_size=4", "train.max_steps=2", "train.checkpoint_every=2",
                        "train.sample_every=2", "train.sample_images=2", "train.num_workers=0", "sample.steps=2",
                        'train.mixed_precision="no"']
            for a in ("--set", o)]
    assert main(["run", "experiments/mmdit_coco_baseline.toml", "--no-progress", *sets]) == 0
    run = tmp_path / "exps" / "t2i_baseline"
    assert (run / "samples" / "0000002.png").is_file()
    assert main(["sample", "experiments/mmdit_coco_baseline.toml", "--prompt", "a dog on a couch", "--num-samples", "2",
                 "--no-progress", *sets]) == 0
    folder = next((run / "sampled").iterdir())
    assert np.load(folder / "samples.npz")["arr_0"].shape == (2, RES, RES, 3)


def test_two_processes_write_what_one_writes(tmp_path, vae_dir):
    """Under torchrun each process takes the images i = rank mod 2 (crop, moments, contexts); the main one
    plans, writes captions.json and the empty context. digits-words stands in for CLIP (it crosses processes)."""
    import subprocess
    import sys

    src = tmp_path / "coco"
    images = {key: ((20 + 3 * key, 17 + key), "RGB") for key in range(1, 8)}
    words = ["a thick seven", "a thin two", "an eight", "a large small one", "a slanted nine", "a zero"]
    for split in ("train", "val"):
        (src / f"{split}2014").mkdir(parents=True)
        for key, (size, mode) in images.items():
            write_image(src / f"{split}2014" / f"COCO_{split}2014_{key:012d}.jpg", size, mode, key)
        write_annotations(src, split, images, [(1 + n % 7, words[n % 6]) for n in range(17)])
    text = validate_component("text_encoder", "digits-words", {}, "--text-encoder")
    autoencoder = validate_component("autoencoder", "sd-vae", {"path": str(vae_dir)}, "--autoencoder")
    coco.preprocess_coco(src, tmp_path / "one", autoencoder, text, resolution=RES, workers=1, batch_size=3,
                         progress=False)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "repa.cli",
               "preprocess", "coco", str(src), str(tmp_path / "two"), "--resolution", str(RES), "--vae-path",
               str(vae_dir), "--text-encoder", "digits-words", "--workers", "1", "--batch-size", "3"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    for share in (4, 3):  # images 0, 2, 4, 6 and 1, 3, 5: each process wrote its own
        assert f"train: 7 images; written by this process: {share} PNGs, {share} moments" in result.stdout
    one, two = tmp_path / "one", tmp_path / "two"
    files = sorted(p.relative_to(one).as_posix() for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two).as_posix() for p in two.rglob("*") if p.is_file())
    assert len([f for f in files if f.startswith("train/") and f.endswith(".png")]) == 7
    for name in files:
        if name.endswith(".png"):
            np.testing.assert_array_equal(np.asarray(Image.open(one / name)), np.asarray(Image.open(two / name)))
        elif name.endswith(".npy"):
            np.testing.assert_allclose(np.load(one / name), np.load(two / name), atol=1e-5, rtol=1e-5)
        elif name.endswith("captions.json"):
            assert (one / name).read_text() == (two / name).read_text()
