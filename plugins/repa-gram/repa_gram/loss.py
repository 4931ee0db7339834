"""The Gram-matrix alignment loss: per sample, mean_ij (cos(p_i, p_j) - cos(y_i, y_j))^2."""

import torch
import torch.nn.functional as F

from repa.interfaces import AlignmentLoss


class GramAlignment(AlignmentLoss):
    def __init__(self, cosine_weight: float = 0.0):
        self.cosine_weight = cosine_weight

    def __call__(self, projected, target):
        with torch.autocast(projected.device.type, enabled=False):  # float32, as every repa loss
            p = F.normalize(projected.float(), dim=-1)
            y = F.normalize(target.float(), dim=-1)
            loss = ((p @ p.transpose(1, 2) - y @ y.transpose(1, 2)) ** 2).mean(dim=(1, 2))
            if self.cosine_weight:
                loss = loss - self.cosine_weight * (p * y).sum(-1).mean(-1)
            return loss
