"""Batch selectors: scores `(N,)` + budget B -> indices `(B,)`, in draw order.

Top-B of a single-point score can fill a batch with near-duplicates (`alkit select` suppresses
them by cosine; its default is `top`, which won the active-learning suite, see
benchmarks/README.md). The stochastic modes are batch acquisition after Kirsch et al. (TMLR 2023):
B draws without replacement with
P(i) proportional to s_i^beta (`power`), exp(beta s_i) (`softmax`) or rank_i^-beta
(`softrank`), sampled in one pass by the Gumbel-top-B trick: add independent Gumbel noise
to the log weights and keep the B largest keys. The resulting ordered batch has exactly the
Plackett-Luce (sequential sampling without replacement) distribution. beta is a coldness:
beta -> infinity recovers top-B, beta = 0 is uniform random.

Seeds: the Gumbel noise of an item is a hash of (seed, item id) (`gumbel_noise`; the id is
the item's position when no ids are given), never of its position in the array: the same pool
in any row order, or split into shards scored apart (`alkit.acquisition.sharded`,
`alkit select --engine ray`), gets the same keys and so the same batch. With one seed a
larger budget returns an extension of the smaller batch (prefix-consistent) - which is what
`select_diverse_batch` relies on when it extends the candidate order step by step. Ties
(`top`) go to the lower id.

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


def _item_ids(item_ids, count: int) -> np.ndarray:
    """The items' ids `(N,)` int64 (their positions when none are given)."""
    if item_ids is None:
        return np.arange(count, dtype=np.int64)
    ids = np.asarray(item_ids, dtype=np.int64)
    if ids.shape != (count,):
        raise InputError(f"item_ids must have shape ({count},) like the scores, got {ids.shape}")
    return ids


def _largest_first(keys: np.ndarray, budget: int, ids: np.ndarray) -> np.ndarray:
    """Indices of the `budget` largest keys, largest first, ties to the lower id (O(N + B log B))."""
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    if budget < keys.shape[0]:
        threshold = np.partition(keys, keys.shape[0] - budget)[keys.shape[0] - budget]
        candidates = np.flatnonzero(keys >= threshold)  # the B largest and any ties with the B-th
    else:
        candidates = np.arange(keys.shape[0])
    order = np.lexsort((ids[candidates], -keys[candidates]))[:budget]
    return candidates[order].astype(np.int64)


_SPLITMIX_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays: a bijection whose outputs look independent."""
    with np.errstate(over="ignore"):
        z = values + _SPLITMIX_GAMMA
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def gumbel_noise(seed: int, item_ids) -> np.ndarray:
    """Standard Gumbel noise `(N,)` float64, one value per item, a function of (seed, id) only.

    Counter-based (a hash, not a generator stream): an item's noise does not depend on the
    other items, their order or how the pool is sharded. u = 53 hashed bits + 1/2 over 2^53 lies
    strictly inside (0, 1), so -log(-log u) is finite.
    """
    ids = np.asarray(item_ids, dtype=np.int64).astype(np.uint64)
    seed_key = _splitmix64(np.asarray([int(seed) % 2**64], dtype=np.uint64))
    bits = _splitmix64(_splitmix64(ids ^ seed_key))
    uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return -np.log(-np.log(uniform))


def gumbel_top(log_weights: np.ndarray, budget: int, seed: int, item_ids=None) -> np.ndarray:
    """B draws without replacement with P proportional to exp(log_weights), in draw order.

    Gumbel-top-B: argsort(log_weights + Gumbel noise)[:B] is a Plackett-Luce sample; the
    noise comes from (seed, item id) (`gumbel_noise`). Items with weight 0 (log weight -inf)
    are never drawn ahead of positive-weight ones.
    """
    ids = _item_ids(item_ids, log_weights.shape[0])
    return _largest_first(log_weights + gumbel_noise(seed, ids), budget, ids)


def top(scores, budget: int, seed: int = 0, beta: float = DEFAULT_BETA, item_ids=None) -> np.ndarray:
    """The B highest scores, highest first; ties go to the lower id (index). seed/beta unused."""
    values = _validated_scores(scores, budget)
    return _largest_first(values, budget, _item_ids(item_ids, values.shape[0]))


def power(scores, budget: int, seed: int = 0, beta: float = DEFAULT_BETA, item_ids=None) -> np.ndarray:
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
    return gumbel_top(log_weights, budget, seed, item_ids)


def softmax(scores, budget: int, seed: int = 0, beta: float = DEFAULT_BETA, item_ids=None) -> np.ndarray:
    """Stochastic batch with P(i) proportional to exp(beta s_i) (scores of any sign)."""
    values = _validated_scores(scores, budget)
    return gumbel_top(beta * values, budget, seed, item_ids)


def ranks_descending(scores: np.ndarray, item_ids=None) -> np.ndarray:
    """Rank of every score, 1 = highest; ties go to the lower id (index) (`(N,)` int64)."""
    ids = _item_ids(item_ids, scores.shape[0])
    ranks = np.empty(scores.shape[0], dtype=np.int64)
    ranks[np.lexsort((ids, -scores))] = np.arange(1, scores.shape[0] + 1)
    return ranks


def softrank(scores, budget: int, seed: int = 0, beta: float = DEFAULT_BETA, item_ids=None) -> np.ndarray:
    """Stochastic batch with P(i) proportional to rank_i^-beta (only the order of scores matters).

    A rank is global (it counts every item of the pool), so a shard alone cannot key its
    items: sharded selection gathers all of softrank's scores (`BatchMode.local_keys`)."""
    values = _validated_scores(scores, budget)
    log_weights = -beta * np.log(ranks_descending(values, item_ids).astype(np.float64))
    return gumbel_top(log_weights, budget, seed, item_ids)


