"""Score a pool in chunks with memory bounded by one chunk of `(S, n, K)` probabilities.

`score_pool` is what `alkit select` runs: features loaded chunk by chunk, each chunk scored
by `score_features` (analytic moments, the logits fast path, or probabilities).

The caller supplies `predict_chunk(start, stop) -> probs (S, stop - start, K)`, built from
posterior samples drawn ONCE (`Posterior.sample_weights`), and, for EPIG, the target probs
`(S, M, K)` from the same samples. Sharing the draws across chunks and targets is what
keeps EPIG from collapsing into BALD.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from alkit.acquisition.scores import ScorerSpec, get_scorer
from alkit.acquisition.tensors import parallel_for
from alkit.arrays import chunk_slices
from alkit.errors import InputError, IntegrityError

DEFAULT_CHUNK_SIZE = 4096
# Items per predict_logits call on the logits fast path: 128 x S=64 x K=100 logits = 3.3 MB,
# so the sampled-head matmul's output is still in cache when the scorer reads it.
LOGITS_CHUNK_SIZE = 128

# Pool items whose features are loaded (and scored) at once by `score_pool`: 8192 x 512 float32
# features = 16 MB, and the sampled probabilities of one chunk stay a few hundred MB at most.
POOL_CHUNK_SIZE = 8192

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
    if not spec.uses_posterior:
        return spec.function(num_items, seed)
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
    scorer_name: str | ScorerSpec,
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
    spec = scorer_name if isinstance(scorer_name, ScorerSpec) else get_scorer(scorer_name)
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


def score_features(spec: ScorerSpec, posterior, x: np.ndarray, weights=None, target_probs=None,
                   sample_logits: Callable | None = None) -> np.ndarray:
    """Scores `(n,)` of one block of features `x (n, D)` under `posterior`.

    In order of preference: the scorer's analytic `moments_function` (no samples), the logits
    fast path when `sample_logits(weights, x)` is given and the scorer has a `logits_function`
    (same scores up to float32 round-off: sampled logits in cache-sized sub-chunks, no softmax
    and no per-element log, sub-chunks on torch's threads), else probabilities: the S shared
    samples' `(S, n, K)` when `weights` are given, the analytic predictive `(1, n, K)` otherwise.
    """
    if spec.moments_function is not None:
        return spec.moments_function(*posterior.logit_moments(x))
    if weights is not None and spec.logits_function is not None and sample_logits is not None:
        return score_logits_in_chunks(lambda a, b: sample_logits(weights, x[a:b]), len(x), spec)
    probs = posterior.predict(x)[None] if weights is None else posterior.sample_probs(weights, x)
    return spec.score(probs, probs_target=target_probs)


def score_pool(spec: ScorerSpec, posterior, load_features: Callable[[np.ndarray], np.ndarray], ids: np.ndarray,
               weights=None, target_probs=None, sample_logits: Callable | None = None,
               chunk_size: int = POOL_CHUNK_SIZE) -> np.ndarray:
    """Scores `(N,)` float64 of the items `ids`, `chunk_size` at a time: `load_features(chunk_ids)`
    returns their features `(n, D)` in the same order; every chunk uses the same `weights`."""
    scores = np.empty(len(ids), dtype=np.float64)
    for part in chunk_slices(len(ids), chunk_size):
        scores[part] = score_features(spec, posterior, load_features(ids[part]), weights, target_probs, sample_logits)
    return scores


@dataclass(frozen=True)
class PoolScoring:
    """Everything that scores pool items, picklable so that it can be shipped once to Ray
    actors (`alkit select --engine ray`): the scorer's name, the posterior, its shared `weights`
    (drawn once, by the driver), EPIG's `target_probs` from those draws, whether to take the
    logits fast path, and the chunk size. Every engine scores through `score`, so an item's
    score depends only on its features and these (and on its chunk: shards are cut at chunk
    boundaries)."""

    strategy: str
    posterior: Any
    weights: Any = None
    target_probs: np.ndarray | None = None
    fast_logits: bool = False
    chunk_size: int = POOL_CHUNK_SIZE

    def score(self, load_features: Callable[[np.ndarray], np.ndarray], ids: np.ndarray) -> np.ndarray:
        """Scores `(N,)` float64 of the items `ids` (`score_pool`)."""
        sample_logits = self.posterior.sample_logits if self.fast_logits else None
        return score_pool(get_scorer(self.strategy), self.posterior, load_features, ids, self.weights,
                          self.target_probs, sample_logits=sample_logits, chunk_size=self.chunk_size)


def non_finite_ids(scores: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Ids of the items whose score is NaN or infinite."""
    return np.asarray(item_ids)[~np.isfinite(scores)]


def raise_non_finite(bad_ids: np.ndarray, total: int, strategy: str) -> None:
    """IntegrityError naming the images with a NaN or infinite score (nothing when there are none)."""
    if len(bad_ids):
        raise IntegrityError(
            f"{len(bad_ids)} of {total} {strategy} scores are not finite (image ids "
            f"{', '.join(str(int(i)) for i in bad_ids[:5])}); their stored vectors are probably "
            "zero or corrupt: re-embed those images (`alkit embed`) or re-import the embeddings"
        )


def check_finite_scores(scores: np.ndarray, item_ids: np.ndarray, strategy: str) -> None:
    """A NaN or infinite score is an error naming the images, never a silent zero."""
    raise_non_finite(non_finite_ids(scores, item_ids), len(scores), strategy)


def promote_samples(weights):
    """The same shared posterior draws in float64 (every float32 array field of the draws'
    dataclass is cast; anything else is returned unchanged)."""
    import dataclasses

    if weights is None or not dataclasses.is_dataclass(weights):
        return weights
    changes = {
        f.name: getattr(weights, f.name).astype(np.float64)
        for f in dataclasses.fields(weights)
        if isinstance(getattr(weights, f.name), np.ndarray) and getattr(weights, f.name).dtype == np.float32
    }
    return dataclasses.replace(weights, **changes) if changes else weights
