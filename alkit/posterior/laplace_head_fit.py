"""Fitting the Laplace head: MAP by whitened L-BFGS, last-layer KFAC at the MAP, and the prior
precision lam by the Laplace evidence (each candidate lam with its own MAP).

The posterior itself and the full fit (`fit_laplace_head`) are in `laplace_head.py`; the
predictive calibration (temperature, covariance scale) in `laplace_head_calibration.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from alkit.posterior.evidence import log_evidence, maximise_log_scalar
from alkit.posterior.kfac import KroneckerFactors
from alkit.posterior.kronecker import Damping, EigenFactors, eigendecompose
from alkit.posterior.probcosine import probit_softmax

LBFGS_HISTORY = 30  # L-BFGS correction pairs
# The MAP counts as converged when the exact gradient in W is within this factor of the
# whitened search's tolerance (the two coordinates scale the gradient differently).
CONVERGENCE_SLACK = 10


@dataclass(frozen=True)
class LaplaceHeadSettings:
    """Fitting choices for `fit_laplace_head`."""

    initial_prior_precision: float = 1.0  # start of the evidence search; the prior precision with no labels
    prior_bounds: tuple[float, float] = (1e-6, 1e6)
    fixed_prior_precision: float | None = None  # skip the evidence search and use this lam
    damping: str = "eigen"  # "eigen" (A (x) B + lam I) or "ritter" (the BayesVLM reference form)
    gradient_tolerance: float = 1e-6  # L-BFGS stops when max |gradient| <= this * (L + 1)
    max_iterations: int = 20_000  # L-BFGS safety net; hitting it is recorded, not silent
    calibrate: bool = True  # fit the predictive temperature and covariance scale by cross-validation
    calibration_folds: int = 5
    min_labels_for_calibration: int = 20

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}


def head_factors(xa: np.ndarray, weights: np.ndarray) -> KroneckerFactors:
    """Last-layer KFAC at W: A = sum x x^T / sqrt N, B = sum (diag p - p p^T) / sqrt N."""
    n = xa.shape[0]
    logits = xa @ weights.T  # (N, K)
    probs = probit_softmax(logits, np.zeros_like(logits))
    a = xa.T @ xa
    b = np.diag(probs.sum(axis=0)) - probs.T @ probs
    root = np.sqrt(max(n, 1))
    return KroneckerFactors(0.5 * (a + a.T) / root, 0.5 * (b + b.T) / root, n, "softmax", None, True)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def head_log_likelihood(xa: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> float:
    """sum_i log softmax(W x_i)[y_i]."""
    return float(_log_softmax(xa @ weights.T)[np.arange(labels.shape[0]), labels].sum())


@dataclass(frozen=True)
class MapFit:
    weights: np.ndarray  # (K, D + 1)
    iterations: int
    converged: bool


def fit_map_head(
    xa: np.ndarray,
    labels: np.ndarray,
    prior: np.ndarray,
    prior_precision: float,
    start: np.ndarray | None = None,
    gradient_tolerance: float = 1e-7,
    max_iterations: int = 20_000,
) -> MapFit:
    """argmin_W sum_i CE(W x_i, y_i) + lam/2 |W - W_0|^2 by L-BFGS with the exact gradient.

    The loss is strictly convex (lam > 0), so the minimiser is unique; `start` (a nearby MAP)
    only saves iterations. Stops on max |gradient| <= tolerance * (L + 1).
    """
    from scipy.optimize import minimize

    num_classes, width = prior.shape
    rows = np.arange(labels.shape[0])
    onehot = np.zeros((labels.shape[0], num_classes))
    onehot[rows, labels] = 1.0

    def loss_and_gradient(flat: np.ndarray) -> tuple[float, np.ndarray]:
        weights = flat.reshape(num_classes, width)
        log_probs = _log_softmax(xa @ weights.T)  # (L, K)
        offset = weights - prior
        loss = -log_probs[rows, labels].sum() + 0.5 * prior_precision * np.sum(offset**2)
        gradient = (np.exp(log_probs) - onehot).T @ xa + prior_precision * offset  # (K, D + 1)
        return float(loss), gradient.ravel()

    # Precondition by whitening the inputs: W = V S with S = (X^T X / L + lam/L I)^(-1/2), so the
    # problem in V has an identity-scaled data term. Embeddings of one encoder are ill-conditioned
    # (a narrow cone), and plain L-BFGS needed thousands of iterations at small lam.
    count = max(labels.shape[0], 1)
    gram = xa.T @ xa / count
    vals, vecs = np.linalg.eigh(0.5 * (gram + gram.T))
    whiten = (vecs * (np.clip(vals, 0.0, None) + prior_precision / count) ** -0.5) @ vecs.T  # S, symmetric
    unwhiten = (vecs * (np.clip(vals, 0.0, None) + prior_precision / count) ** 0.5) @ vecs.T  # S^-1
    inputs = xa @ whiten

    def whitened(flat: np.ndarray) -> tuple[float, np.ndarray]:
        v = flat.reshape(num_classes, width)
        weights = v @ whiten
        log_probs = _log_softmax(inputs @ v.T)  # (L, K)
        offset = weights - prior
        loss = -log_probs[rows, labels].sum() + 0.5 * prior_precision * np.sum(offset**2)
        gradient = ((np.exp(log_probs) - onehot).T @ xa + prior_precision * offset) @ whiten  # dW -> dV
        return float(loss), gradient.ravel()

    x0 = ((prior if start is None else start) @ unwhiten).ravel()
    result = minimize(
        whitened, x0, jac=True, method="L-BFGS-B",
        options={"maxiter": max_iterations, "gtol": gradient_tolerance * (labels.shape[0] + 1), "ftol": 0.0, "maxcor": LBFGS_HISTORY},
    )
    weights = result.x.reshape(num_classes, width) @ whiten
    gradient = loss_and_gradient(weights.ravel())[1]
    converged = bool(np.abs(gradient).max() <= CONVERGENCE_SLACK * gradient_tolerance * (labels.shape[0] + 1))
    return MapFit(weights, int(result.nit), converged)


@dataclass(frozen=True)
class EvidenceFit:
    prior_precision: float
    log_evidence: float
    weights: np.ndarray
    factors: KroneckerFactors
    eigen: EigenFactors
    on_bound: bool
    evaluations: int
    converged: bool


def head_log_evidence(
    xa: np.ndarray, labels: np.ndarray, prior: np.ndarray, prior_precision: float, weights: np.ndarray,
    damping: Damping = "eigen",
) -> tuple[float, KroneckerFactors, EigenFactors]:
    """Laplace log evidence at a MAP `weights` for `prior_precision` (+ the factors used)."""
    factors = head_factors(xa, weights)
    eigen = eigendecompose(factors.A, factors.B)
    value = log_evidence(
        prior_precision, eigen.a_vals, eigen.b_vals, 1.0, float(np.sum((weights - prior) ** 2)), damping,
        head_log_likelihood(xa, labels, weights),
    )
    return value, factors, eigen


def optimise_head_evidence(
    xa: np.ndarray, labels: np.ndarray, prior: np.ndarray, settings: LaplaceHeadSettings
) -> EvidenceFit:
    """lam = argmax log Z(lam), each lam with its own MAP (warm-started from the nearest one)."""
    fits: dict[float, MapFit] = {}

    def evidence(lam: float) -> float:
        nearest = min(fits, key=lambda other: abs(np.log(other / lam))) if fits else None
        fit = fit_map_head(
            xa, labels, prior, lam, None if nearest is None else fits[nearest].weights,
            settings.gradient_tolerance, settings.max_iterations,
        )
        fits[lam] = fit
        return head_log_evidence(xa, labels, prior, lam, fit.weights, settings.damping)[0]

    lam, _, on_bound = maximise_log_scalar(evidence, settings.prior_bounds, settings.initial_prior_precision)
    best = fits.get(lam)
    if best is None:
        best = fit_map_head(xa, labels, prior, lam, None, settings.gradient_tolerance, settings.max_iterations)
    value, factors, eigen = head_log_evidence(xa, labels, prior, lam, best.weights, settings.damping)
    return EvidenceFit(lam, value, best.weights, factors, eigen, on_bound, len(fits), best.converged)
