"""Calibration of the Laplace head's predictive: a temperature T and a covariance scale tau
chosen by the cross-validated NLL of fold posteriors (same lam, MAP refitted per fold).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alkit.posterior.kronecker import Damping, EigenFactors, eigendecompose
from alkit.posterior.laplace_head_fit import LaplaceHeadSettings, fit_map_head, head_factors
from alkit.posterior.probcosine import probit_softmax

TEMPERATURE_BOUNDS = (0.1, 10.0)
VARIANCE_SCALE_BOUNDS = (1e-3, 10.0)
PROBABILITY_FLOOR = 1e-300  # log of a zero held-out probability stays finite
SEARCH_TOLERANCES = {"xatol": 1e-3, "fatol": 1e-6}  # Nelder-Mead on (log T, log tau)


def centred_logit_moments(
    xa: np.ndarray, weights: np.ndarray, eigen: EigenFactors, prior_precision: float, damping: Damping
) -> tuple[np.ndarray, np.ndarray]:
    """float64 twin of `LaplaceHeadPosterior.logit_moments` before calibration, for the small
    held-out sets of `calibrate_head`: mean W x `(N, K)`, centred-logit variance `(N, K)`."""
    coefficients = eigen.output_coefficients(xa, 1.0, prior_precision, damping)  # (N, K_eig)
    centred = eigen.b_vecs - eigen.b_vecs.mean(axis=0, keepdims=True)
    return xa @ weights.T, coefficients @ (centred**2).T


def calibrated_probs(mean: np.ndarray, var: np.ndarray, temperature: float, variance_scale: float) -> np.ndarray:
    """Probit predictive of the calibrated logits T f, f ~ N(mean, tau var)."""
    return probit_softmax(temperature * mean, temperature**2 * variance_scale * var)


def calibrate_head(
    xa: np.ndarray, labels: np.ndarray, prior: np.ndarray, prior_precision: float, weights: np.ndarray,
    settings: LaplaceHeadSettings, seed: int = 0,
) -> dict[str, Any]:
    """Temperature T and covariance scale tau that minimise the cross-validated NLL.

    The evidence picks lam for the posterior, but with few labels and an isotropic prior the
    probit predictive of that posterior is measured to be far too flat (ECE 0.26-0.28 at 200
    labels on digits, against 0.11-0.21 for a cross-validated logistic regression). Held-out
    predictions of K fold posteriors (same lam, MAP refitted on the other folds) choose T and
    tau: two numbers, so the ranking of inputs by the posterior is unchanged in kind. With
    fewer than `min_labels_for_calibration` labels nothing is fitted (T = tau = 1).
    """
    from scipy.optimize import minimize

    count = labels.shape[0]
    if not settings.calibrate or count < settings.min_labels_for_calibration:
        return {"temperature": 1.0, "variance_scale": 1.0, "calibration": "none (too few labels)" if settings.calibrate else "off"}
    folds = np.random.default_rng(seed).permutation(count) % settings.calibration_folds
    means, variances, truth = [], [], []
    for fold in range(settings.calibration_folds):
        train, held = folds != fold, folds == fold
        fit = fit_map_head(xa[train], labels[train], prior, prior_precision, weights, settings.gradient_tolerance, settings.max_iterations)
        factors = head_factors(xa[train], fit.weights)
        mean, var = centred_logit_moments(xa[held], fit.weights, eigendecompose(factors.A, factors.B), prior_precision, settings.damping)
        means.append(mean)
        variances.append(var)
        truth.append(labels[held])
    mean, var, truth = np.concatenate(means), np.concatenate(variances), np.concatenate(truth)
    rows = np.arange(truth.shape[0])
    lo = np.log([TEMPERATURE_BOUNDS[0], VARIANCE_SCALE_BOUNDS[0]])
    hi = np.log([TEMPERATURE_BOUNDS[1], VARIANCE_SCALE_BOUNDS[1]])

    def held_out_nll(log_params: np.ndarray) -> float:
        temperature, scale = np.exp(np.clip(log_params, lo, hi))
        probs = calibrated_probs(mean, var, temperature, scale)
        return float(-np.log(np.clip(probs[rows, truth], PROBABILITY_FLOOR, None)).mean())

    result = minimize(held_out_nll, np.zeros(2), method="Nelder-Mead", options=SEARCH_TOLERANCES)
    temperature, scale = np.exp(np.clip(result.x, lo, hi))
    return {
        "temperature": float(temperature), "variance_scale": float(scale),
        "calibration": f"{settings.calibration_folds}-fold cross-validated NLL",
        "cv_nll_uncalibrated": held_out_nll(np.zeros(2)), "cv_nll_calibrated": float(result.fun),
    }
