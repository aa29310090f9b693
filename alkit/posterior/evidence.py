"""Laplace evidence of a Kronecker-factored posterior and the prior precision that maximises it.

With a Gaussian prior N(theta_0, lam^-1 I) over P_theta = p q parameters and the damped
precision H(lam) (eigenvalues E_ij(lam), see `kronecker.py`), the Laplace approximation of
the log marginal likelihood is, up to constants in lam,

  log Z(lam) = log p(y | theta_MAP) - lam/2 |theta_MAP - theta_0|^2 + (P_theta/2) log lam
               - 1/2 sum_ij log E_ij(lam)

(the 2 pi terms of the prior and of the Laplace normaliser cancel). theta_0 must be the
prior mean the MAP was fitted with. For the Ritter form sum log E = q log|A'| + p log|B'|
(the reference code had the multipliers swapped and no 1/2). The log-determinants come from
the eigenvalues of the UNDAMPED factors, so a 1-D search over lam never refactorises.

When theta_MAP is held fixed (BayesVLM's pretrained projection) `optimise_prior_precision`
searches lam alone; when the MAP depends on lam (the Laplace head) the caller evaluates the
full expression with a MAP per lam (`laplace_head.fit_laplace_head`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from alkit.posterior.kronecker import Damping, precision_eigvals

DEFAULT_BOUNDS = (1e-6, 1e8)


def kron_logdet(logdet_a: float, logdet_b: float, p: int, q: int) -> float:
    """log|A (x) B| for A `(p, p)`, B `(q, q)`: q log|A| + p log|B|."""
    return q * logdet_a + p * logdet_b


def log_evidence(
    prior_precision: float,
    a_vals: np.ndarray,
    b_vals: np.ndarray,
    pseudo_data: float,
    theta_sq_norm: float,
    damping: Damping = "eigen",
    log_likelihood: float = 0.0,
) -> float:
    """log Z(lam) of the damped KFAC Laplace posterior (constants in lam dropped)."""
    num_params = a_vals.shape[0] * b_vals.shape[0]
    logdet = float(np.log(precision_eigvals(a_vals, b_vals, pseudo_data, prior_precision, damping)).sum())
    return log_likelihood - 0.5 * prior_precision * theta_sq_norm + 0.5 * num_params * np.log(prior_precision) - 0.5 * logdet


def maximise_log_scalar(
    objective: Callable[[float], float],
    bounds: tuple[float, float],
    start: float = 1.0,
    step: float = np.log(10.0),
    xatol: float = 1e-3,
) -> tuple[float, float, bool]:
    """argmax over lam in `bounds` of a unimodal-ish `objective(lam)`, searched in log lam.

    Steps out from `start` by factors of e^step until the objective falls on both sides (a
    bracket), then refines with bounded Brent to `xatol` in log lam. Returns (lam, value,
    on_bound): `on_bound` is True when the maximum sits at a bound (the caller reports it).
    Each evaluation may be expensive (a MAP fit), so the bracket search only walks as far
    as it must.
    """
    from scipy.optimize import minimize_scalar

    log_lo, log_hi = float(np.log(bounds[0])), float(np.log(bounds[1]))
    cache: dict[float, float] = {}

    def value(log_lam: float) -> float:
        log_lam = float(np.clip(log_lam, log_lo, log_hi))
        if log_lam not in cache:
            cache[log_lam] = float(objective(float(np.exp(log_lam))))
        return cache[log_lam]

    centre = float(np.clip(np.log(start), log_lo, log_hi))
    best = centre
    for direction in (1.0, -1.0):
        point = centre
        while True:
            nxt = float(np.clip(point + direction * step, log_lo, log_hi))
            if nxt == point or value(nxt) < value(point):
                break
            point = nxt
        if value(point) > value(best):
            best = point
    lo = max(best - step, log_lo)
    hi = min(best + step, log_hi)
    if hi > lo:
        result = minimize_scalar(lambda t: -value(t), bounds=(lo, hi), method="bounded", options={"xatol": xatol})
        if -result.fun >= value(best):
            best = float(result.x)
    on_bound = abs(best - log_lo) < 2 * xatol or abs(best - log_hi) < 2 * xatol
    return float(np.exp(best)), value(best), on_bound


def optimise_prior_precision(
    a_vals: np.ndarray,
    b_vals: np.ndarray,
    pseudo_data: float,
    theta_sq_norm: float,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    damping: Damping = "eigen",
    grid_size: int = 49,
) -> float:
    """argmax_lam log Z(lam) for a fixed MAP within `bounds`: log grid, then bounded refinement."""
    from scipy.optimize import minimize_scalar

    log_lo, log_hi = np.log(bounds[0]), np.log(bounds[1])
    grid = np.linspace(log_lo, log_hi, grid_size)

    def negative(log_lam: float) -> float:
        return -log_evidence(float(np.exp(log_lam)), a_vals, b_vals, pseudo_data, theta_sq_norm, damping)

    values = np.array([negative(x) for x in grid])
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid_size - 1)]
    if hi <= lo:
        return float(np.exp(grid[best]))
    result = minimize_scalar(negative, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    chosen = result.x if result.fun <= values[best] else grid[best]
    return float(np.exp(chosen))
