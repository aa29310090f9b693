"""Predictive-quality metrics for a deterministic predictive `probs` (N, K) and `labels` (N,).

Pure numpy, no validation beyond shapes: callers pass probabilities (rows sum to 1) and
integer labels in [0, K). For a posterior-sample stack (S, N, K), average over S first
(the Bayesian model average) and pass the mean.

Conventions (science.md section 6):
- NLL is the mean over items of -log p(label); probabilities are clipped at 1e-12 so a
  confident wrong prediction costs 27.6 nats, not infinity.
- Brier is the multi-class score: sum over classes of (p_k - onehot_k)^2, mean over items;
  it lies in [0, 2] (0 perfect, 2 = all mass on one wrong class).
- ECE uses equal-width bins over the max-probability confidence, 15 by default, bin b
  holding confidences in (b/M, (b+1)/M] (the first bin also includes 0); ECE =
  sum_b (n_b / N) |accuracy_b - confidence_b|.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROBABILITY_FLOOR = 1e-12


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin statistics of a reliability diagram (M bins); empty bins hold count 0 and NaN means."""

    edges: np.ndarray  # (M + 1,) bin edges from 0 to 1
    counts: np.ndarray  # (M,) items per bin
    accuracy: np.ndarray  # (M,) fraction correct per bin (NaN if empty)
    confidence: np.ndarray  # (M,) mean max-probability per bin (NaN if empty)


def _shapes(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise ValueError(f"expected probs (N, K) and labels (N,), got {probs.shape} and {labels.shape}")
    return probs, labels


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of items whose arg-max class is the label (ties: lowest class index)."""
    probs, labels = _shapes(probs, labels)
    return float(np.mean(probs.argmax(axis=1) == labels))


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-probability of the true label (nats); probabilities floored at 1e-12."""
    probs, labels = _shapes(probs, labels)
    true_class = probs[np.arange(len(labels)), labels]
    return float(-np.mean(np.log(np.maximum(true_class, PROBABILITY_FLOOR))))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: sum over classes of squared error to the one-hot label, mean over items."""
    probs, labels = _shapes(probs, labels)
    one_hot = np.zeros_like(probs)
    one_hot[np.arange(len(labels)), labels] = 1.0
    return float(np.mean(np.sum((probs - one_hot) ** 2, axis=1)))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> ReliabilityBins:
    """Equal-width bins over max-probability confidence; see the module docstring for edges."""
    probs, labels = _shapes(probs, labels)
    if num_bins < 1:
        raise ValueError(f"num_bins={num_bins} must be at least 1")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    # Bin b holds (edges[b], edges[b+1]]; confidence 0 goes to bin 0.
    bin_of_item = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, num_bins - 1)
    counts = np.bincount(bin_of_item, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_accuracy = np.bincount(bin_of_item, weights=correct, minlength=num_bins) / counts
        bin_confidence = np.bincount(bin_of_item, weights=confidence, minlength=num_bins) / counts
    return ReliabilityBins(edges=edges, counts=counts, accuracy=bin_accuracy, confidence=bin_confidence)


def ece_from_bins(bins: ReliabilityBins) -> float:
    """Expected calibration error from reliability bins: sum_b (n_b / N) |acc_b - conf_b|."""
    filled = bins.counts > 0
    total = bins.counts.sum()
    gaps = np.abs(bins.accuracy[filled] - bins.confidence[filled])
    return float(np.sum(bins.counts[filled] / total * gaps))


def ece(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> tuple[float, ReliabilityBins]:
    """(expected calibration error in [0, 1], the per-bin statistics for a reliability diagram)."""
    bins = reliability_bins(probs, labels, num_bins)
    return ece_from_bins(bins), bins


def per_class_accuracy(probs: np.ndarray, labels: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(K,) accuracy (recall) per true class; NaN for a class with no items."""
    probs, labels = _shapes(probs, labels)
    num_classes = probs.shape[1] if num_classes is None else num_classes
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    counts = np.bincount(labels, minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.bincount(labels, weights=correct, minlength=num_classes) / counts


def labels_to_reach(curve_labels, curve_acc, target_acc: float) -> float | None:
    """Fewest labels at which a learning curve first reaches `target_acc`; None if it never does.

    `curve_labels` (R,) are label counts per round (increasing) and `curve_acc` (R,) the
    accuracy after each; no interpolation between rounds (labels come in batches).
    Typical use: target = random acquisition's final accuracy.
    """
    curve_labels = np.asarray(curve_labels)
    curve_acc = np.asarray(curve_acc, dtype=np.float64)
    if curve_labels.shape != curve_acc.shape or curve_labels.ndim != 1:
        raise ValueError(f"curve_labels {curve_labels.shape} and curve_acc {curve_acc.shape} must be equal 1-D shapes")
    reached = np.flatnonzero(curve_acc >= target_acc)
    return None if len(reached) == 0 else curve_labels[reached[0]].item()


def summary(probs: np.ndarray, labels: np.ndarray, num_bins: int = 15) -> dict[str, float]:
    """accuracy, nll, brier and ece (with `num_bins` recorded) in one dict, for reports and JSON."""
    expected_calibration_error, _ = ece(probs, labels, num_bins)
    return {
        "accuracy": accuracy(probs, labels),
        "nll": nll(probs, labels),
        "brier": brier(probs, labels),
        "ece": expected_calibration_error,
        "ece_bins": num_bins,
    }
