"""Spatial structure of a representation's token grid, as iREPA defines it (Singh et al. 2025, "What
matters for representation alignment: global information or spatial structure?", Sec. 3; code
End2End-Diffusion/iREPA, metrics/spatial_metrics.py). Tokens are L2-normalised; distances are
Manhattan distances on the token grid; each score is computed per image and averaged.

- LDS, local vs distant similarity: mean cosine of 4-neighbours minus mean cosine of pairs at
  distance >= far_dist.
- CDS, correlation-decay slope: minus the least-squares slope of mean cosine against distance
  d = 1..dmax.
- SRSS, semantic-region self-similarity: for object tokens, mean cosine to object tokens within
  d_pos minus mean cosine to background tokens at distance >= d_neg (needs foreground masks).
- RMSC, RMS spatial contrast: root mean square norm of the tokens centred over the image.

iREPA finds that these predict the FID a REPA encoder gives better than its linear-probe accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repa.interfaces import Analysis

CHUNK = 32  # images per [chunk, T, T] similarity block: memory stays bounded for 1,024-token grids


def grid_distance(grid: tuple[int, int], device=None) -> torch.Tensor:
    """[T,T] Manhattan distance between the tokens of a row-major rows x columns grid."""
    rows, cols = torch.meshgrid(torch.arange(grid[0], device=device), torch.arange(grid[1], device=device),
                                indexing="ij")
    coords = torch.stack([rows.flatten(), cols.flatten()], dim=1)
    return (coords[:, None, :] - coords[None, :, :]).abs().sum(-1)


def _cosines(tokens: torch.Tensor) -> torch.Tensor:
    unit = F.normalize(tokens.float(), dim=-1)
    return unit @ unit.transpose(1, 2)


def _chunks(tokens: torch.Tensor):
    for start in range(0, len(tokens), CHUNK):
        yield start, tokens[start : start + CHUNK]


def lds(tokens: torch.Tensor, grid: tuple[int, int], far_dist: int = 6) -> torch.Tensor:
    """tokens [n,T,D] -> [n]."""
    distance = grid_distance(grid, tokens.device)
    near, far = distance == 1, distance >= max(far_dist, 1)
    scores = []
    for _, chunk in _chunks(tokens):
        cos = _cosines(chunk)
        scores.append(cos[:, near].mean(1) - cos[:, far].sum(1) / far.sum().clamp(min=1))
    return torch.cat(scores)


def cds(tokens: torch.Tensor, grid: tuple[int, int], dmax: int = 8) -> torch.Tensor:
    distance = grid_distance(grid, tokens.device)
    present = [d for d in range(1, dmax + 1) if bool((distance == d).any())]
    if not present:
        return tokens.new_zeros(len(tokens))
    x = torch.tensor(present, dtype=torch.float32, device=tokens.device)
    x = x - x.mean()
    scores = []
    for _, chunk in _chunks(tokens):
        cos = _cosines(chunk)
        means = torch.stack([cos[:, distance == d].mean(1) for d in present], dim=1)  # [c, K]
        scores.append(-((means - means.mean(1, keepdim=True)) @ x) / (x @ x).clamp(min=1e-12))
    return torch.cat(scores)


def srss(tokens: torch.Tensor, grid: tuple[int, int], foreground: torch.Tensor, d_pos: int = 1, d_neg: int = 6,
         d_pos_min: int = 1) -> torch.Tensor:
    """foreground [n,T] bool; NaN for an image without a valid (object, near object, far background) triple."""
    distance = grid_distance(grid, tokens.device)
    near, far = (distance <= d_pos) & (distance >= d_pos_min), distance >= d_neg
    scores = []
    for start, chunk in _chunks(tokens):
        cos = _cosines(chunk)
        fg = foreground[start : start + len(chunk)].to(tokens.device, torch.bool)
        positive = fg[:, :, None] & fg[:, None, :] & near
        negative = fg[:, :, None] & ~fg[:, None, :] & far
        pos_count, neg_count = positive.sum(2), negative.sum(2)
        delta = (cos * positive).sum(2) / pos_count.clamp(min=1) - (cos * negative).sum(2) / neg_count.clamp(min=1)
        valid = fg & (pos_count > 0) & (neg_count > 0)
        total = (delta * valid).sum(1) / valid.sum(1).clamp(min=1)
        scores.append(torch.where(valid.any(1), total, torch.full_like(total, float("nan"))))
    return torch.cat(scores)


def rmsc(tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    unit = F.normalize(tokens.float(), dim=-1, eps=1e-8)
    centred = unit - unit.mean(1, keepdim=True)
    return centred.square().sum(-1).mean(1).sqrt()


def _mean(scores: torch.Tensor) -> float:
    return float(torch.nanmean(scores)) if len(scores) else float("nan")


SCORES = {
    "lds": lambda rep, fg, p: lds(rep.tokens, rep.grid, p.far_dist),
    "cds": lambda rep, fg, p: cds(rep.tokens, rep.grid, p.dmax),
    "srss": lambda rep, fg, p: srss(rep.tokens, rep.grid, fg, p.d_pos, p.d_neg),
    "rmsc": lambda rep, fg, p: rmsc(rep.tokens, rep.grid),
}


class SpatialMetric(Analysis):
    """One of the four scores, on the tokens of the first images (SRSS also reads their foreground)."""

    def __init__(self, name: str, params):
        self.name, self.params = name, params
        self.needs = frozenset({"foreground"}) if name == "srss" else frozenset()

    def measure(self, inputs) -> dict[str, float]:
        return {self.name: _mean(SCORES[self.name](inputs.representation, inputs.foreground, self.params))}
