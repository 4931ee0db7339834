"""iREPA's two modules (released code: End2End-Diffusion/iREPA, ldm/models/sit.py and ldm/utils.py)."""

from __future__ import annotations

import torch
import torch.nn as nn

from repa.interfaces import Projector, TargetTransform


class ConvProjector(nn.Module, Projector):
    """hidden [B, T, D_in] -> [B, T, D_out] through a k x k convolution on the (rows, columns) grid.

    The convolution keeps PyTorch's default initialisation: the released SiT re-initialises only
    nn.Linear layers (xavier), so its Conv2d projector keeps the default too."""

    def __init__(self, in_dim: int, out_dim: int, grid: tuple[int, int], kernel_size: int = 3):
        super().__init__()
        self.grid = (int(grid[0]), int(grid[1]))
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size=kernel_size, padding=kernel_size // 2)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = hidden.shape
        rows, columns = self.grid
        if rows * columns != tokens:
            raise ValueError(f"the conv projector was built for a {rows}x{columns} token grid but got {tokens} tokens")
        image = hidden.reshape(batch, rows, columns, width).permute(0, 3, 1, 2)
        return self.conv(image).flatten(2).transpose(1, 2)


class SpatialNorm(TargetTransform):
    """(tokens - gamma * mean_T) / (std_T + eps), per sample and channel; std with Bessel's
    correction, as torch.std in the released code."""

    def __init__(self, gamma: float = 0.6, eps: float = 1e-6):
        self.gamma, self.eps = gamma, eps

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        mean = tokens.mean(dim=1, keepdim=True)
        std = tokens.std(dim=1, keepdim=True)
        return (tokens - self.gamma * mean) / (std + self.eps)
