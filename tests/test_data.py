"""Data: ImageNet-style folders -> official layout -> latents -> packed; bad data; the
embedded dataset; feature caches; the SD-VAE autoencoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from repa.bench.data import sd_vae_random
from repa.components.dataset import DigitsParams, FolderParams, PackedParams
from repa.components.dataset.crop import center_crop_arr
from repa.components.dataset.digits import DigitsDataset
from repa.components.dataset.folder import FolderDataset
from repa.components.dataset.packed import PackedDataset
from repa.engine.prep import preprocess
from repa.errors import DataError, MissingWeightsError

RES = 64


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("vae") / "sd-vae-ft-mse"
    sd_vae_random().save_pretrained(path)  # sd-vae-ft-mse's architecture, random weights
    return path


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """Two classes of JPEGs, plus a corrupt file, a greyscale, a CMYK, an RGBA PNG and a tiny image."""
    root = tmp_path_factory.mktemp("raw")
    rng = np.random.default_rng(0)
    for cls in ("n02", "n01"):
        (root / cls).mkdir()
        for i in range(3):
            size = (90 + 13 * i, 70 + 7 * i)
            Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(root / cls / f"{i}.JPEG")
    Image.fromarray(rng.integers(0, 255, (80, 80), dtype=np.uint8), mode="L").save(root / "n01" / "grey.JPEG")
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).convert("CMYK").save(root / "n01" / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (70, 70, 4), dtype=np.uint8), mode="RGBA").save(root / "n02" / "alpha.png")
    Image.fromarray(rng.integers(0, 255, (5, 7, 3), dtype=np.uint8)).save(root / "n02" / "tiny.png")
    (root / "n02" / "corrupt.JPEG").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


@pytest.fixture(scope="module")
def prepared(jpeg_folder, tmp_path_factory, vae_dir):
    """images -> latents -> pack, as a user would run them."""
    from repa.components.autoencoder import SDVAEParams
    from repa.components.autoencoder.sdvae import SDVAE

    dest = tmp_path_factory.mktemp("prepared")
    summary = preprocess.preprocess_images(jpeg_folder, dest, RES, workers=2, progress=False)
    vae = SDVAE(SDVAEParams(path=str(vae_dir)))
    preprocess.encode_latents(dest, dest, vae, batch_size=4, progress=False)
    preprocess.pack(dest, dest / "packed", RES, shard_size=4, workers=0, progress=False)
    return dest, summary, vae


def test_images_step_reports_the_corrupt_file_and_loses_nothing_else(prepared, jpeg_folder):
    dest, summary, _ = prepared
    assert [p for p, _ in summary.skipped] == [str(jpeg_folder / "n02" / "corrupt.JPEG")]
    assert summary.written == 10
    labels = dict(json.loads((dest / "images" / "dataset.json").read_text())["labels"])
    assert len(labels) == 10 and sorted(set(labels.values())) == [0, 1]
    # class indices follow sorted folder names: n01 -> 0, n02 -> 1; files in sorted order
    assert labels["00000/img00000000.png"] == 0 and labels["00000/img00000010.png"] == 1
    assert "00000/img00000009.png" not in labels  # the corrupt file's slot stays empty
    for name in labels:
        with Image.open(dest / "images" / name) as image:
            assert image.size == (RES, RES) and image.mode == "RGB"
    assert not list((dest / "images").rglob("*.tmp"))
    assert "corrupt.JPEG" in (dest / "images" / "skipped.txt").read_text()


def test_images_step_resumes(prepared, jpeg_folder):
    dest, _, _ = prepared
    again = preprocess.preprocess_images(jpeg_folder, dest, RES, workers=1, progress=False)
    assert again.written == 0 and again.kept == 10 and len(again.skipped) == 1


def adm_center_crop(image: Image.Image, size: int) -> np.ndarray:
    """guided-diffusion image_datasets.center_crop_arr, transcribed."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    crop_y, crop_x = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[crop_y : crop_y + size, crop_x : crop_x + size]


