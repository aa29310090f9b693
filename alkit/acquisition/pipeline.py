"""Score a pool in chunks with memory bounded by one chunk of `(S, n, K)` probabilities.

The caller supplies `predict_chunk(start, stop) -> probs (S, stop - start, K)`, built from
posterior samples drawn ONCE (`Posterior.sample_weights`), and, for EPIG, the target probs
`(S, M, K)` from the same samples. Sharing the draws across chunks and targets is what
keeps EPIG from collapsing into BALD.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from alkit.acquisition.scores import get_scorer, parallel_for, random_scores
from alkit.errors import InputError

DEFAULT_CHUNK_SIZE = 4096
# Items per predict_logits call on the logits fast path: 128 x S=64 x K=100 logits = 3.3 MB,
# so the sampled-head matmul's output is still in cache when the scorer reads it.
LOGITS_CHUNK_SIZE = 128

PredictChunk = Callable[[int, int], np.ndarray]  # (start, stop) -> probs (S, stop - start, K)
PredictLogits = Callable[[int, int], object]  # (start, stop) -> logits (S, stop - start, K), array or tensor


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


def score_logits_in_chunks(
    predict_logits: PredictLogits,
    num_items: int,
    scorer_name: str,
    chunk_size: int = LOGITS_CHUNK_SIZE,
    workers: int | None = None,
) -> np.ndarray:
    """Scores `(N,)` float64 from sampled LOGITS, chunk by chunk: the fast path.

    `predict_logits(start, stop)` returns logits `(S, n, K)` of the S shared samples (any
    strides: an `(n, S, K)` buffer from one `(n, D) x (D, S*K)` matmul against the stacked
    sampled heads, seen as `(S, n, K)`, is read without a copy). No softmax is materialised and
    no per-element log is taken (see `scores._logit_summaries`). Keep `chunk_size` small (cache
    sized: n * S * K floats of ~1-2 MB); the scorer must have a `logits_function` (entropy,
    least_confidence, margin, bald). EPIG needs probabilities: use `score_in_chunks`.
    Chunks run on `workers` threads (default torch's thread count, see `scores.parallel_for`),
    so `predict_logits` must be thread-safe (pure functions of the shared samples are).
    """
    spec = get_scorer(scorer_name)
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    if spec.logits_function is None:
        raise InputError(f"scorer {scorer_name!r} has no logits fast path; use score_in_chunks with probabilities")
    scores = np.empty(num_items, dtype=np.float64)

    def score_chunk(start: int) -> None:
        stop = min(start + chunk_size, num_items)
        logits = predict_logits(start, stop)
        if logits.shape[-2] != stop - start:
            raise InputError(
                f"predict_logits({start}, {stop}) returned shape {tuple(logits.shape)}; expected (S, {stop - start}, K)"
            )
        scores[start:stop] = spec.logits_function(logits)

    parallel_for(score_chunk, range(0, num_items, chunk_size), workers=workers)
    return scores


def top_candidates(values: np.ndarray, keep: int) -> np.ndarray:
    """Indices (ascending) of the `keep` largest `values`: a pre-filter's candidate set.

    Used to restrict an expensive sampled score to the items a cheap score ranks highest,
    e.g. BALD or EPIG on the top items by analytic predictive entropy (BALD <= H[pbar], so
    items with a low entropy cannot have a high BALD). Measure the recall of the expensive
    score's top-B against an unfiltered run before trusting a given `keep`.
    """
    values = np.asarray(values)
    if keep >= values.shape[0]:
        return np.arange(values.shape[0])
    if keep < 1:
        raise InputError(f"keep must be >= 1, got {keep}")
    return np.sort(np.argpartition(-values, keep - 1)[:keep])
