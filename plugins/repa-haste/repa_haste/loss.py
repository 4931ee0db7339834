"""HASTE's attention distillation (NUS-HPC-AI-Lab/HASTE, loss.py `attn_loss`)."""

import torch

from repa.interfaces import AttentionLoss


class AttentionCrossEntropy(AttentionLoss):
    """Per sample: the mean over heads and query tokens of -sum_k softmax(teacher)_k log softmax(student)_k."""

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        with torch.autocast(student.device.type, enabled=False):  # float32, as every repa loss
            target = teacher.float().softmax(dim=-1)
            return -(target * student.float().log_softmax(dim=-1)).sum(dim=-1).mean(dim=(1, 2))
