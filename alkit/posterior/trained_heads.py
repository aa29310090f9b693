"""Shared pieces of the trained-head posteriors on cached embeddings (`ensemble`, `mimo`, `hetsngp`).

All three read the same head inputs as the Laplace head (`head_inputs.prepare_head_inputs`
for training, `head_inputs.head_inputs` for scoring): unit-normalised embeddings, centred and
scaled by `input_standardisation` (estimated from the pool), plus a bias column, and the same
prior mean W_0 (the zero-shot classifier written for those inputs, or zero without class
prompts). What differs is how the shared samples are made: ensemble
members, MIMO subnetworks, GP posterior draws. Each predictive carries a temperature T and a
spread scale tau fitted by K-fold cross-validated NLL (`fit_calibration`, 20+ labels), applied
in `predict` and `logit_moments`; the shared samples stay uncalibrated, as the Laplace head's
(see `EnsemblePosterior.sample_weights`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alkit.errors import InputError
from alkit.posterior.predictive_calibration import TEMPERATURE_BOUNDS, VARIANCE_SCALE_BOUNDS, cross_validated_calibration


def cycle_members(num_members: int, num_samples: int, seed: int) -> np.ndarray:
    """Member index of each of S samples `(S,)`: a seeded permutation of the M members, repeated
    in that order until S are filled (S > M repeats members deterministically; S < M keeps the
    first S of the permutation)."""
    if num_samples < 1:
        raise InputError(f"need at least one sample, got {num_samples}")
    order = np.random.default_rng(seed).permutation(num_members)
    return np.resize(order, num_samples)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def member_moments(member_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance over members of logits `(M, N, K)` -> `(N, K), (N, K)`."""
    return member_logits.mean(axis=0), member_logits.var(axis=0)


def standardisation_state(input_mean: np.ndarray | None, input_scale: float) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays = {} if input_mean is None else {"input_mean": input_mean}
    return arrays, {"input_scale": float(input_scale)}


@dataclass(frozen=True)
class CalibrationSettings:
    """Predictive calibration of a trained head, fitted by K-fold cross-validated NLL (as the Laplace head's)."""

    calibrate: bool = True
    folds: int = 5
    min_labels: int = 20  # below this T = tau = 1 (the Laplace head's `min_labels_for_calibration`)

    def as_dict(self) -> dict[str, Any]:
        return {"calibrate": self.calibrate, "calibration_folds": self.folds, "min_labels_for_calibration": self.min_labels}


def fit_calibration(
    labels: np.ndarray, settings: CalibrationSettings, seed: int,
    held_out_outputs: Callable[[np.ndarray, np.ndarray], Sequence[np.ndarray]],
    calibrated: Callable[[Sequence[np.ndarray], float, float], np.ndarray],
) -> dict[str, Any]:
    """Temperature T and spread scale tau of a trained head's predictive, and a provenance report.

    The calibrated logits are T f with the spread of f (over members, subnetworks, or the GP's
    variance) scaled by tau, the two numbers of the Laplace head's calibration: T alone cannot
    fix an ensemble whose members disagree too much (measured on mnist_lt at 200 labels: T
    alone left the ensemble's ECE at 0.15-0.18, as sharpening every member also sharpens its
    errors). `held_out_outputs(train, held)` refits the head on the `train` labels (boolean
    mask) and returns its outputs on the `held` ones (one row per label);
    `calibrated(outputs, T, tau)` is the head's predictive. Folds and search:
    `predictive_calibration` (shared with the Laplace head). With fewer than
    `settings.min_labels` labels nothing is fitted: five folds of under four labels each say
    nothing reliable about two numbers."""
    if not settings.calibrate or labels.size < settings.min_labels:
        return {"temperature": 1.0, "variance_scale": 1.0, "calibration": "none (too few labels)" if settings.calibrate else "off"}
    found = cross_validated_calibration(
        labels, settings.folds, seed, held_out_outputs, lambda outputs, params: calibrated(outputs, params[0], params[1]),
        (TEMPERATURE_BOUNDS, VARIANCE_SCALE_BOUNDS),
    )
    return {
        "temperature": found.parameters[0], "variance_scale": found.parameters[1],
        "calibration": f"{settings.folds}-fold cross-validated NLL",
        "cv_nll_uncalibrated": found.nll_uncalibrated, "cv_nll_calibrated": found.nll_calibrated,
    }


def calibrated_member_logits(member_logits: np.ndarray, temperature: float, variance_scale: float, axis: int = 0) -> np.ndarray:
    """T (fbar + sqrt(tau) (f_m - fbar)) for member logits stacked along `axis`: the members'
    variance around their mean scaled by tau, then all logits by T."""
    mean = member_logits.mean(axis=axis, keepdims=True)
    return temperature * (mean + np.sqrt(variance_scale) * (member_logits - mean))


def calibrated_member_probs(outputs: Sequence[np.ndarray], temperature: float, variance_scale: float) -> np.ndarray:
    """Mean over members of softmax of `calibrated_member_logits` `(N, K)`, from member logits `(N, M, K)` (outputs[0])."""
    return softmax(calibrated_member_logits(outputs[0], temperature, variance_scale, axis=1)).mean(axis=1)
