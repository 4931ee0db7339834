"""Exact conversions between network outputs and (x0, eps), for any path.

Every target is a linear function of (x0, eps) at fixed t, so (x0, eps) are recovered by
solving x_t = alpha x0 + sigma eps together with the output's own equation.
"""

from __future__ import annotations

from repa.interfaces import Prediction


class VelocityPrediction(Prediction):
    def target(self, x0, eps, t, path):
        _, _, d_alpha, d_sigma = path.broadcast(t, x0)
        return d_alpha * x0 + d_sigma * eps

    def to_x0_eps(self, out, x_t, t, path):
        # [alpha sigma; d_alpha d_sigma] [x0; eps] = [x_t; v]
        alpha, sigma, d_alpha, d_sigma = path.broadcast(t, x_t)
        det = alpha * d_sigma - sigma * d_alpha
        return (d_sigma * x_t - sigma * out) / det, (alpha * out - d_alpha * x_t) / det

    def to_velocity(self, out, x_t, t, path):
        return out


class NoisePrediction(Prediction):
    time_range = (0.0, 1.0 - 1e-3)
    def target(self, x0, eps, t, path):
        return eps

    def to_x0_eps(self, out, x_t, t, path):
        alpha, sigma, _, _ = path.broadcast(t, x_t)
        return (x_t - sigma * out) / alpha, out


class DataPrediction(Prediction):
    time_range = (1e-3, 1.0)
    def target(self, x0, eps, t, path):
        return x0

    def to_x0_eps(self, out, x_t, t, path):
        alpha, sigma, _, _ = path.broadcast(t, x_t)
        return out, (x_t - alpha * out) / sigma
