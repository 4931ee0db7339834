"""Linear probing (REPA Fig. 2a, following the practice of Xiang et al. 2023 and Chen et al. 2024):
how linearly separable the classes are in a representation. Multinomial logistic regression on the
pooled features, standardised with the fitting split's statistics, L2-regularised, fitted by
full-batch L-BFGS from zero weights: convex, seeded by nothing, deterministic on a CPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repa.interfaces import Analysis


def fit_logistic(x: torch.Tensor, y: torch.Tensor, classes: int, l2: float, iterations: int) -> torch.Tensor:
    """x [N,D] standardised, y [N] -> weights [D+1, classes] (the last row is the bias)."""
    x = torch.cat([x, x.new_ones(len(x), 1)], dim=1)
    weights = torch.zeros(x.shape[1], classes, dtype=x.dtype, device=x.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], lr=1.0, max_iter=iterations, history_size=20,
                                  tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def loss():
        optimizer.zero_grad()
        value = F.cross_entropy(x @ weights, y) + l2 * weights[:-1].square().sum()
        value.backward()
        return value

    with torch.enable_grad():
        optimizer.step(loss)
    return weights.detach()


def linear_probe(fit_x: torch.Tensor, fit_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                 l2: float = 1e-4, iterations: int = 100) -> float:
    """Held-out accuracy of a logistic regression fitted on (fit_x, fit_y)."""
    fit_x, test_x = fit_x.float(), test_x.float()
    mean, std = fit_x.mean(0), fit_x.std(0) + 1e-6
    classes = int(max(fit_y.max(), test_y.max())) + 1
    weights = fit_logistic((fit_x - mean) / std, fit_y, classes, l2, iterations)
    test = torch.cat([(test_x - mean) / std, test_x.new_ones(len(test_x), 1)], dim=1)
    return float(((test @ weights).argmax(1) == test_y).float().mean())


class LinearProbe(Analysis):
    needs = frozenset()

    def __init__(self, params):
        self.params = params

    def measure(self, inputs) -> dict[str, float]:
        pooled, fit = inputs.representation.pooled, inputs.fit
        labels = inputs.labels.to(pooled.device)
        if bool((labels < 0).any()):
            raise ValueError("the data gives no class labels (captions without classes)")
        if fit < 1 or fit >= len(labels):
            return {"linear-probe": float("nan")}
        return {"linear-probe": linear_probe(pooled[:fit], labels[:fit], pooled[fit:], labels[fit:],
                                             self.params.l2, self.params.iterations)}