@dataclass(frozen=True)
class BatchMode:
    """A registered batch mode. Score modes map `(scores, budget, seed, beta)` to indices;
    joint modes also take `sample_probs(positions) -> (S, n, K)` (they need a posterior)."""

    function: Callable[..., np.ndarray]
    description: str
    joint: bool = False
    note: Callable[[int, int], str] | None = None  # (candidates, budget) -> what the mode tells the user
    # True when an item's key is a function of (score, seed, id) alone, so a shard can rank its
    # items by the global draw order without seeing the others (not softrank: ranks are global).
    local_keys: bool = True


BATCH_MODES: Registry[BatchMode] = Registry("batch mode")
for _name, _mode in {
    "top": BatchMode(top, "the B highest scores (deterministic; picks near-duplicates)"),
    "power": BatchMode(power, "sample without replacement, P proportional to score^beta (Kirsch et al. 2023)"),
    "softmax": BatchMode(softmax, "sample without replacement, P proportional to exp(beta * score)"),
    "softrank": BatchMode(softrank, "sample without replacement, P proportional to rank^-beta", local_keys=False),
    "batchbald": BatchMode(
        batchbald_batch, f"greedy joint mutual information (BatchBALD) over the top {SHORTLIST} by the strategy's score",
        joint=True, local_keys=False, note=lambda candidates, budget: f"BatchBALD chose {budget} of the top {shortlist_size(candidates, budget)} items",
    ),
}.items():
    BATCH_MODES.register(_name, _mode, _mode.description)


def select_batch(
    scores, budget: int, mode: str = DEFAULT_MODE, seed: int = 0, beta: float = DEFAULT_BETA,
    sample_probs: Callable[[np.ndarray], np.ndarray] | None = None, item_ids=None,
) -> np.ndarray:
    """Select B indices by the named batch mode (`BATCH_MODES`), in draw order.

    `item_ids (N,)` key the Gumbel noise and break ties (default: the positions). Joint modes
    (`batchbald`) need `sample_probs(positions) -> (S, n, K)`."""
    spec = BATCH_MODES.get(mode)
    if not spec.joint:
        return spec.function(scores, budget, seed=seed, beta=beta, item_ids=item_ids)
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
    item_ids=None,
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
    rows_of = embeddings if callable(embeddings) else np.asarray(embeddings).__getitem__

    def order_prefix(draws: int) -> np.ndarray:
        return select_batch(values, draws, mode=mode, seed=seed, beta=beta, item_ids=item_ids)

    return suppress_along_order(order_prefix, values.shape[0], rows_of, budget, threshold)


def suppress_along_order(
    order_prefix: Callable[[int], np.ndarray], num_items: int, rows_of: Callable[[np.ndarray], np.ndarray],
    budget: int, threshold: float,
) -> np.ndarray:
    """The first B items of a draw order that survive near-duplicate suppression.

    `order_prefix(k)` returns the first k items of the draw order (prefix-consistent: positions
    for `select_diverse_batch`, image ids for sharded selection); `rows_of(items)` their
    embeddings. The first `ORDER_OVERSAMPLE * B + ORDER_SLACK` draws are suppressed; the prefix
    grows x `ORDER_GROWTH` while fewer than B survive, up to all `num_items`. Greedy
    suppression along a prefix keeps the same items as along the full order, so the result does
    not depend on where the prefix stopped."""
    draws = min(num_items, ORDER_OVERSAMPLE * budget + ORDER_SLACK)
    while True:
        order = np.asarray(order_prefix(draws))
        kept = select_without_near_duplicates(np.arange(len(order)), rows_of(order), budget, threshold)
        if len(kept) == budget or draws == num_items:
            return order[kept]
        draws = min(num_items, draws * ORDER_GROWTH)