@pytest.mark.parametrize("shape", [(600, 333), (256, 256), (257, 1000), (100, 50)])
def test_center_crop_matches_adm_pixel_for_pixel(shape):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
    np.testing.assert_array_equal(center_crop_arr(image, 128), adm_center_crop(image, 128))


def test_latents_are_the_vae_moments_in_the_official_layout(prepared):
    dest, _, vae = prepared
    labels = json.loads((dest / "vae-sd" / "dataset.json").read_text())["labels"]
    assert labels[0][0] == "00000/img-mean-std-00000000.npy"
    moments = np.load(dest / "vae-sd" / labels[0][0])
    assert moments.shape == (8, RES // 8, RES // 8) and moments.dtype == np.float32
    image = torch.from_numpy(np.array(Image.open(dest / "images/00000/img00000000.png"))).permute(2, 0, 1)
    with torch.no_grad():
        dist = vae.vae.encode(image[None].float() / 127.5 - 1).latent_dist
    np.testing.assert_allclose(moments, torch.cat([dist.mean, dist.std], 1)[0].numpy(), atol=1e-4)


def test_official_layout_and_packed_format_load_the_same_samples(prepared):
    dest, _, _ = prepared
    folder = FolderDataset(FolderParams(path=str(dest), resolution=RES))
    packed = PackedDataset(PackedParams(path=str(dest / "packed"), resolution=RES, verify="full"))
    assert len(folder) == len(packed) == 10
    for i in range(10):
        a, b = folder[i], packed[i]
        assert torch.equal(a["image"], b["image"]) and a["y"] == b["y"]
        torch.testing.assert_close(a["moments"], b["moments"])
    manifest = json.loads((dest / "packed" / "manifest.json").read_text())
    assert manifest["count"] == 10 and len(manifest["shards"]) == 3 and manifest["complete"]
    assert set(manifest["fields"]) == {"images", "labels", "moments"}


def test_latent_draws_follow_the_moments(prepared):
    dest, _, vae = prepared
    moments = FolderDataset(FolderParams(path=str(dest), resolution=RES))[0]["moments"][None]
    noise = torch.randn(1, 4, RES // 8, RES // 8)
    mean, std = moments.chunk(2, dim=1)
    torch.testing.assert_close(vae.sample(moments, noise), (mean + std * noise) * 0.18215)
    assert vae.decode(vae.sample(moments, noise)).shape == (1, 3, RES, RES)


# ============================================================================
# Bad data: one line naming the file, found when the run starts
# ============================================================================


def copy_prepared(prepared, tmp_path):
    import shutil

    dest, _, _ = prepared
    target = tmp_path / "data"
    shutil.copytree(dest, target)
    return target


def load_folder(root):
    return FolderDataset(FolderParams(path=str(root), resolution=RES))


def test_missing_dataset_json(prepared, tmp_path):
    root = copy_prepared(prepared, tmp_path)
    (root / "vae-sd" / "dataset.json").unlink()
    with pytest.raises(DataError, match=r"vae-sd/dataset.json: missing"):
        load_folder(root)


def test_labels_that_do_not_match_the_files(prepared, tmp_path):
    root = copy_prepared(prepared, tmp_path)
    path = root / "vae-sd" / "dataset.json"
    labels = json.loads(path.read_text())["labels"]
    labels[3][0] = "00000/img-mean-std-99999999.npy"
    path.write_text(json.dumps({"labels": labels}))
    with pytest.raises(DataError, match=r"has no label for 00000/img-mean-std-00000003.npy"):
        load_folder(root)


def test_image_and_latent_counts_differ(prepared, tmp_path):
    root = copy_prepared(prepared, tmp_path)
    (root / "vae-sd" / "00000" / "img-mean-std-00000004.npy").unlink()
    with pytest.raises(DataError, match=r"9 latent files but 10 images"):
        load_folder(root)


def test_corrupt_npy_and_png_name_the_file(prepared, tmp_path):
    root = copy_prepared(prepared, tmp_path)
    (root / "vae-sd" / "00000" / "img-mean-std-00000002.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "images" / "00000" / "img00000005.png").write_bytes(b"\x89PNG broken")
    dataset = load_folder(root)
    with pytest.raises(DataError, match=r"img-mean-std-00000002.npy: unreadable or corrupt .npy"):
        dataset[2]
    with pytest.raises(DataError, match=r"img00000005.png: unreadable or corrupt image"):
        dataset[5]


def test_resolution_differs_from_the_experiment(prepared):
    dest, _, _ = prepared
    with pytest.raises(DataError, match=r"images are 64x64 but the experiment's data.resolution is 256"):
        FolderDataset(FolderParams(path=str(dest), resolution=256))
    with pytest.raises(DataError, match=r"packed at 64 px but data.resolution is 128"):
        PackedDataset(PackedParams(path=str(dest / "packed"), resolution=128))


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_packed_checksum_failure(prepared, tmp_path, mode):
    root = copy_prepared(prepared, tmp_path) / "packed"
    shard = root / "images-00001.npy"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"images-00001.npy: checksum mismatch"):
        PackedDataset(PackedParams(path=str(root), resolution=RES, verify=mode))


def test_bad_data_stops_the_run_before_the_first_step(tiny_toml, tmp_path):
    from tests.conftest import run_cli

    experiment = tiny_toml()
    result = run_cli("run", str(experiment), "--set", 'data={ kind = "folder", path = "nowhere", resolution = 16 }',
                     "--no-progress")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: nowhere/images: missing; data.path must hold images/ (official layout); create it with "
        "`repa preprocess images SRC DEST`")
    assert "Traceback" not in result.stderr


# ============================================================================
# The embedded dataset, the autoencoders
# ============================================================================


def test_digits_load_offline_with_a_fixed_split(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    train = DigitsDataset(DigitsParams(resolution=32), split="train")
    heldout = DigitsDataset(DigitsParams(resolution=32), split="heldout")
    assert len(train) + len(heldout) == 1797 and len(heldout) == 359
    item = train[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.uint8 and 0 <= item["y"] < 10
    assert torch.equal(DigitsDataset(DigitsParams(), split="train")[5]["image"], train[5]["image"])
    train_set = {bytes(train.images[i].numpy()) for i in range(len(train))}
    overlap = sum(bytes(heldout.images[i].numpy()) in train_set for i in range(len(heldout)))
    assert overlap < 10  # a handful of digits in sklearn's set are pixel-identical; splits are by index


def test_sd_vae_missing_weights_say_what_to_download(tmp_path, monkeypatch):
    from repa.components.autoencoder import SDVAEParams
    from repa.components.autoencoder.sdvae import SDVAE

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(MissingWeightsError) as info:
        SDVAE(SDVAEParams(variant="ft-ema"))
    message = str(info.value)
    assert "huggingface-cli download stabilityai/sd-vae-ft-ema" in message and str(tmp_path / "hf") in message
    assert "\n" not in message


def test_sd_vae_is_found_in_the_hugging_face_cache(tmp_path, monkeypatch, vae_dir):
    import shutil

    from repa.components.autoencoder import SDVAEParams
    from repa.components.autoencoder.sdvae import SDVAE

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    snapshot = tmp_path / "hf" / "hub" / "models--stabilityai--sd-vae-ft-mse" / "snapshots" / "0123"
    shutil.copytree(vae_dir, snapshot)
    vae = SDVAE(SDVAEParams())
    assert vae.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)).shape == (1, 8, 4, 4)


def test_identity_autoencoder_is_pixel_space():
    from repa.components.autoencoder.identity import PixelSpace

    images = torch.tensor([[[[0, 255]], [[128, 64]], [[1, 2]]]], dtype=torch.uint8)
    ae = PixelSpace()
    x = ae.sample(ae.encode(images), torch.randn(1, 3, 1, 2))
    torch.testing.assert_close(x, images.float() / 127.5 - 1)
    assert torch.equal(ae.decode(x), x)


def test_wide_greyscale_is_rescaled_and_alpha_dropped_as_the_official_tool_does(tmp_path):
    from repa.components.dataset.crop import to_rgb

    ramp16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1024 + 512)  # 512 .. 65024
    Image.fromarray(ramp16).save(tmp_path / "grey16.png")
    with Image.open(tmp_path / "grey16.png") as image:
        rgb = np.asarray(to_rgb(image))
    np.testing.assert_array_equal(rgb[..., 0], np.rint(ramp16 / 257.0).astype(np.uint8))
    assert (rgb[..., 0] == rgb[..., 2]).all()
    floats = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    rgb = np.asarray(to_rgb(Image.fromarray(floats, mode="F")))
    np.testing.assert_array_equal(rgb[..., 1], np.rint(floats * 255.0).astype(np.uint8))
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 4), dtype=np.uint8), mode="RGBA")
    np.testing.assert_array_equal(np.asarray(to_rgb(rgba)), np.asarray(rgba)[..., :3])


