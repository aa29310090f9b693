"""Batch selectors: scores `(N,)` + budget B -> indices `(B,)`, in draw order.

Top-B of a single-point score fills a batch with near-duplicates. The default is stochastic
batch acquisition (Kirsch et al., TMLR 2023): B draws without replacement with
P(i) proportional to s_i^beta (`power`), exp(beta s_i) (`softmax`) or rank_i^-beta
(`softrank`), sampled in one pass by the Gumbel-top-B trick: add independent Gumbel noise
to the log weights and keep the B largest keys. The resulting ordered batch has exactly the
Plackett-Luce (sequential sampling without replacement) distribution. beta is a coldness:
beta -> infinity recovers top-B, beta = 0 is uniform random.

Seeds: the Gumbel keys depend only on (seed, N), so with one seed a larger budget returns
an extension of the smaller batch (prefix-consistent) - which is what
`select_diverse_batch` relies on when it extends the candidate order step by step.

`batchbald` (greedy joint mutual information, `alkit.acquisition.batchbald`) is registered
here too: a joint mode, it chooses from the posterior samples' probabilities of a shortlist,
so `select_batch` needs a `sample_probs` function for it.

Near-duplicates, one rule everywhere (`is_near_duplicate`): two items whose cosine similarity
is >= the threshold are near-duplicates. `select_diverse_batch` (`alkit select`) keeps a batch
free of them; `alkit dedup` clusters them (`alkit.retrieval.dedup`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from alkit.acquisition.batchbald import SHORTLIST, batchbald_batch, shortlist_size
from alkit.acquisition.checks import check_budget
from alkit.arrays import l2_normalise
from alkit.errors import InputError
from alkit.registry import Registry

DEFAULT_MODE = "power"
DEFAULT_BETA = 1.0
ORDER_OVERSAMPLE = 4  # candidates drawn per budget slot before near-duplicate suppression ...
ORDER_SLACK = 64  # ... plus this many, so small budgets still see a few spare draws
ORDER_GROWTH = 4  # the candidate order grows by this factor while suppression leaves < B items



def _validated_scores(scores, budget: int) -> np.ndarray:
    """Boundary check shared by every selector."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1:
        raise InputError(f"scores must have shape (N,), got {values.shape}")
    check_budget(budget, values.shape[0])
    if np.isnan(values).any():
        raise InputError(f"scores hold {int(np.isnan(values).sum())} NaN values; check the posterior")
    return values


def _largest_first(keys: np.ndarray, budget: int) -> np.ndarray:
    """Indices of the `budget` largest keys, largest first (O(N + B log B))."""
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    if budget < keys.shape[0]:
        candidates = np.argpartition(-keys, budget - 1)[:budget]
    else:
        candidates = np.arange(keys.shape[0])
    return candidates[np.argsort(-keys[candidates], kind="stable")].astype(np.int64)


def gumbel_top(log_weights: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """B draws without replacement with P proportional to exp(log_weights), in draw order.

    Gumbel-top-B: argsort(log_weights + Gumbel noise)[:B] is a Plackett-Luce sample.
    Items with weight 0 (log weight -inf) are never drawn ahead of positive-weight ones.
    """
    noise = np.random.default_rng(seed).gumbel(size=log_weights.shape[0])
    return _largest_first(log_weights + noise, budget)


def top(scores, budget: int, seed: int = 0, beta: float = DEFAULT_BETA) -> np.ndarray:
    """The B highest scores, highest first; ties go to the lower index. seed/beta unused."""
    values = _validated_scores(scores, budget)
    return np.argsort(-values, kind="stable")[:budget].astype(np.int64)


def power(scores, budget: int, seed: int = 0, beta: float = DEFAULT_BETA) -> np.ndarray:
    """Stochastic batch with P(i) proportional to s_i^beta; scores must be >= 0.

    Zero scores get a floor weight (log weight ~ -708): they are drawn only after every
    positive-score item, in uniformly random order among themselves.
    """
    values = _validated_scores(scores, budget)
    if values.size and values.min() < 0:
        raise InputError(
            f"power selection needs scores >= 0, got min {values.min():.4g}; use --batch-mode softmax or softrank"
        )
    log_weights = beta * np.log(np.maximum(values, np.finfo(np.float64).tiny))
    return gumbel_top(log_weights, budget, seed)


def softmax(scores, budget: int, seed: int = 0, beta: float = DEFAULT_BETA) -> np.ndarray:
    """Stochastic batch with P(i) proportional to exp(beta s_i) (scores of any sign)."""
    values = _validated_scores(scores, budget)
    return gumbel_top(beta * values, budget, seed)


def ranks_descending(scores: np.ndarray) -> np.ndarray:
    """Rank of every score, 1 = highest; ties go to the lower index (`(N,)` int64)."""
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, scores.shape[0] + 1)
    return ranks


def softrank(scores, budget: int, seed: int = 0, beta: float = DEFAULT_BETA) -> np.ndarray:
    """Stochastic batch with P(i) proportional to rank_i^-beta (only the order of scores matters)."""
    values = _validated_scores(scores, budget)
    log_weights = -beta * np.log(ranks_descending(values).astype(np.float64))
    return gumbel_top(log_weights, budget, seed)


