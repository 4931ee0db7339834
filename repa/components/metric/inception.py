"""The TensorFlow FID Inception (2015-12-05 graph) in PyTorch, as the ADM evaluator reads it.

Architecture and parameter names are pytorch-fid's / torch-fidelity's port (their weight files
load strictly). Input handling follows the TF graph, not pytorch-fid: uint8 images are resized
to 299 with TF1 `ResizeBilinear` (align_corners=False, no half-pixel centres), then mapped by
(x - 128) / 128. Outputs per image:
  pool    [2048]  pool_3, for FID, precision and recall
  spatial [2023]  mixed_6/conv (= Mixed_6d.branch1x1 after its ReLU), first 7 channels,
                  flattened in TF's HWC order, for sFID
  logits  [1008]  pool_3 @ softmax weights, no bias, for the Inception Score
"""

from __future__ import annotations

import contextlib

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import inception as tv

from repa.weights import load_file, load_state_strict

# ============================================================================
# The FID variants of the Inception blocks (pytorch-fid's FIDInception*)
# ============================================================================


class FIDInceptionA(tv.InceptionA):
    def forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b5, b3, pool], 1)


class FIDInceptionC(tv.InceptionC):
    def forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return torch.cat([b1, b7, bd, pool], 1)


class FIDInceptionE(tv.InceptionE):
    """E_1 (Mixed_7b) average-pools without padding counts; E_2 (Mixed_7c) max-pools."""

    def __init__(self, in_channels: int, max_pool: bool):
        super().__init__(in_channels)
        self.max_pool = max_pool

    def forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


def fid_inception() -> nn.Module:
    """Randomly initialised FID Inception with pytorch-fid's module names (1008-class fc)."""
    net = tv.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d = FIDInceptionA(192, 32), FIDInceptionA(256, 64), FIDInceptionA(288, 64)
    net.Mixed_6b, net.Mixed_6c = FIDInceptionC(768, 128), FIDInceptionC(768, 160)
    net.Mixed_6d, net.Mixed_6e = FIDInceptionC(768, 160), FIDInceptionC(768, 192)
    net.Mixed_7b, net.Mixed_7c = FIDInceptionE(1280, max_pool=False), FIDInceptionE(2048, max_pool=True)
    return net.eval().requires_grad_(False)


# ============================================================================
# TF1 bilinear resize and the forward pass
# ============================================================================


def _axis(in_size: int, out_size: int, device):
    scale = np.float32(in_size) / np.float32(out_size)
    src = torch.arange(out_size, dtype=torch.float32, device=device) * float(scale)
    lo = src.floor().long().clamp(max=in_size - 1)
    return lo, (lo + 1).clamp(max=in_size - 1), src - lo.float()


def resize_bilinear_tf1(x: torch.Tensor, size: int = 299) -> torch.Tensor:
    """TF1 ResizeBilinear(align_corners=False): src = dst * in/out, lerp along x, then along y."""
    ly, hy, fy = _axis(x.shape[-2], size, x.device)
    lx, hx, fx = _axis(x.shape[-1], size, x.device)
    top = x[..., ly, :][..., lx] + (x[..., ly, :][..., hx] - x[..., ly, :][..., lx]) * fx
    bottom = x[..., hy, :][..., lx] + (x[..., hy, :][..., hx] - x[..., hy, :][..., lx]) * fx
    return top + (bottom - top) * fy[:, None]


@contextlib.contextmanager
def full_float32():
    """TF32 off for the scoring network (PyTorch enables it for cuDNN convolutions by default);
    the TF evaluator computes in float32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class InceptionFeatures:
    """uint8 [N,H,W,3] -> {"pool", "spatial", "logits"} as numpy float32."""

    def __init__(self, weights: Path, device=None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = fid_inception()
        # The TF-converted files may omit BatchNorm's num_batches_tracked counters (unused in eval).
        counters = {k: v for k, v in self.net.state_dict().items() if k.endswith("num_batches_tracked")}
        load_state_strict(self.net, {**counters, **load_file(weights)}, f"FID Inception weights {weights}")
        self.net.to(self.device)
        self._spatial = None
        self.net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: setattr(self, "_spatial", out))

    @torch.no_grad()
    def batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        with full_float32():
            return self._batch(images)

    def _batch(self, images: np.ndarray) -> dict[str, np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float()
        x = (resize_bilinear_tf1(x) - 128.0) / 128.0
        net = self.net
        for layer in (net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, net.maxpool1, net.Conv2d_3b_1x1,
                      net.Conv2d_4a_3x3, net.maxpool2, net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a,
                      net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e, net.Mixed_7a, net.Mixed_7b,
                      net.Mixed_7c):
            x = layer(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        spatial = self._spatial[:, :7].permute(0, 2, 3, 1).reshape(len(pool), -1)
        logits = pool @ net.fc.weight.T
        return {"pool": pool.cpu().numpy(), "spatial": spatial.cpu().numpy(), "logits": logits.cpu().numpy()}

    def __call__(self, images: np.ndarray, batch_size: int = 100) -> dict[str, np.ndarray]:
        parts = [self.batch(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