def test_images_step_redoes_outputs_whose_source_changed_and_refuses_another_resolution(tmp_path):
    from repa.errors import DataError

    rng = np.random.default_rng(3)
    src = tmp_path / "src"
    for cls in ("a", "b"):
        (src / cls).mkdir(parents=True)
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(src / cls / "1.png")
    dest = tmp_path / "dest"
    first = preprocess.preprocess_images(src, dest, RES, workers=1, progress=False)
    assert first.written == 2
    # a new file sorts first in class a: every later output now comes from another source
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(src / "a" / "0.png")
    again = preprocess.preprocess_images(src, dest, RES, workers=1, progress=False)
    assert (again.written, again.kept) == (3, 0)
    labels = dict(json.loads((dest / "images" / "dataset.json").read_text())["labels"])
    assert labels == {"00000/img00000000.png": 0, "00000/img00000001.png": 0, "00000/img00000002.png": 1}
    with Image.open(src / "b" / "1.png") as image:
        expected = center_crop_arr(image.convert("RGB"), RES)
    np.testing.assert_array_equal(np.asarray(Image.open(dest / "images" / "00000" / "img00000002.png")), expected)
    assert preprocess.preprocess_images(src, dest, RES, workers=1, progress=False).kept == 3
    with pytest.raises(DataError, match=rf"holds {RES} px images; use another DEST for --resolution {2 * RES}"):
        preprocess.preprocess_images(src, dest, 2 * RES, workers=1, progress=False)


