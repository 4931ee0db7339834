"""`repa analyze`: CKNNA against a transcription of its reference definition, the linear probe on
the aligned encoder's own features, iREPA's spatial scores against their definitions, and the
command on two tiny runs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from repa.components.analysis.alignment import cknna
from repa.components.analysis.probe import linear_probe
from repa.components.analysis import spatial


# ============================================================================
# References, transcribed from the papers' released code
# ============================================================================


def platonic_hsic_unbiased(K, L):
    """minyoungg/platonic-rep, metrics.py `hsic_unbiased` (Song et al. 2012, Eq. 5)."""
    m = K.shape[0]
    K_tilde = K.clone().fill_diagonal_(0)
    L_tilde = L.clone().fill_diagonal_(0)
    value = (torch.sum(K_tilde * L_tilde.T) + torch.sum(K_tilde) * torch.sum(L_tilde) / ((m - 1) * (m - 2))
             - 2 * torch.sum(torch.mm(K_tilde, L_tilde)) / (m - 2))
    return value / (m * (m - 3))


def platonic_cknna(feats_A, feats_B, topk):
    """minyoungg/platonic-rep, metrics.py `AlignmentMetrics.cknna` (unbiased, distance-aware), after
    measure_alignment.py's L2 normalisation."""
    feats_A, feats_B = F.normalize(feats_A, p=2, dim=-1), F.normalize(feats_B, p=2, dim=-1)
    n = feats_A.shape[0]
    K = feats_A @ feats_A.T
    L = feats_B @ feats_B.T

    def similarity(K, L, topk):
        K_hat = K.clone().fill_diagonal_(float("-inf"))
        L_hat = L.clone().fill_diagonal_(float("-inf"))
        _, topk_K_indices = torch.topk(K_hat, topk, dim=1)
        _, topk_L_indices = torch.topk(L_hat, topk, dim=1)
        mask_K = torch.zeros(n, n, dtype=K.dtype).scatter_(1, topk_K_indices, 1)
        mask_L = torch.zeros(n, n, dtype=K.dtype).scatter_(1, topk_L_indices, 1)
        mask = mask_K * mask_L
        return platonic_hsic_unbiased(mask * K, mask * L)

    sim_kl = similarity(K, L, topk)
    sim_kk = similarity(K, K, topk)
    sim_ll = similarity(L, L, topk)
    return sim_kl.item() / (torch.sqrt(sim_kk * sim_ll) + 1e-6).item()


def _related(n=300, seed=0):
    """Two representations of n points that share a cluster structure: 8 classes, different widths."""
    g = torch.Generator().manual_seed(seed)
    classes = torch.randint(0, 8, (n,), generator=g)
    a = torch.randn(8, 64, generator=g)[classes] + 0.7 * torch.randn(n, 64, generator=g)
    b = torch.randn(8, 32, generator=g)[classes] @ torch.randn(32, 48, generator=g) + 2.0 * torch.randn(n, 48, generator=g)
    return a, b


# ============================================================================
# CKNNA
# ============================================================================


@pytest.mark.parametrize("k", [2, 10, 25])
def test_cknna_equals_the_platonic_rep_definition(k):
    a, b = _related()
    ours = cknna(a.double(), b.double(), k)
    reference = platonic_cknna(a.double(), b.double(), k)
    assert abs(ours - reference) < 1e-6, (ours, reference)
    assert 0.02 < reference < 0.99  # a case where the mask and both kernels matter
    # float32 (what runs on features) stays within float32 rounding of it
    assert abs(cknna(a, b, k) - reference) < 1e-5


def test_cknna_is_one_for_identical_and_near_zero_for_independent_features():
    a, _ = _related(n=400)
    # 1 up to the definition's stabiliser: HSIC / (HSIC + 1e-6), with HSIC ~ 1e-2 here
    assert cknna(a, a.clone(), 10) == pytest.approx(1.0, abs=5e-4)
    assert cknna(a, 3.0 * a, 10) == pytest.approx(1.0, abs=5e-4)  # scale-free (normalised features)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(400, 64, generator=g), torch.randn(400, 64, generator=g)
    independent = cknna(x, y, 10)
    assert abs(independent) < 0.04
    assert cknna(a, _related(n=400)[1], 10) > 3 * independent  # shared clusters are clearly above chance


def test_cknna_refuses_what_it_cannot_measure():
    a = torch.randn(20, 4)
    with pytest.raises(ValueError, match="same images"):
        cknna(a, a[:10])
    with pytest.raises(ValueError, match="k < N - 1"):
        cknna(a, a, k=19)


# ============================================================================
# Linear probe
# ============================================================================


