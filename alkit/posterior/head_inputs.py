"""Inputs of the heads on embeddings (Laplace head, ensemble, MIMO, HetSNGP) and their shared draws.

Every head reads [(x/|x| - mu) / sigma; 1]: unit-normalised embeddings, centred and scaled by
`input_standardisation` (estimated from the unlabelled pool), plus a bias column; its prior mean
W_0 is the zero-shot classifier of the class prompts written for those inputs (`prior_mean`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from alkit.arrays import l2_normalise
from alkit.errors import InputError, StateError

MIN_ROW_NORM = 1e-12  # embeddings shorter than this cannot be normalised
MIN_INPUT_SCALE = 1e-6  # sigma floor: identical embeddings would otherwise divide by zero


def unit_rows(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm `(N, D)` float64; zero or non-finite rows are an InputError
    naming their positions (they cannot be normalised, and would turn into NaN scores)."""
    x = np.asarray(embeddings, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    bad = np.flatnonzero(~np.isfinite(norms[:, 0]) | (norms[:, 0] <= MIN_ROW_NORM))
    if bad.size:
        raise InputError(
            f"{bad.size} of {x.shape[0]} embeddings are zero or not finite (rows {bad[:5].tolist()}); "
            "re-embed or re-import those images"
        )
    return x / norms


def input_standardisation(embeddings: np.ndarray) -> tuple[np.ndarray, float]:
    """(mu `(D,)`, sigma): mean of the unit embeddings and the RMS norm around it.

    Embeddings of one encoder share a narrow cone (CLIP's modality gap; pixel features are all
    positive), so the directions that separate classes are small deviations from the mean and
    an isotropic prior on raw unit vectors needs huge weights: measured on digits pixels, the
    evidence then collapses lam to its bound (uniform predictions) at 12-20 labels, while on
    centred inputs it stays at 0.6-2.5 and the head learns (0.22-0.51 accuracy vs 0.07-0.21).
    Estimated from unlabelled embeddings (the pool), so it costs no labels.
    """
    unit = unit_rows(embeddings)
    mean = unit.mean(axis=0)
    scale = float(np.sqrt(np.mean(np.sum((unit - mean) ** 2, axis=1))))
    return mean, max(scale, MIN_INPUT_SCALE)


def augment(embeddings: np.ndarray, mean: np.ndarray | None = None, scale: float = 1.0, dtype=np.float64) -> np.ndarray:
    """Head inputs `(N, D + 1)`: [(x/|x| - mu) / sigma; 1] (mu = 0, sigma = 1 when not given)."""
    x = unit_rows(embeddings)
    if mean is not None:
        x = (x - mean) / scale
    x = x.astype(dtype, copy=False)
    return np.concatenate([x, np.ones((x.shape[0], 1), dtype=dtype)], axis=1)


def head_inputs(x, dim: int, input_mean: np.ndarray | None, input_scale: float, dtype=np.float32) -> np.ndarray:
    """[(x/|x| - mu)/sigma; 1] `(N, D + 1)` for scoring; InputError on a wrong width or bad rows."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise InputError(f"embeddings have shape {x.shape}; this posterior expects (N, {dim})")
    return augment(x, input_mean, input_scale, dtype)


def prior_mean(
    num_classes: int, dim: int, class_text: np.ndarray | None, logit_scale: float,
    input_mean: np.ndarray | None = None, input_scale: float = 1.0,
) -> np.ndarray:
    """W_0 `(K, D + 1)`: the zero-shot classifier s <h_k, x/|x|> written for the standardised
    inputs, i.e. [s sigma h_k; s h_k . mu] with unit prompts h_k, or zeros without prompts."""
    mean = np.zeros((num_classes, dim + 1))
    if class_text is not None:
        text = l2_normalise(np.asarray(class_text, dtype=np.float64))
        mean[:, :dim] = logit_scale * input_scale * text
        if input_mean is not None:
            mean[:, dim] = logit_scale * text @ input_mean
    return mean


@dataclass(frozen=True)
class HeadInputs:
    """Validated training inputs of a head on embeddings (Laplace, ensemble, MIMO, HetSNGP)."""

    xa: np.ndarray  # (L, D + 1) standardised embeddings + bias column, float64
    labels: np.ndarray  # (L,) int64 in [0, K)
    prior: np.ndarray  # W_0 (K, D + 1)
    input_mean: np.ndarray | None  # mu (D,)
    input_scale: float  # sigma
    classes: tuple[str, ...]
    dim: int  # D


def prepare_head_inputs(
    embeddings: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    class_text: np.ndarray | None,
    logit_scale: float,
    classes=None,
    unlabelled: np.ndarray | None = None,
    min_labels: int = 0,
) -> HeadInputs:
    """Check shapes, labels and rows (zero / non-finite rows are an InputError via `unit_rows`)
    and build the standardised inputs and the prior mean."""
    x = np.asarray(embeddings, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if x.ndim != 2:
        raise InputError(f"embeddings have shape {x.shape}; pass a 2-D array (N, D)")
    dim = class_text.shape[1] if class_text is not None and x.size == 0 else x.shape[1]
    if labels.shape[0] != x.shape[0]:
        raise InputError(f"{labels.shape[0]} labels for {x.shape[0]} embeddings; pass one label per row")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels must lie in [0, {num_classes}); got {labels.min()}..{labels.max()}")
    if labels.size < min_labels:
        raise StateError(f"{labels.size} labels; this posterior needs at least {min_labels}: label more images")
    if labels.size == 0 and class_text is None:
        raise StateError("no labels and no class prompts: add class prompts (zero-shot prior) or label some images")
    names = tuple(str(c) for c in classes) if classes is not None else tuple(str(k) for k in range(num_classes))
    if len(names) != num_classes:
        raise InputError(f"{len(names)} class names for {num_classes} classes; pass one name per class")
    source = unlabelled if unlabelled is not None and len(unlabelled) else (x if labels.size else None)
    mean, scale = input_standardisation(source) if source is not None else (None, 1.0)
    prior = prior_mean(num_classes, dim, class_text, logit_scale, mean, scale)
    xa = augment(x, mean, scale) if labels.size else np.zeros((0, dim + 1))
    return HeadInputs(xa, labels, prior, mean, float(scale), names, dim)


@dataclass(frozen=True)
class HeadSamples:
    """S shared head draws `(S, K, D + 1)`."""

    weights: np.ndarray
    seed: int

    @cached_property
    def stacked(self) -> np.ndarray:
        """The S heads side by side `(D + 1, S*K)`, column s*K + k = W_s[k]: logits of all
        samples for a chunk are then ONE `(n, D+1) x (D+1, S*K)` matmul. Built once per draw."""
        num_samples, num_classes, width = self.weights.shape
        return np.ascontiguousarray(self.weights.transpose(2, 0, 1).reshape(width, num_samples * num_classes))
