"""Calibration of the Laplace head's predictive: a temperature T and a covariance scale tau
chosen by the cross-validated NLL of fold posteriors (same lam, MAP refitted per fold).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alkit.posterior.kronecker import Damping, EigenFactors, eigendecompose
from alkit.posterior.laplace_head_fit import LaplaceHeadSettings, fit_map_head, head_factors
from alkit.posterior.predictive_calibration import (
    TEMPERATURE_BOUNDS, VARIANCE_SCALE_BOUNDS, calibrated_probs, cross_validated_calibration,
)



def centred_logit_moments(
    xa: np.ndarray, weights: np.ndarray, eigen: EigenFactors, prior_precision: float, damping: Damping
) -> tuple[np.ndarray, np.ndarray]:
    """float64 twin of `LaplaceHeadPosterior.logit_moments` before calibration, for the small
    held-out sets of `calibrate_head`: mean W x `(N, K)`, centred-logit variance `(N, K)`."""
    coefficients = eigen.output_coefficients(xa, 1.0, prior_precision, damping)  # (N, K_eig)
    centred = eigen.b_vecs - eigen.b_vecs.mean(axis=0, keepdims=True)
    return xa @ weights.T, coefficients @ (centred**2).T


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
    fewer than `min_labels_for_calibration` labels nothing is fitted (T = tau = 1). The folds
    and the search are `predictive_calibration.cross_validated_calibration`, shared with the
    trained heads (ensemble, MIMO, HetSNGP).
    """
    count = labels.shape[0]
    if not settings.calibrate or count < settings.min_labels_for_calibration:
        return {"temperature": 1.0, "variance_scale": 1.0, "calibration": "none (too few labels)" if settings.calibrate else "off"}

    def held_out_moments(train: np.ndarray, held: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fit = fit_map_head(xa[train], labels[train], prior, prior_precision, weights, settings.gradient_tolerance, settings.max_iterations)
        factors = head_factors(xa[train], fit.weights)
        return centred_logit_moments(xa[held], fit.weights, eigendecompose(factors.A, factors.B), prior_precision, settings.damping)

    found = cross_validated_calibration(
        labels, settings.calibration_folds, seed, held_out_moments,
        lambda moments, params: calibrated_probs(moments[0], moments[1], params[0], params[1]),
        (TEMPERATURE_BOUNDS, VARIANCE_SCALE_BOUNDS),
    )
    temperature, scale = found.parameters
    return {
        "temperature": temperature, "variance_scale": scale,
        "calibration": f"{settings.calibration_folds}-fold cross-validated NLL",
        "cv_nll_uncalibrated": found.nll_uncalibrated, "cv_nll_calibrated": found.nll_calibrated,
    }