def test_linear_probe_reaches_the_encoders_own_accuracy_on_its_features():
    """digits-convnet classifies the held-out digits with a linear head on its mean-pooled tokens;
    a probe fitted on the training digits' pooled tokens reads them as well (99%)."""
    import json

    from repa.components.digits_models import digits_split
    from repa.plugins import get_components

    encoder = get_components().get("encoder", "digits-convnet").build(resolution=32)
    known = json.loads(Path(encoder.weights_file).with_suffix(".json").read_text())["heldout_accuracy"]
    train, heldout = digits_split("train"), digits_split("heldout")
    with torch.no_grad():
        fit_x, test_x = (encoder(encoder.preprocess(d.images)).mean(1) for d in (train, heldout))
    accuracy = linear_probe(fit_x, train.labels, test_x, heldout.labels)
    assert accuracy >= 0.985 and accuracy >= known - 0.006, (accuracy, known)
    assert linear_probe(fit_x, train.labels, test_x, heldout.labels) == accuracy  # deterministic
    shuffled = train.labels[torch.randperm(len(train.labels), generator=torch.Generator().manual_seed(0))]
    assert linear_probe(fit_x, shuffled, test_x, heldout.labels) < 0.3  # it reads the classes, not the data


# ============================================================================
# iREPA's spatial scores, against metrics/spatial_metrics.py of End2End-Diffusion/iREPA
# ============================================================================


def irepa_distance(H, W):
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    c = torch.stack([yy.flatten(), xx.flatten()], dim=1)
    return (c[:, None, :] - c[None, :, :]).abs().sum(-1)


def irepa_lds(u, H, W, far_dist=6):
    u = F.normalize(u.float(), dim=-1, eps=1e-8)
    uHW = u.view(u.size(0), H, W, u.size(-1))
    up = (uHW[:, 1:, :, :] * uHW[:, :-1, :, :]).sum(-1)
    left = (uHW[:, :, 1:, :] * uHW[:, :, :-1, :]).sum(-1)
    local = torch.cat([up.flatten(1), left.flatten(1)], dim=1).mean(dim=1)
    G = torch.einsum("btd,bsd->bts", u, u)
    dist = irepa_distance(H, W)
    far_mask = (dist >= far_dist) & (dist > 0)
    far = G.masked_fill(~far_mask, 0.0).sum(dim=(1, 2)) / far_mask.sum().clamp(min=1)
    return local - far


def irepa_cds(u, H, W, dmax=8):
    u = F.normalize(u.float(), dim=-1, eps=1e-8)
    G = torch.einsum("btd,bsd->bts", u, u)
    dist = irepa_distance(H, W)
    sims, ds = [], []
    for d in range(1, dmax + 1):
        m = dist == d
        if m.any():
            sims.append(G[:, m].mean(dim=1))
            ds.append(d)
    S = torch.stack(sims, dim=1)
    x = torch.tensor(ds, dtype=S.dtype)
    x0 = x - x.mean()
    return -(((S - S.mean(dim=1, keepdim=True)) @ x0) / (x0 @ x0).clamp(min=1e-12))


def irepa_srss(u, H, W, masks, d_pos=1, d_neg=6):
    u = F.normalize(u.float(), dim=-1)
    G = u @ u.transpose(1, 2)
    dist = irepa_distance(H, W)
    pos_dist_mask, neg_dist_mask = (dist <= d_pos) & (dist >= 1), dist >= d_neg
    out = []
    for b in range(u.shape[0]):
        fg = masks[b].bool()
        if fg.sum() < 2 or (~fg).sum() < 1:
            out.append(torch.tensor(float("nan")))
            continue
        pos = (fg[:, None] & fg[None, :]) & pos_dist_mask
        neg = (fg[:, None] & (~fg)[None, :]) & neg_dist_mask
        pc, nc = pos.sum(1), neg.sum(1)
        pm, nm = (G[b] * pos).sum(1) / pc.clamp_min(1), (G[b] * neg).sum(1) / nc.clamp_min(1)
        valid = fg & (pc > 0) & (nc > 0)
        out.append((pm[valid] - nm[valid]).mean() if valid.any() else torch.tensor(float("nan")))
    return torch.stack(out)


def irepa_rmsc(u):
    x = F.normalize(u.float(), dim=-1, eps=1e-8)
    xc = x - x.mean(dim=1, keepdim=True)
    return xc.square().sum(dim=-1).mean(dim=1).sqrt()