@dataclass(frozen=True)
class BatchMode:
    """A registered batch mode. Score modes map `(scores, budget, seed, beta)` to indices;
    joint modes also take `sample_probs(positions) -> (S, n, K)` (they need a posterior)."""

    function: Callable[..., np.ndarray]
    description: str
    joint: bool = False
    note: Callable[[int, int], str] | None = None  # (candidates, budget) -> what the mode tells the user


BATCH_MODES: Registry[BatchMode] = Registry("batch mode")
for _name, _mode in {
    "top": BatchMode(top, "the B highest scores (deterministic; picks near-duplicates)"),
    "power": BatchMode(power, "sample without replacement, P proportional to score^beta (default)"),
    "softmax": BatchMode(softmax, "sample without replacement, P proportional to exp(beta * score)"),
    "softrank": BatchMode(softrank, "sample without replacement, P proportional to rank^-beta"),
    "batchbald": BatchMode(
        batchbald_batch, f"greedy joint mutual information (BatchBALD) over the top {SHORTLIST} by the strategy's score",
        joint=True, note=lambda candidates, budget: f"BatchBALD chose {budget} of the top {shortlist_size(candidates, budget)} items",
    ),
}.items():
    BATCH_MODES.register(_name, _mode, _mode.description)


def select_batch(
    scores, budget: int, mode: str = DEFAULT_MODE, seed: int = 0, beta: float = DEFAULT_BETA,
    sample_probs: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """Select B indices by the named batch mode (`BATCH_MODES`), in draw order.

    Joint modes (`batchbald`) need `sample_probs(positions) -> (S, n, K)`."""
    spec = BATCH_MODES.get(mode)
    if not spec.joint:
        return spec.function(scores, budget, seed=seed, beta=beta)
    if sample_probs is None:
        raise InputError(
            f"batch mode {mode!r} chooses from posterior samples and needs a posterior; "
            "use --batch-mode top, power, softmax or softrank with this strategy"
        )
    return spec.function(_validated_scores(scores, budget), budget, sample_probs, seed=seed, beta=beta)


def is_near_duplicate(similarity, threshold: float):
    """The one near-duplicate rule: cosine similarity >= threshold (elementwise on arrays)."""
    return similarity >= threshold


def select_without_near_duplicates(
    order, embeddings: np.ndarray, budget: int, threshold: float
) -> np.ndarray:
    """Walk candidates in `order` and keep each one that is not a near-duplicate
    (`is_near_duplicate`: cosine >= `threshold`) of an item already kept, until B are kept.

    `order` is a 1-D array of candidate indices, most preferred first: e.g. `top(scores, N)`
    or a stochastic `power(scores, N, seed)` (the same seed gives the same ordering).
    `embeddings (N, D)` need not be unit norm: rows are normalised as they are visited.
    Each candidate costs one `(kept, D) x (D,)` product against the kept matrix.

    Guarantee: no two returned items have cosine >= threshold, and an item is dropped only
    for a better-placed kept one. If fewer than B candidates survive (the order is exhausted),
    the shorter array of survivors is returned: the caller decides whether to report it,
    raise the threshold or top up.
    """
    candidates = np.asarray(order, dtype=np.int64)
    vectors = np.asarray(embeddings)
    if vectors.ndim != 2:
        raise InputError(f"embeddings must have shape (N, D), got {vectors.shape}")
    if budget < 0:
        raise InputError(f"budget must be >= 0, got {budget}")
    if candidates.size and (candidates.min() < 0 or candidates.max() >= vectors.shape[0]):
        raise InputError(f"order holds indices outside [0, {vectors.shape[0]}); pass positions into embeddings")
    kept_vectors = np.empty((budget, vectors.shape[1]), dtype=np.float64)  # (B, D)
    kept: list[int] = []
    for index in candidates:
        if len(kept) == budget:
            break
        vector = l2_normalise(vectors[index].astype(np.float64))
        if kept and is_near_duplicate(float(np.max(kept_vectors[: len(kept)] @ vector)), threshold):
            continue
        kept_vectors[len(kept)] = vector
        kept.append(int(index))
    return np.asarray(kept, dtype=np.int64)


def select_diverse_batch(
    scores,
    embeddings: np.ndarray | Callable[[np.ndarray], np.ndarray],
    budget: int,
    threshold: float,
    mode: str = DEFAULT_MODE,
    seed: int = 0,
    beta: float = DEFAULT_BETA,
) -> np.ndarray:
    """`select_batch` followed by near-duplicate suppression: suppressed items are replaced by
    the next draws of the same batch mode. Returns fewer than B indices only when fewer than
    B items of the whole pool survive.

    `embeddings` is `(N, D)`, or a function `positions (n,) -> rows (n, D)` for pools too large
    to hold: only the first `ORDER_OVERSAMPLE * B + ORDER_SLACK` draws are loaded, and more
    (x `ORDER_GROWTH`) only while suppression leaves fewer than B. The draw order is
    prefix-consistent, so the result equals suppression over the full order of N draws.
    """
    values = _validated_scores(scores, budget)
    num_items = values.shape[0]
    rows_of = embeddings if callable(embeddings) else np.asarray(embeddings).__getitem__
    draws = min(num_items, ORDER_OVERSAMPLE * budget + ORDER_SLACK)
    while True:
        order = select_batch(values, draws, mode=mode, seed=seed, beta=beta)
        kept = select_without_near_duplicates(np.arange(len(order)), rows_of(order), budget, threshold)
        if len(kept) == budget or draws == num_items:
            return order[kept]
        draws = min(num_items, draws * ORDER_GROWTH)
