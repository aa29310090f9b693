"""The generalised Gaussian (ProbVLM's per-dimension output distribution): NLL, variance, shared samples.

Density with location mu, scale alpha > 0 and shape beta > 0 (scipy.stats.gennorm with
loc=mu, scale=alpha, shape=beta):

  p(t) = beta / (2 alpha Gamma(1/beta)) exp(-(|t - mu| / alpha)^beta)
  NLL  = (|t - mu| / alpha)^beta - log beta + log(2 alpha) + log Gamma(1/beta)
  Var  = alpha^2 Gamma(3/beta) / Gamma(1/beta)      (beta = 2: alpha^2 / 2, a Gaussian)

Shared samples. Acquisition needs S draws that are the SAME random numbers for every input
(see `alkit.posterior.base`), yet beta differs per input and dimension, so the draws must be
a deterministic function of shared uniforms U `(S, D)`: t = mu + alpha q(U; beta) with q the
standard quantile q(u; b) = sign(u - 1/2) Ginv(|2u - 1|; 1/b)^(1/b) (Ginv: regularised
lower incomplete gamma inverse). Evaluating Ginv per (sample, input, dim) costs ~1 us each,
hours for a pool, so log|q| is tabulated once per draw on a log-spaced beta grid `(S, D, G)`
and linearly interpolated in log beta per input -- log|q| is smooth in log beta, the grid
error is checked against scipy in tests/test_probvlm_gennorm.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# |t - mu| / alpha is clamped to this before the power: d/dr r^beta is infinite at r = 0 for beta < 1.
RATIO_FLOOR = 1e-12
# Uniforms are kept this far from 1/2 so that log|q| stays finite.
PROBABILITY_FLOOR = 1e-12


def gennorm_nll(target, mu, alpha, beta):
    """Elementwise negative log density (torch tensors, broadcastable); sum over dims yourself."""
    import torch

    ratio = (torch.abs(target - mu) / alpha).clamp_min(RATIO_FLOOR)
    return ratio.pow(beta) - torch.log(beta) + torch.log(2.0 * alpha) + torch.lgamma(1.0 / beta)


def gennorm_variance(alpha, beta):
    """Elementwise variance alpha^2 Gamma(3/beta) / Gamma(1/beta) (torch tensors)."""
    import torch

    return alpha.square() * torch.exp(torch.lgamma(3.0 / beta) - torch.lgamma(1.0 / beta))


@dataclass(frozen=True)
class BetaGrid:
    """Log-spaced shape grid `beta_min .. beta_max` with `size` points (interpolation nodes)."""

    beta_min: float
    beta_max: float
    size: int

    @property
    def log_values(self) -> np.ndarray:
        return np.linspace(np.log(self.beta_min), np.log(self.beta_max), self.size)  # (G,)

    @property
    def log_step(self) -> float:
        return float((np.log(self.beta_max) - np.log(self.beta_min)) / (self.size - 1))


@dataclass(frozen=True)
class QuantileTable:
    """Standard generalised-Gaussian quantiles of S shared uniform draws, tabulated over beta.

    `log_abs (S, D, G)` = log|q(U_sd; beta_g)|, `signs (S, D)` = sign(U_sd - 1/2).
    """

    log_abs: np.ndarray
    signs: np.ndarray
    grid: BetaGrid

    @property
    def num_samples(self) -> int:
        return self.log_abs.shape[0]


def quantile_table(uniforms: np.ndarray, grid: BetaGrid) -> QuantileTable:
    """Tabulate log|q(U; beta)| for shared uniforms `(S, D)` on every grid shape: `(S, D, G)`."""
    from scipy.special import gammaincinv

    u = np.asarray(uniforms, dtype=np.float64)
    p = np.clip(np.abs(2.0 * u - 1.0), PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)  # (S, D)
    shapes = np.exp(grid.log_values)  # (G,)
    log_abs = np.log(gammaincinv(1.0 / shapes, p[..., None])) / shapes  # (S, D, G)
    signs = np.where(u < 0.5, -1.0, 1.0)
    return QuantileTable(log_abs.astype(np.float32), signs.astype(np.float32), grid)


def interpolated_quantiles(table: QuantileTable, beta):
    """Standard quantiles q(U_sd; beta_nd) `(S, n, D)` for shapes `beta (n, D)` (torch, float32).

    Shapes outside the grid are clamped to its ends.
    """
    import torch

    grid = table.grid
    log_abs = torch.from_numpy(np.ascontiguousarray(table.log_abs))  # (S, D, G)
    num_samples, dim, size = log_abs.shape
    position = ((torch.log(beta) - float(grid.log_values[0])) / grid.log_step).clamp(0.0, size - 1.0)  # (n, D)
    lower = position.floor().clamp(max=size - 2).long()  # (n, D)
    weight = (position - lower).to(log_abs.dtype)  # (n, D)
    flat = log_abs.reshape(num_samples, dim * size)  # (S, D*G)
    index = torch.arange(dim)[None, :] * size + lower  # (n, D) into the flat table
    low, high = flat[:, index], flat[:, index + 1]  # (S, n, D) each
    signs = torch.from_numpy(np.ascontiguousarray(table.signs))[:, None, :]  # (S, 1, D)
    return signs * torch.exp(low + weight * (high - low))


def sample_gennorm(mu, alpha, beta, table: QuantileTable):
    """Shared draws t_s = mu + alpha q(U_s; beta) `(S, n, D)` for per-input `mu, alpha, beta (n, D)`."""
    return mu[None] + alpha[None] * interpolated_quantiles(table, beta)