def test_a_wrongly_sized_image_inside_a_folder_dataset_is_named(prepared):
    from repa.components.dataset import FolderParams
    from repa.components.dataset.folder import FolderDataset
    from repa.errors import DataError

    dest, _, _ = prepared
    dataset = FolderDataset(FolderParams(path=str(dest), resolution=RES, latents=None, num_classes=2))
    victim = dest / "images" / dataset.images[3]
    original = victim.read_bytes()
    try:
        Image.fromarray(np.zeros((RES // 2, RES // 2, 3), dtype=np.uint8)).save(victim)
        with pytest.raises(DataError, match=rf"{victim}: images are {RES // 2}x{RES // 2} but the experiment's data.resolution is {RES}"):
            dataset[3]
    finally:
        victim.write_bytes(original)


def test_stored_moments_of_another_autoencoder_are_refused_at_start(prepared, write_toml):
    from repa.config import load_experiment
    from repa.engine.train.trainer import check_stored_moments

    dest, _, _ = prepared
    path = write_toml(f"""
        [data]
        kind = "folder"
        path = "{dest}"
        resolution = {RES}
        num_classes = 2
        [autoencoder]
        kind = "identity"
        [backbone]
        kind = "sit"
        depth = 1
        hidden_size = 32
        num_heads = 2
        patch_size = 8
        """)
    config = load_experiment(path)
    with pytest.raises(DataError, match=rf"{dest}: stored latent moments are \[8, 8, 8\] but the identity autoencoder "
                                        rf"at {RES} px needs \[6, {RES}, {RES}\]"):
        check_stored_moments(config, config.data.build())
    on_the_fly = load_experiment(path, ['data.latents=""'])
    check_stored_moments(on_the_fly, on_the_fly.data.build())  # no stored moments: nothing to check
