"""Cross-validated calibration of a predictive: a few positive numbers (a temperature T, a
covariance scale tau) chosen by the NLL of held-out predictions of fold refits.

One function serves every head on embeddings (Laplace head, ensemble, MIMO, HetSNGP: T and
tau; see `laplace_head_calibration` and `trained_heads.fit_calibration`): the labels are split
into K seeded folds, the head is refitted on the other K - 1 folds and predicts the held-out
fold, and the parameters minimise the mean held-out NLL of the calibrated predictive
(Nelder-Mead on their logs, started at 1, clipped to bounds). Fitting on
the training labels themselves would not do: a head that overfits is confident on exactly
those labels, so its training NLL asks for no correction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from alkit.posterior.probcosine import probit_softmax

TEMPERATURE_BOUNDS = (0.1, 10.0)  # T multiplies the logits: T < 1 flattens, T > 1 sharpens
VARIANCE_SCALE_BOUNDS = (1e-3, 10.0)  # tau scales the predictive's logit variance (or the members' spread)
PROBABILITY_FLOOR = 1e-300  # log of a zero held-out probability stays finite
SEARCH_TOLERANCES = {"xatol": 1e-3, "fatol": 1e-6}  # Nelder-Mead on the log parameters


def calibrated_probs(mean: np.ndarray, var: np.ndarray, temperature: float, variance_scale: float) -> np.ndarray:
    """Probit predictive of the calibrated logits T f, f ~ N(mean, tau var) `(N, K)`."""
    return probit_softmax(temperature * mean, temperature**2 * variance_scale * var)


@dataclass(frozen=True)
class CrossValidatedFit:
    """Parameters that minimise the held-out NLL, and that NLL before (all 1) and after."""

    parameters: tuple[float, ...]
    nll_uncalibrated: float
    nll_calibrated: float


def fold_of_each(count: int, folds: int, seed: int) -> np.ndarray:
    """Fold index of each of `count` labels `(count,)`: a seeded permutation modulo K (sizes differ by <= 1)."""
    return np.random.default_rng(seed).permutation(count) % folds


def cross_validated_calibration(
    labels: np.ndarray,
    folds: int,
    seed: int,
    held_out_outputs: Callable[[np.ndarray, np.ndarray], Sequence[np.ndarray]],
    calibrated_probs: Callable[[Sequence[np.ndarray], np.ndarray], np.ndarray],
    bounds: Sequence[tuple[float, float]],
) -> CrossValidatedFit:
    """Fit len(bounds) positive parameters by K-fold cross-validated NLL.

    `held_out_outputs(train, held)` (boolean masks over the labels) refits the head on `train`
    and returns arrays with one row per held-out label (e.g. logits, or logit moments);
    `calibrated_probs(outputs, parameters)` turns the concatenated outputs of all folds into
    probabilities `(L, K)` under the parameters. The search runs on log parameters from 0.
    """
    from scipy.optimize import minimize

    labels = np.asarray(labels)
    assigned = fold_of_each(labels.shape[0], folds, seed)
    pieces: list[Sequence[np.ndarray]] = []
    truth = []
    for fold in range(folds):
        train, held = assigned != fold, assigned == fold
        pieces.append(held_out_outputs(train, held))
        truth.append(labels[held])
    outputs = [np.concatenate(parts) for parts in zip(*pieces)]
    truth_all = np.concatenate(truth)
    rows = np.arange(truth_all.shape[0])
    lo = np.log([b[0] for b in bounds])
    hi = np.log([b[1] for b in bounds])

    def held_out_nll(log_params: np.ndarray) -> float:
        probs = calibrated_probs(outputs, np.exp(np.clip(log_params, lo, hi)))
        return float(-np.log(np.clip(probs[rows, truth_all], PROBABILITY_FLOOR, None)).mean())

    start = np.zeros(len(bounds))
    result = minimize(held_out_nll, start, method="Nelder-Mead", options=SEARCH_TOLERANCES)
    best = np.exp(np.clip(result.x, lo, hi))
    return CrossValidatedFit(tuple(float(v) for v in best), held_out_nll(start), float(result.fun))
