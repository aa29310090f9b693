"""Shared pieces of the trained-head posteriors on cached embeddings (`ensemble`, `mimo`, `hetsngp`).

All three read the same head inputs as the Laplace head: unit-normalised embeddings, centred
and scaled by `laplace_head.input_standardisation` (estimated from the pool), plus a bias
column, and the same prior mean W_0 (the zero-shot classifier written for those inputs, or
zero without class prompts). What differs is how the shared samples are made: ensemble
members, MIMO subnetworks, GP posterior draws.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from alkit.errors import InputError, StateError
from alkit.posterior.laplace_head import augment, input_standardisation, prior_mean


@dataclass(frozen=True)
class HeadInputs:
    """Validated training inputs of a trained head."""

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


def head_inputs(x, dim: int, input_mean: np.ndarray | None, input_scale: float, dtype=np.float32) -> np.ndarray:
    """[(x/|x| - mu)/sigma; 1] `(N, D + 1)` for scoring; InputError on a wrong width or bad rows."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise InputError(f"embeddings have shape {x.shape}; this posterior expects (N, {dim})")
    return augment(x, input_mean, input_scale, dtype)


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



@contextmanager
def one_thread():
    """Run small training loops with one BLAS / torch thread: hundreds of small matmuls, where
    multi-threaded BLAS on a loaded 2-core machine spins far slower (as in the Laplace head)."""
    import torch
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)
