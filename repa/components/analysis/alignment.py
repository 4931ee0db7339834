"""CKNNA: mutual k-nearest-neighbour kernel alignment (Huh et al. 2024, "The Platonic Representation
Hypothesis", Sec. A; code minyoungg/platonic-rep, metrics.py `AlignmentMetrics.cknna`, the unbiased
distance-aware variant with L2-normalised features, as measure_alignment.py calls it). REPA uses it
with k = 10 to show that diffusion transformers' hidden states align weakly with DINOv2 and that
REPA raises the alignment (Yu et al. 2024, Figs. 2-3 and 6).

    CKNNA(K, L) = HSIC(a(K), a(L)) / sqrt(HSIC(a(K), a(K)) HSIC(a(L), a(L)))

with K, L the inner-product kernels of the two representations of the same N images, a(.) keeping
only the pairs (i, j) where j is among the k nearest neighbours of i in *both* spaces, and HSIC the
unbiased estimator (Song et al. 2012, Eq. 5). Memory is O(N^2): a few N x N matrices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repa.interfaces import Analysis


def knn_mask(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """bool [N,N]: j is among the k largest kernel[i, j], j != i (the unbiased variant never picks i itself)."""
    scores = kernel.clone().fill_diagonal_(float("-inf"))
    mask = torch.zeros(kernel.shape, dtype=torch.bool, device=kernel.device)
    return mask.scatter_(1, scores.topk(k, dim=1).indices, True)


def hsic_unbiased(kernel_a: torch.Tensor, kernel_b: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC (Song et al. 2012, Eq. 5) of two kernels (their diagonals are ignored)."""
    return _hsic_zero_diagonal(kernel_a.clone().fill_diagonal_(0), kernel_b.clone().fill_diagonal_(0))


def _hsic_zero_diagonal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The same for kernels whose diagonals are zero, accumulated in float64. sum(A @ B) is computed
    as colsum(A) . rowsum(B), which needs no N x N product."""
    m = a.shape[0]
    wide = torch.float64 if a.device.type != "mps" else torch.float32
    trace_term = torch.sum(a * b.T, dtype=wide)
    sums_term = torch.sum(a, dtype=wide) * torch.sum(b, dtype=wide) / ((m - 1) * (m - 2))
    product_term = torch.dot(a.sum(0, dtype=wide), b.sum(1, dtype=wide))
    return (trace_term + sums_term - 2 * product_term / (m - 2)) / (m * (m - 3))


def cknna(features_a: torch.Tensor, features_b: torch.Tensor, k: int = 10, normalize: bool = True) -> float:
    """features_a [N, Da], features_b [N, Db] of the same N images -> CKNNA in [-1, 1] (1: the same
    neighbourhood structure). k: neighbours per point (Huh et al. and REPA: 10)."""
    n = features_a.shape[0]
    if features_b.shape[0] != n:
        raise ValueError(f"CKNNA compares the same images: {n} vs {features_b.shape[0]} rows")
    if not 2 <= k < n - 1:
        raise ValueError(f"CKNNA needs 2 <= k < N - 1 (k = {k}, N = {n} images)")
    dtype = torch.promote_types(features_a.dtype, torch.float32)
    a, b = features_a.to(dtype), features_b.to(dtype)
    if normalize:
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    kernel_a, kernel_b = a @ a.T, b @ b.T
    mask_a, mask_b = knn_mask(kernel_a, k), knn_mask(kernel_b, k)  # never i itself: zero diagonals below
    both = mask_a & mask_b
    cross = _hsic_zero_diagonal(kernel_a * both, kernel_b * both)
    near_a, near_b = kernel_a * mask_a, kernel_b * mask_b
    self_a, self_b = _hsic_zero_diagonal(near_a, near_a), _hsic_zero_diagonal(near_b, near_b)
    return float(cross / (torch.sqrt(self_a * self_b) + 1e-6))


def token_points(tokens: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """A seeded choice of `count` (image, token) rows of tokens [n, T, D], as indices into the flattened [n*T]."""
    total = tokens.shape[0] * tokens.shape[1]
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(total, generator=generator)[: min(count, total)]


def on_grid(tokens: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """tokens [n, r*c, D] on `grid` -> [n, R*C, D] on `target` (bilinear), so that token i of both
    representations covers the same image region."""
    if tuple(grid) == tuple(target):
        return tokens
    n, _, d = tokens.shape
    image = tokens.transpose(1, 2).reshape(n, d, *grid).float()
    resized = F.interpolate(image, size=tuple(target), mode="bilinear", align_corners=False)
    return resized.flatten(2).transpose(1, 2)


class CKNNA(Analysis):
    """Mean-pooled: one point per image (the tokens' mean). Per token: `points` (image, token) pairs
    drawn once with a fixed seed, the same positions in both representations (the reference's token
    grid resampled to the representation's when they differ)."""

    needs = frozenset({"reference"})

    def __init__(self, params, per_token: bool):
        self.params, self.per_token = params, per_token

    def measure(self, inputs) -> dict[str, float]:
        rep, ref = inputs.representation, inputs.reference
        if not self.per_token:
            return {"cknna": cknna(rep.pooled, ref.pooled, self.params.k)}
        ours = rep.tokens.float()
        theirs = on_grid(ref.tokens.float(), ref.grid, rep.grid)
        rows = token_points(ours, self.params.points, self.params.seed)
        return {"cknna-tokens": cknna(ours.flatten(0, 1)[rows], theirs.flatten(0, 1)[rows], self.params.k)}