def _smooth_field(n=40, side=12, dim=16, seed=0):
    """Tokens that vary slowly over the grid (strong spatial structure), and a blob foreground."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, dim, 3, 3, generator=g)
    tokens = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=True)
    tokens = tokens + 0.05 * torch.randn(tokens.shape, generator=g)
    masks = torch.zeros(n, side, side, dtype=torch.bool)
    masks[:, 2:7, 3:8] = True
    masks[0] = False  # an image without an object: SRSS is undefined there
    return tokens.flatten(2).transpose(1, 2), masks.flatten(1)


def test_spatial_scores_equal_irepas_definitions():
    tokens, masks = _smooth_field()
    grid = (12, 12)
    torch.testing.assert_close(spatial.lds(tokens, grid), irepa_lds(tokens, 12, 12), rtol=0, atol=1e-5)
    torch.testing.assert_close(spatial.cds(tokens, grid), irepa_cds(tokens, 12, 12), rtol=0, atol=1e-5)
    torch.testing.assert_close(spatial.srss(tokens, grid, masks), irepa_srss(tokens, 12, 12, masks), rtol=0,
                               atol=1e-5, equal_nan=True)
    torch.testing.assert_close(spatial.rmsc(tokens), irepa_rmsc(tokens), rtol=0, atol=1e-5)
    assert math.isnan(float(spatial.srss(tokens, grid, masks)[0]))  # no object: undefined, as in iREPA


def test_spatial_scores_see_structure_and_its_absence():
    tokens, masks = _smooth_field()
    grid = (12, 12)
    shuffled = tokens[:, torch.randperm(144, generator=torch.Generator().manual_seed(1))]
    assert float(spatial.lds(tokens, grid).mean()) > 0.3 > abs(float(spatial.lds(shuffled, grid).mean())) * 10
    assert float(spatial.cds(tokens, grid).mean()) > 0.02 > abs(float(spatial.cds(shuffled, grid).mean()))
    same = tokens[:, :1].expand(-1, 144, -1)
    assert float(spatial.rmsc(same).max()) < 1e-5  # one token repeated: no contrast at all
    assert float(spatial.rmsc(shuffled).mean()) == pytest.approx(float(spatial.rmsc(tokens).mean()), abs=1e-5)


# ============================================================================
# `repa analyze` on two tiny runs
# ============================================================================


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The tests' tiny experiment trained for 4 steps with REPA and without (checkpoints at 2 and 4)."""
    from tests.conftest import TINY, run_cli

    folder = tmp_path_factory.mktemp("analyze")
    experiment = folder / "tiny.toml"
    experiment.write_text(TINY.replace("{out}", str(folder / "exps")))
    for extra in ([], ["--set", "experiment.name=tiny-baseline", "--set", "alignment=[]"]):
        result = run_cli("run", str(experiment), "--no-progress", *extra)
        assert result.returncode == 0, result.stderr
    return experiment, folder / "exps" / "tiny", folder / "exps" / "tiny-baseline"


