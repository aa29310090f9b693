"""Shared pieces of the trained-head posteriors on cached embeddings (`ensemble`, `mimo`, `hetsngp`).

All three read the same head inputs as the Laplace head (`head_inputs.prepare_head_inputs`
for training, `head_inputs.head_inputs` for scoring): unit-normalised embeddings, centred and
scaled by `input_standardisation` (estimated from the pool), plus a bias column, and the same
prior mean W_0 (the zero-shot classifier written for those inputs, or zero without class
prompts). What differs is how the shared samples are made: ensemble
members, MIMO subnetworks, GP posterior draws. Each predictive carries a temperature T fitted
by K-fold cross-validated NLL (`fit_temperature`, 20+ labels), applied in `predict` and
`logit_moments`; the shared samples stay untempered, as the Laplace head's (see each class).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from alkit.errors import InputError
from alkit.posterior.predictive_calibration import TEMPERATURE_BOUNDS, cross_validated_calibration


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
    """Predictive temperature of a trained head, fitted by K-fold cross-validated NLL (as the Laplace head's)."""

    calibrate: bool = True
    folds: int = 5
    min_labels: int = 20  # below this T = 1 (the Laplace head's `min_labels_for_calibration`)

    def as_dict(self) -> dict[str, Any]:
        return {"calibrate": self.calibrate, "calibration_folds": self.folds, "min_labels_for_calibration": self.min_labels}


def fit_temperature(
    labels: np.ndarray, settings: CalibrationSettings, seed: int,
    held_out_outputs: Callable[[np.ndarray, np.ndarray], Sequence[np.ndarray]],
    tempered_probs: Callable[[Sequence[np.ndarray], float], np.ndarray],
) -> dict[str, Any]:
    """The temperature T of a trained head's predictive (logits T f) and a report for the provenance.

    `held_out_outputs(train, held)` refits the head on the `train` labels (boolean mask) and
    returns its outputs on the `held` ones (one row per label); `tempered_probs(outputs, T)` is
    the head's predictive under T. Folds and search: `predictive_calibration` (shared with the
    Laplace head). With fewer than `settings.min_labels` labels T = 1: five folds of fewer than
    four labels each say nothing reliable about a temperature."""
    if not settings.calibrate or labels.size < settings.min_labels:
        return {"temperature": 1.0, "calibration": "none (too few labels)" if settings.calibrate else "off"}
    found = cross_validated_calibration(
        labels, settings.folds, seed, held_out_outputs, lambda outputs, params: tempered_probs(outputs, params[0]),
        (TEMPERATURE_BOUNDS,),
    )
    return {
        "temperature": found.parameters[0], "calibration": f"{settings.folds}-fold cross-validated NLL",
        "cv_nll_uncalibrated": found.nll_uncalibrated, "cv_nll_calibrated": found.nll_calibrated,
    }


def tempered_member_probs(outputs: Sequence[np.ndarray], temperature: float) -> np.ndarray:
    """Mean over members of softmax(T f_m) `(N, K)` from member logits `(N, M, K)` (outputs[0])."""
    return softmax(temperature * outputs[0]).mean(axis=1)
