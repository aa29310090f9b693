"""Laplace evidence of a Kronecker-factored posterior and the prior precision that maximises it.

Up to constants in lam (science.md section 1; p = dim A, q = dim B, P_theta = p q):

  log Z(lam) = -lam/2 |theta_MAP - theta_0|^2 + (P_theta/2) log lam - 1/2 (q log|A'| + p log|B'|)

using log|A' (x) B'| = q log|A'| + p log|B'| (the reference code had the multipliers swapped
and no 1/2). The log-determinants come from the eigenvalues of the UNDAMPED A and B, so the
1-D search over lam (log-spaced grid, then bounded Brent refinement in log lam around the best
grid point) never refactorises. When the MAP itself depends on lam (the Laplace head) the
caller alternates MAP fits and this search.
"""

from __future__ import annotations

import numpy as np

from alkit.posterior.kronecker import damped_eigvals

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
) -> float:
    """log Z(lam) of the damped KFAC Laplace posterior (constants in lam dropped)."""
    p, q = a_vals.shape[0], b_vals.shape[0]
    logdet_a = float(np.log(damped_eigvals(a_vals, pseudo_data, prior_precision)).sum())
    logdet_b = float(np.log(damped_eigvals(b_vals, pseudo_data, prior_precision)).sum())
    return (
        -0.5 * prior_precision * theta_sq_norm
        + 0.5 * p * q * np.log(prior_precision)
        - 0.5 * kron_logdet(logdet_a, logdet_b, p, q)
    )


def optimise_prior_precision(
    a_vals: np.ndarray,
    b_vals: np.ndarray,
    pseudo_data: float,
    theta_sq_norm: float,
    bounds: tuple[float, float] = DEFAULT_BOUNDS,
    grid_size: int = 49,
) -> float:
    """argmax_lam log Z(lam) within `bounds`: log grid, then bounded scalar refinement."""
    from scipy.optimize import minimize_scalar

    log_lo, log_hi = np.log(bounds[0]), np.log(bounds[1])
    grid = np.linspace(log_lo, log_hi, grid_size)

    def negative(log_lam: float) -> float:
        return -log_evidence(float(np.exp(log_lam)), a_vals, b_vals, pseudo_data, theta_sq_norm)

    values = np.array([negative(x) for x in grid])
    best = int(np.argmin(values))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, grid_size - 1)]
    if hi <= lo:
        return float(np.exp(grid[best]))
    result = minimize_scalar(negative, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    chosen = result.x if result.fun <= values[best] else grid[best]
    return float(np.exp(chosen))