def _rows(path: Path) -> list[dict]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_analyze_two_runs_prints_both_tables_and_writes_scores_and_plots(two_runs, tmp_path):
    from tests.conftest import run_cli

    _, repa_run, baseline = two_runs
    out = tmp_path / "analysis"
    result = run_cli("analyze", str(repa_run), str(baseline), "--samples", "120", "--t", "0.25,0.5",
                     "--token-images", "16", "--out", str(out), "--no-progress", env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    for title in ("tiny: step 4, t = 0.5; CKNNA against digits-convnet", "tiny-baseline: step 4, t = 0.5; CKNNA",
                  "encoders, on the analysed images"):
        assert title in result.stdout
    rows = _rows(out / "analysis.csv")
    hidden = [r for r in rows if r["run"]]
    # every run x checkpoint x t x block has every score; CKNNA against the aligned encoder, baseline included
    for run in ("tiny", "tiny-baseline"):
        cells = {(r["step"], r["t"], r["block"]) for r in hidden if r["run"] == run
                 and r["score"] == "cknna" and r["reference"] == "digits-convnet"}
        assert cells == {(s, t, b) for s in ("2", "4") for t in ("0.25", "0.5") for b in ("1", "2")}
    scores = {r["score"] for r in hidden}
    assert scores == {"cknna", "cknna-tokens", "linear-probe", "lds", "cds", "srss", "rmsc"}
    for r in hidden:
        value = float(r["value"])
        assert not math.isnan(value), r
        if r["score"].startswith("cknna"):
            assert -1 <= value <= 1
        if r["score"] == "linear-probe":
            assert 0 <= value <= 1
    encoder = {r["score"]: float(r["value"]) for r in rows if r["representation"] == "digits-convnet"}
    assert set(encoder) == {"linear-probe", "lds", "cds", "srss", "rmsc"}  # no CKNNA of an encoder with itself
    assert encoder["linear-probe"] > 0.5  # a trained (2-epoch) encoder's tokens carry the class; 10 classes
    document = __import__("json").loads((out / "analysis.json").read_text())
    assert document["settings"]["t"] == [0.25, 0.5] and document["runs"]["tiny"]["aligned_blocks"] == [1]
    assert len(document["rows"]) == len(rows)
    plots = {p.name for p in (out / "plots").iterdir()}
    assert {"cknna_vs_digits-convnet.png", "cknna-tokens_vs_digits-convnet.png", "linear-probe.png",
            "lds.png"} <= plots
    assert all((out / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)


def test_the_same_images_and_noise_for_every_checkpoint_and_run(two_runs, tmp_path):
    """--latest measures the latest checkpoint on exactly the inputs the full analysis used."""
    from tests.conftest import run_cli

    _, repa_run, _ = two_runs
    common = ("--samples", "120", "--t", "0.5", "--token-images", "16", "--analyses", "cknna,linear-probe",
              "--no-progress")
    full = run_cli("analyze", str(repa_run), "--out", str(tmp_path / "a"), *common)
    latest = run_cli("analyze", str(repa_run / "checkpoints" / "0000004"), "--out", str(tmp_path / "b"), *common)
    assert full.returncode == 0 and latest.returncode == 0, full.stderr + latest.stderr
    at_4 = [r for r in _rows(tmp_path / "a" / "analysis.csv") if r["step"] in ("4", "")]
    assert at_4 == _rows(tmp_path / "b" / "analysis.csv")


def test_an_analysis_from_a_plugin_is_measured(two_runs, tmp_path):
    from tests.conftest import run_cli

    _, repa_run, _ = two_runs
    (tmp_path / "norm_plugin.py").write_text(
        "from repa.interfaces import Analysis, Params\n"
        "from repa.plugins import hookimpl\n\n"
        "class TokenNorm(Analysis):\n"
        "    def measure(self, inputs):\n"
        "        return {'token-norm': float(inputs.representation.tokens.norm(dim=-1).mean())}\n\n"
        "@hookimpl\n"
        "def repa_register_analyses(registry):\n"
        "    registry.add('token-norm', lambda params: TokenNorm(), Params, 'mean token norm')\n")
    result = run_cli("-p", "norm_plugin", "analyze", str(repa_run), "--latest", "--samples", "60", "--t", "0.5",
                     "--analyses", "token-norm", "--out", str(tmp_path / "a"), "--no-progress",
                     env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    norms = [float(r["value"]) for r in _rows(tmp_path / "a" / "analysis.csv") if r["score"] == "token-norm"]
    assert len(norms) == 3 and all(v > 0 for v in norms)  # the encoder and both blocks


@pytest.mark.parametrize("args,message", [
    ((), "repa analyze: give run folders to analyse (RUN_DIR ...) or an encoder (--encoder NAME)"),
    (("--encoder", "digits-convnet"), "repa analyze --encoder: say which data with --experiment FILE"),
    (("{missing}",), "{missing}: not a run folder or a checkpoint folder"),
    (("{run}", "--t", "0.5,1.5"), "--t 0.5,1.5: every t must lie in [0, 1] (0: data, 1: noise)"),
    (("{run}", "--analyses", "cknnna"), "unknown analysis 'cknnna'"),
    (("{run}", "--split", "test"), "digits: no split 'test'; the splits are train, heldout, all"),
    (("{run}", "--samples", "2"), "argument --samples: must be at least 4, got 2"),
    (("{run}", "--experiment", "{run}/config.resolved.toml"),
     "repa analyze: --experiment and --set are for --encoder alone; a run folder brings its own experiment"),
])
def test_analyze_refuses_bad_input_in_one_line(two_runs, tmp_path, args, message):
    from tests.conftest import run_cli

    _, repa_run, _ = two_runs
    fill = {"missing": str(tmp_path / "nope"), "run": str(repa_run)}
    result = run_cli("analyze", *(a.format(**fill) for a in args), "--no-progress")
    assert result.returncode in (1, 2) and "Traceback" not in result.stderr
    assert message.format(**fill) in result.stderr.strip().splitlines()[-1]


def test_too_few_images_for_cknna_leave_it_out_with_a_note(two_runs, tmp_path):
    from tests.conftest import run_cli

    _, repa_run, _ = two_runs
    result = run_cli("analyze", str(repa_run), "--latest", "--samples", "6", "--t", "0.5", "--token-images", "1",
                     "--analyses", "cknna,cknna-tokens,linear-probe", "--out", str(tmp_path / "a"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "note: cknna: not measured on block 1 vs digits-convnet: CKNNA needs 2 <= k < N - 1 (k = 10, N = 6 images)" \
        in result.stdout
    scores = {r["score"] for r in _rows(tmp_path / "a" / "analysis.csv")}
    assert scores == {"cknna-tokens", "linear-probe"}  # 1 image x 16 tokens: enough (image, token) pairs
