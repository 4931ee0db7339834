"""Text conditioning: the digits captions, the offline and CLIP text encoders, the text conditioning and a
text-to-image run end to end (train, grid, repa sample --prompt, evaluate)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from repa.components.dataset import DigitsParams
from repa.components.dataset.captions import (
    ATTRIBUTES, VARIANTS, DigitCaptionsDataset, attribute_words, caption, digits_arrays, measurements,
)
from repa.components.text_encoder import DigitsWordsParams
from repa.components.text_encoder.words import DigitsWords

# ============================================================================
# Captions measured on the digits
# ============================================================================


def test_each_word_is_true_of_half_of_each_digit_and_says_what_was_measured():
    labels, above = attribute_words(32)
    images, _ = digits_arrays(32)
    values = measurements(images[:, 0].float().numpy() / 255)
    for digit in range(10):
        rows = labels == digit
        assert abs(above[rows].mean(0) - 0.5).max() < 0.01
        for k in range(len(ATTRIBUTES)):  # the "thick" images are thicker than the "thin" ones, etc.
            assert values[rows & above[:, k], k].min() >= values[rows & ~above[:, k], k].max()


def test_a_slanted_seven_leans_right():
    """The slant measure's sign: a stroke whose top is right of its bottom measures positive."""
    image = np.zeros((1, 16, 16))
    for row in range(16):
        image[0, row, 12 - row // 2] = 1.0  # top row at column 12, bottom at column 5
    assert measurements(image)[0, 1] > 0.4
    assert measurements(image[:, :, ::-1].copy())[0, 1] < -0.4


def test_items_are_the_eight_captions_of_each_image_in_order():
    data = DigitCaptionsDataset(DigitsParams(), "train")
    assert len(data) == 8 * len(data.labels)
    captions = [data[8 * 5 + k]["y"] for k in range(8)]
    digit = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"][int(data.labels[5])]
    assert captions[0] in (f"a {digit}", f"an {digit}") and len(set(captions)) == 8
    assert all(c.endswith(digit) for c in captions)
    assert captions[7].split()[1:-1] == [pair[int(flag)] for pair, flag in zip(ATTRIBUTES, data.above[5])]
    assert caption(8, np.array([False, False, False]), VARIANTS[0]) == "an eight"


def test_prompts_are_a_function_of_seed_and_index():
    val = DigitCaptionsDataset(DigitsParams(), "val")
    batch = val.prompts(3, range(20), "balanced")
    assert [row[1] for row in batch] == [i % 10 for i in range(20)]
    assert val.prompts(3, [17], "balanced")[0] == batch[17]
    assert val.prompts(4, range(20), "balanced") != batch
    random = [row[1] for row in val.prompts(3, range(200), "random")]
    assert set(random) == set(range(10))


# ============================================================================
# digits-words
# ============================================================================


def test_digits_words_is_deterministic_and_knows_only_its_words():
    encoder = DigitsWords(DigitsWordsParams())
    a, b = encoder.encode(["a thick seven", "A thick, seven"]), DigitsWords(DigitsWordsParams()).encode(["a thick seven"])
    assert a.shape == (2, 8, 64) and torch.equal(a[0], a[1]) and torch.equal(a[0], b[0])
    assert not torch.equal(a[0], encoder.encode(["a thin seven"])[0])
    with pytest.raises(ValueError, match="'purple' in 'a purple seven' is not a word it knows"):
        encoder.encode(["a purple seven"])
    with pytest.raises(ValueError, match="9 words"):
        encoder.encode(["a thick thin slanted upright small large seven seven"])
    empty = encoder.encode([""])[0]  # the null context: the padding word's vector at every position
    torch.testing.assert_close(empty - encoder.positions, encoder.table[0].expand(8, -1))


# ============================================================================
# CLIP ViT-L/14's text tower: random weights in the release format, loaded by the real code
# ============================================================================


def hf_last_hidden_state(model, ids):
    """CLIPTextModel's last_hidden_state, transcribed: token + position embeddings, the causal transformer,
    the final LayerNorm (no pooling, no projection)."""
    x = model.token_embedding(ids) + model.positional_embedding
    mask = torch.full((ids.shape[1], ids.shape[1]), float("-inf")).triu(1)
    x = model.transformer(x, attn_mask=mask)
    return model.ln_final(x)


def test_clip_text_encoder_gives_every_token_after_the_final_norm(tiny_clip):
    from repa.components.text_encoder.clip import END_OF_TEXT
    from repa.plugins import get_components

    encoder = get_components().get("text_encoder", "clip-vit-l14").build()
    contexts = encoder.encode(["a photo of a cat", ""])
    assert contexts.shape == (2, 77, 32)
    import open_clip

    ids = open_clip.get_tokenizer("ViT-L-14")(["a photo of a cat", ""])
    assert ids[0, 6] == END_OF_TEXT and ids[0, 7] == 0  # open_clip pads with 0 ...
    hf_ids = ids.clone()
    hf_ids[0, 7:], hf_ids[1, 2:] = END_OF_TEXT, END_OF_TEXT  # ... HF's tokenizer (U-ViT's contexts) with <|endoftext|>
    with torch.no_grad():
        torch.testing.assert_close(contexts, hf_last_hidden_state(tiny_clip, hf_ids), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(contexts, hf_last_hidden_state(tiny_clip, ids), atol=1e-3)


def test_clip_text_encoder_without_weights_is_one_line(monkeypatch, tmp_path):
    from repa.errors import RepaError
    from repa.plugins import get_components

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(RepaError) as info:
        get_components().get("text_encoder", "clip-vit-l14").build()
    message = str(info.value)
    assert "\n" not in message and "huggingface.co/timm/vit_large_patch14_clip_224.openai" in message
    assert "text_encoder.weights" in message


# ============================================================================
# The official COCO layout
# ============================================================================


def write_coco(root: Path, images: int = 3, captions=(5, 6, 5), side: int = 16):
    """A tiny folder in the official layout: U-ViT moments (mean, log-variance), contexts per caption."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        folder = root / split
        folder.mkdir(parents=True)
        for i in range(images):
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(folder / f"{i}.png")
            np.save(folder / f"{i}.npy", rng.standard_normal((1, 8, side // 8, side // 8)).astype(np.float32))
            for k in range(captions[i]):
                np.save(folder / f"{i}_{k}.npy", np.full((4, 6), 10 * i + k, dtype=np.float32))
    np.save(root / "empty_context.npy", np.full((1, 4, 6), -1.0, dtype=np.float32))


def test_coco_layout_items_are_every_caption_and_moments_become_mean_and_std(tmp_path):
    from repa.components.dataset import CocoParams
    from repa.components.dataset.coco import CocoDataset

    write_coco(tmp_path)
    data = CocoDataset(CocoParams(path=str(tmp_path), resolution=16), "train")
    assert len(data) == 16 and data.pairs[5] == (1, 0)
    item = data[6]  # image 1, caption 1
    assert torch.equal(item["y"], torch.full((4, 6), 11.0)) and item["image"].shape == (3, 16, 16)
    raw = torch.from_numpy(np.load(tmp_path / "train" / "1.npy"))[0]
    torch.testing.assert_close(item["moments"][:4], raw[:4])
    torch.testing.assert_close(item["moments"][4:], torch.exp(0.5 * raw[4:]))  # official sample_posterior's std
    assert torch.equal(data.empty_context(), torch.full((4, 6), -1.0))
    val = CocoDataset(CocoParams(path=str(tmp_path), resolution=16), "val")
    rows = val.prompts(0, range(4), "random")
    assert [int(r[0][0, 0]) // 10 for r in rows] == [0, 1, 2, 0]
    again = val.prompts(0, range(4), "random")
    assert all(torch.equal(a[0], b[0]) and a[2] == b[2] for a, b in zip(rows, again))


def test_coco_missing_pieces_are_one_line_naming_the_fix(tmp_path):
    from repa.components.dataset import CocoParams
    from repa.components.dataset.coco import CocoDataset
    from repa.errors import DataError

    fix = rf"write {tmp_path} with `repa preprocess coco COCO_DIR {tmp_path}`"
    with pytest.raises(DataError, match=rf"has no train/ folder; {fix}"):
        CocoDataset(CocoParams(path=str(tmp_path)), "train")
    write_coco(tmp_path)
    (tmp_path / "empty_context.npy").unlink()
    with pytest.raises(DataError, match="empty_context.npy: missing"):
        CocoDataset(CocoParams(path=str(tmp_path), resolution=16), "train").empty_context()
    (tmp_path / "train" / "1_3.npy").unlink()  # a gap in image 1's captions
    with pytest.raises(DataError, match=rf"train: image 1 has no 1_3.npy; {fix}"):
        CocoDataset(CocoParams(path=str(tmp_path), resolution=16), "train")
    (tmp_path / "val" / "1.npy").unlink()  # image 1's moments: images 0 and 2 only
    with pytest.raises(DataError, match="val: image 1 has no 1.npy"):
        CocoDataset(CocoParams(path=str(tmp_path), resolution=16), "val")
    for k in range(5):
        (tmp_path / "val" / f"2_{k}.npy").unlink()  # the last image without a caption
    with pytest.raises(DataError, match="val: image 1 has no 1.npy"):
        CocoDataset(CocoParams(path=str(tmp_path), resolution=16), "val")
    np.save(tmp_path / "val" / "1.npy", np.zeros((8, 2, 2), np.float32))
    with pytest.raises(DataError, match="val: image 2 has no 2_0.npy"):
        CocoDataset(CocoParams(path=str(tmp_path), resolution=16), "val")


def test_analysis_reads_each_captioned_image_once_with_its_class():
    """Item i of digits-captions is caption i mod 8 of image i // 8: an image repeated would sit on both sides of
    the linear probe's split. COCO's items give no class: the probe says so (a note), the rest is measured."""
    from repa.components.analysis import ProbeParams
    from repa.components.analysis.probe import LinearProbe
    from repa.engine.study.analysis import NO_CLASS, class_of, distinct_batches
    from repa.interfaces import AnalysisInputs, Representation

    data = DigitCaptionsDataset(DigitsParams(), "train")
    batches = list(distinct_batches(data, torch.arange(64), 3))
    items = [item for _, batch, _ in batches for item in batch]
    assert len(items) == 8 and [start for start, _, _ in batches] == [0, 3, 6]
    assert all(torch.equal(item["image"], data.images[k]) for k, item in enumerate(items))
    assert [class_of(item) for item in items] == [int(data.labels[k]) for k in range(8)]
    assert class_of({"y": 3}) == 3 and class_of({"y": torch.tensor(4)}) == 4
    assert class_of({"y": "a cat on a mat"}) == NO_CLASS and class_of({"y": torch.zeros(77, 768)}) == NO_CLASS
    features = Representation("block 1", torch.randn(10, 4), torch.randn(10, 4, 4), (2, 2))
    with pytest.raises(ValueError, match="no class labels"):
        LinearProbe(ProbeParams()).measure(AnalysisInputs(features, torch.full((10,), NO_CLASS), 8))


def test_attribute_score_is_the_percentile_on_the_side_the_word_asks_for():
    """Real digits drawn for their own captions sit in the upper half on every word they carry (mean 3/4 by
    construction); with every word flipped, the lower half: 1 minus that, pair for pair."""
    from repa.components.metric.digits import DigitsAttributes

    images, labels = digits_arrays(32)
    _, above = attribute_words(32)
    prompts = [caption(int(d), a, (True, True, True)) for d, a in zip(labels, above)]
    flipped = [caption(int(d), ~a, (True, True, True)) for d, a in zip(labels, above)]
    metric = DigitsAttributes(None)
    features = metric.features(images.permute(0, 2, 3, 1).numpy())
    true = metric.score(features, {}, labels.numpy(), prompts)
    false = metric.score(features, {}, labels.numpy(), flipped)
    assert 0.72 < true["digits-attributes"] < 0.78
    for name in ("", "-thickness", "-slant", "-size"):
        assert true[f"digits-attributes{name}"] + false[f"digits-attributes{name}"] == pytest.approx(1.0)
    digit_only = metric.score(features, {}, labels.numpy(), ["a seven"] * len(labels))
    assert all(np.isnan(v) for v in digit_only.values())  # no attribute word asked for: nothing to score
    with pytest.raises(Exception, match="needs each sample's digit and prompt"):
        metric.score(features, {}, labels.numpy(), None)


def test_a_samples_file_carries_its_prompts_and_bad_ones_are_one_line(tmp_path):
    from repa.engine.generate.evaluation import read_samples
    from repa.errors import DataError

    images = np.zeros((2, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "good.npz", arr_0=images, labels=np.array([1, 2]), prompts=np.array(["a one", "a thin two"]))
    assert read_samples(tmp_path / "good.npz")[1:] == (pytest.approx([1, 2]), ["a one", "a thin two"])
    np.savez(tmp_path / "short.npz", arr_0=images, prompts=np.array(["a one"]))
    with pytest.raises(DataError, match=r"short.npz: prompts are <U5 \[1\], expected 2 strings"):
        read_samples(tmp_path / "short.npz")
    np.savez(tmp_path / "numbers.npz", arr_0=images, prompts=np.array([1.0, 2.0]))
    with pytest.raises(DataError, match=r"numbers.npz: prompts are float64 \[2\], expected 2 strings"):
        read_samples(tmp_path / "numbers.npz")


# ============================================================================
# Text conditioning in the engine
# ============================================================================


def text_config(tmp_path, **overrides):
    from repa.config import load_experiment

    sets = [f"experiment.output_dir={json.dumps(str(tmp_path))}", "train.max_steps=6", "train.checkpoint_every=6",
            "train.sample_every=6", "train.sample_images=4", "train.log_every=3", "sample.steps=3",
            "backbone.depth=2", "eval.num_samples=20",
            *[f"{k}={v}" for k, v in overrides.items()]]
    return load_experiment("experiments/quickstart_t2i.toml", sets)


def test_text_conditioning_on_data_without_captions_is_one_line(tmp_path):
    """Class-label data, contexts of another text encoder, and data that cannot draw prompts: each one line
    naming the key to change, never a traceback."""
    from repa.components.dataset.digits import DigitsDataset
    from repa.engine.build import build_conditioning
    from repa.errors import RepaError

    conditioning = build_conditioning(text_config(tmp_path), 10)
    with pytest.raises(RepaError, match=r'conditioning.kind = "text" needs captions or contexts from the data, and '
                                        r'the data gave class labels; use a captioned dataset'):
        conditioning.collate(torch.tensor([3, 7]))
    with pytest.raises(RepaError, match=r"the data gave contexts \[77, 768\]; conditioning.text_encoder "
                                        r"\(digits-words\) makes \[8, 64\]"):
        conditioning.collate([torch.zeros(77, 768), torch.zeros(77, 768)])
    conditioning._dataset = lambda split: DigitsDataset(DigitsParams(), "heldout")  # labels, no prompts
    with pytest.raises(RepaError, match=r'conditioning.kind = "text": DigitsDataset has no captions to draw samples '
                                        r'for; use a captioned dataset'):
        conditioning.conditions(0, range(4), "random")


def test_the_null_context_is_the_empty_caption_and_guidance_uses_it(tmp_path):
    from repa.engine.build import build_conditioning, build_network

    config = text_config(tmp_path)
    conditioning = build_conditioning(config, 10)
    network = build_network(config, 10, conditioning=conditioning)
    empty = conditioning.encoder.encode([""])[0]
    y = conditioning.prompts(["a seven", "a two"]).y
    torch.testing.assert_close(network.null_condition(y), empty.expand(2, -1, -1))
    assert network.context_shape == (8, 64)


def test_validation_pairs_text_with_a_backbone_that_takes_it(tmp_path):
    from repa.config import load_experiment
    from repa.errors import ConfigError

    text = Path("experiments/quickstart_t2i.toml").read_text()
    sit = tmp_path / "sit.toml"
    sit.write_text(text.replace('kind = "mmdit"', 'kind = "sit"').replace("pos_embed_max_size = 8", "hidden_size = 128"))
    with pytest.raises(ConfigError, match=r"conditioning.kind.*takes class labels"):
        load_experiment(sit)
    labels = tmp_path / "labels.toml"
    labels.write_text(text.replace('kind = "text"\ntext_encoder = { kind = "digits-words", tokens = 8, width = 64 }',
                                   'kind = "class"'))
    with pytest.raises(ConfigError, match=r"conditioning.kind.*conditioned on text"):
        load_experiment(labels)


def test_text_to_image_trains_samples_prompts_and_evaluates(tmp_path, capsys):
    from repa.cli import main

    overrides = [f"experiment.output_dir={json.dumps(str(tmp_path))}", "train.max_steps=6", "train.checkpoint_every=6",
                 "train.sample_every=6", "train.sample_images=4", "train.log_every=3", "sample.steps=3",
                 "backbone.depth=2", "eval.num_samples=20"]
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["run", "experiments/quickstart_t2i.toml", "--no-progress", *sets]) == 0
    run = tmp_path / "quickstart_t2i"
    from PIL import Image

    grid = np.asarray(Image.open(run / "samples" / "0000006.png"))
    assert grid.shape[1] > grid.shape[0]  # the prompts' band left of the 2x2 samples
    assert main(["sample", "experiments/quickstart_t2i.toml", "--prompt", "a thick seven", "--prompt", "a two",
                 "--num-samples", "4", "--no-progress", *sets]) == 0
    folder = next((run / "sampled").iterdir())
    assert json.loads((folder / "settings.json").read_text())["prompts"] == ["a thick seven", "a two"]
    assert (folder / "grid.png").is_file() and len(list((folder / "images").glob("*.png"))) == 4
    assert "labels" not in np.load(folder / "samples.npz")
    from repa.weights import load_file  # the EMA as train_t2i.py saves it: {"model": official layout}

    torch.save({"model": load_file(run / "checkpoints" / "0000006" / "ema.safetensors")}, tmp_path / "0000006.pt")
    assert main(["sample", "experiments/quickstart_t2i.toml", "--prompt", "a thick seven", "--prompt", "a two",
                 "--num-samples", "4", "--checkpoint", str(tmp_path / "0000006.pt"), "--out", str(tmp_path / "official"),
                 "--no-progress", *sets]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "official" / "samples.npz")["arr_0"],
                                  np.load(folder / "samples.npz")["arr_0"])
    assert main(["evaluate", str(run), "--no-progress", *sets]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scores = [r["eval"] for r in records if "eval" in r]
    assert scores and 0 <= scores[-1]["digits-accuracy"] <= 1 and scores[-1]["digits-fd"] > 0
    assert 0 <= scores[-1]["digits-attributes"] <= 1 and "digits-attributes-slant" in scores[-1]
    drawn = np.load(next((run / "eval").iterdir()) / "samples.npz")
    from repa.components.text_encoder.words import DIGIT_WORDS

    assert drawn["prompts"].shape == (20,)  # each names the digit its label says
    assert [p.split()[-1] for p in drawn["prompts"]] == [DIGIT_WORDS[d] for d in drawn["labels"]]
    assert main(["analyze", str(run), "--samples", "96", "--t", "0.5", "--token-images", "8", "--analyses",
                 "cknna,linear-probe", "--out", str(tmp_path / "analysis"), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "analysis" / "analysis.json").read_text())["rows"]
    probes = [r["value"] for r in rows if r["score"] == "linear-probe" and r["run"]]
    assert len(probes) == 2 and all(0 <= v <= 1 for v in probes)  # both blocks, read under the empty caption
    capsys.readouterr()
    assert main(["sample", "experiments/quickstart_t2i.toml", "--prompt", "a purple seven", "--num-samples", "2",
                 "--no-progress", *sets]) != 0
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "digits-words" in error and "'purple' in 'a purple seven' is not a word it knows" in error
