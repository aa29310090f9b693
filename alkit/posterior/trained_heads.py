"""Shared pieces of the trained-head posteriors on cached embeddings (`ensemble`, `mimo`, `hetsngp`).

All three read the same head inputs as the Laplace head (`head_inputs.prepare_head_inputs`
for training, `head_inputs.head_inputs` for scoring): unit-normalised embeddings, centred and
scaled by `input_standardisation` (estimated from the pool), plus a bias column, and the same
prior mean W_0 (the zero-shot classifier written for those inputs, or zero without class
prompts). What differs is how the shared samples are made: ensemble
members, MIMO subnetworks, GP posterior draws.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from alkit.errors import InputError


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
