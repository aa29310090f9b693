"""Score a pool in chunks with memory bounded by one chunk of `(S, n, K)` probabilities.

The caller supplies `predict_chunk(start, stop) -> probs (S, stop - start, K)`, built from
posterior samples drawn ONCE (`Posterior.sample_weights`), and, for EPIG, the target probs
`(S, M, K)` from the same samples. Sharing the draws across chunks and targets is what
keeps EPIG from collapsing into BALD.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from alkit.acquisition.scores import get_scorer, random_scores
from alkit.errors import InputError

DEFAULT_CHUNK_SIZE = 4096

PredictChunk = Callable[[int, int], np.ndarray]  # (start, stop) -> probs (S, stop - start, K)


def score_in_chunks(
    predict_chunk: PredictChunk,
    num_items: int,
    scorer_name: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    targets_probs=None,
    seed: int = 0,
) -> np.ndarray:
    """Scores `(N,)` float64 of the named scorer over items [0, num_items), chunk by chunk.

    `random` never calls `predict_chunk`. `epig` requires `targets_probs (S, M, K)`.
    """
    spec = get_scorer(scorer_name)
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    if spec.function is random_scores:
        return random_scores(num_items, seed)
    if spec.needs_targets and targets_probs is None:
        raise InputError(f"scorer {scorer_name!r} needs target probs (S, M, K); mark a target split or pass targets")
    scores = np.empty(num_items, dtype=np.float64)
    for start in range(0, num_items, chunk_size):
        stop = min(start + chunk_size, num_items)
        probs = predict_chunk(start, stop)
        if probs.shape[-2] != stop - start:
            raise InputError(
                f"predict_chunk({start}, {stop}) returned shape {tuple(probs.shape)}; expected (S, {stop - start}, K)"
            )
        scores[start:stop] = spec.score(probs, probs_target=targets_probs, seed=seed)
    return scores
