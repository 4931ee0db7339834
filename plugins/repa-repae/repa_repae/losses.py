"""REPA-E's VAE-side losses (End2End-Diffusion/REPA-E: loss/losses.py ReconstructionLoss_Single_Stage,
loss/discriminator.py NLayerDiscriminator, loss/lpips.py LPIPS, configs/l1_lpips_kl_gan.yaml)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from repa.errors import MissingWeightsError


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.mean(F.relu(1.0 - logits_real)) + torch.mean(F.relu(1.0 + logits_fake)))


def kl_loss(mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The posterior's KL to N(0, I), summed over C,H,W and averaged over the batch (a scalar)."""
    kl = 0.5 * torch.sum(mean.pow(2) + std.pow(2) - 1.0 - 2 * torch.log(std), dim=[1, 2, 3])
    return torch.sum(kl) / kl.shape[0]


class PatchDiscriminator(nn.Module):
    """Pix2Pix / taming's PatchGAN, `NLayerDiscriminator(input_nc=3, ndf=64, n_layers=3)` with BatchNorm
    and `weights_init` (conv N(0, 0.02), BatchNorm weight N(1, 0.02), bias 0)."""

    def __init__(self, channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        sequence = [nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, layers):
            previous, mult = mult, min(2 ** n, 8)
            sequence += [nn.Conv2d(width * previous, width * mult, 4, 2, 1, bias=False), nn.BatchNorm2d(width * mult),
                         nn.LeakyReLU(0.2, True)]
        previous, mult = mult, min(2 ** layers, 8)
        sequence += [nn.Conv2d(width * previous, width * mult, 4, 1, 1, bias=False), nn.BatchNorm2d(width * mult),
                     nn.LeakyReLU(0.2, True), nn.Conv2d(width * mult, 1, 4, 1, 1)]
        self.main = nn.Sequential(*sequence)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.constant_(module.bias, 0)

    def forward(self, x):
        return self.main(x)


# ============================================================================
# LPIPS (VGG16), frozen
# ============================================================================

LPIPS_SHIFT, LPIPS_SCALE = (-0.030, -0.088, -0.188), (0.458, 0.448, 0.450)
VGG_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
CHANNELS = (64, 128, 256, 512, 512)


class LPIPS(nn.Module):
    """LPIPS with VGG16 features. REPA-E passes images in [-1, 1] and its LPIPS maps them by x * 2 - 1 as if
    they were in [0, 1]; kept, since the released VAEs were trained with it."""

    def __init__(self):
        super().__init__()
        from torchvision.models import vgg16

        features = vgg16(weights=None).features
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in VGG_SLICES)
        self.lins = nn.ModuleList(nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False)) for c in CHANNELS)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: its dropout never acts

    def load(self, vgg: dict, lin: dict) -> None:
        """torchvision's vgg16 state dict (`features.N.*`) and LPIPS's linear layers (`linN.model.1.weight`)."""
        state = {}
        for i, (a, b) in enumerate(VGG_SLICES):
            for key, value in vgg.items():
                if key.startswith("features."):
                    index, rest = key.split(".", 2)[1:]
                    if a <= int(index) < b:
                        state[f"slices.{i}.{int(index) - a}.{rest}"] = value
        for i in range(len(CHANNELS)):
            state[f"lins.{i}.1.weight"] = lin[f"lin{i}.model.1.weight"]
        self.load_state_dict({**state, "shift": self.shift, "scale": self.scale}, strict=True)

    def forward(self, x, y):
        x, y = (x * 2.0 - 1.0 - self.shift) / self.scale, (y * 2.0 - 1.0 - self.shift) / self.scale
        total = 0.0
        for block, lin in zip(self.slices, self.lins):
            x, y = block(x), block(y)
            diff = (_unit(x) - _unit(y)) ** 2
            total = total + lin(diff).mean([2, 3], keepdim=True)
        return total


def _unit(x, eps=1e-10):
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)


def load_lpips(vgg_path: str | None, lin_path: str | None) -> LPIPS:
    """LPIPS with torchvision's VGG16 weights (torch hub's `vgg16-397923af.pth`) and LPIPS's `vgg.pth`."""
    from repa.weights import load_file, torch_hub_checkpoints

    vgg = Path(vgg_path) if vgg_path else torch_hub_checkpoints() / "vgg16-397923af.pth"
    lin = Path(lin_path) if lin_path else torch_hub_checkpoints().parent.parent / "lpips" / "vgg.pth"
    for path, what, url in ((vgg, "VGG16 (torchvision)", "https://download.pytorch.org/models/vgg16-397923af.pth"),
                            (lin, "LPIPS linear layers", "https://heibox.uni-heidelberg.de/f/607503859c864bc1b30b/?dl=1")):
        if not path.is_file():
            raise MissingWeightsError(f"repa-e perceptual loss: {what} weights not found at {path}; download {url} "
                                      f"there (or set the term's {'vgg' if 'VGG' in what else 'lpips'}_weights), or "
                                      "set perceptual_weight = 0")
    model = LPIPS()
    model.load(load_file(vgg), load_file(lin))
    return model
