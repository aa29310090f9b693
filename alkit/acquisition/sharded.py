"""Batch selection over a pool scored in shards (`alkit select --engine ray`), equal to the
selection over the whole pool.

Each shard is scored apart and sends back only its first `count` items in the GLOBAL draw
order of the batch mode: for `top` the highest scores (ties to the lower id), for `power` and
`softmax` the largest Gumbel-perturbed keys, where an item's key is a function of (its score,
the seed, its image id) alone (`batch.gumbel_noise`), never of its position. An item among the
first B of the whole pool has fewer than B items ahead of it in the pool, hence in its shard,
so the union of the shards' first B holds the pool's first B, in the same order once the union
is ranked by the same keys (`merged_draw_order`). The merged batch is therefore exactly the
batch of the local engine, for any number of shards.

- `softrank` keys by the GLOBAL rank of a score, which no shard knows: its shards send every
  (id, score) and the batch is drawn in the driver over all of them (exact, O(N) transfer).
- Near-duplicate suppression walks the draw order past suppressed items: the shards send
  their first `ORDER_OVERSAMPLE * B + ORDER_SLACK`, and when suppression leaves fewer than B
  the driver asks every shard for `ORDER_GROWTH` times more, up to the whole pool
  (`batch.suppress_along_order`, the same loop the local engine runs): same batch.
- Joint modes (BatchBALD) choose from the samples' joint probabilities of a shortlist, not
  from per-item keys: they are not sharded (`alkit select` refuses `--engine ray` with them).

Scores are clipped at zero before keying (`nonnegative`), as the local engine does; the
scores reported are the unclipped ones.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from alkit.acquisition.batch import BATCH_MODES, select_batch, suppress_along_order
from alkit.acquisition.checks import check_budget
from alkit.errors import InputError

ShardPart = tuple[np.ndarray, np.ndarray]  # (image ids, scores) of a shard's first items in draw order


def nonnegative(scores: np.ndarray) -> np.ndarray:
    """Scores clipped at 0 (round-off below zero: BALD, EPIG are >= 0): what score batch modes key on."""
    return np.clip(scores, 0.0, None)


def _sharded_mode(mode: str):
    spec = BATCH_MODES.get(mode)
    if spec.joint:
        raise InputError(
            f"batch mode {mode!r} chooses jointly from posterior samples and is not sharded; "
            "use --engine local with it, or --batch-mode top, power, softmax or softrank"
        )
    return spec


def shard_draw_order(scores: np.ndarray, item_ids: np.ndarray, count: int, mode: str, seed: int, beta: float) -> np.ndarray:
    """Positions of a shard's first `count` items in the global draw order of `mode`; every
    position (any order) for a mode whose keys need the whole pool (softrank)."""
    spec = _sharded_mode(mode)
    size = len(scores)
    if not spec.local_keys or size == 0:
        return np.arange(size, dtype=np.int64)
    return select_batch(nonnegative(scores), min(count, size), mode=mode, seed=seed, beta=beta, item_ids=item_ids)


def merged_draw_order(parts: Sequence[ShardPart], count: int, mode: str, seed: int, beta: float) -> ShardPart:
    """The first `count` (ids, scores) of the pool's draw order from the shards' parts."""
    ids = np.concatenate([np.asarray(p[0], dtype=np.int64) for p in parts])
    scores = np.concatenate([np.asarray(p[1], dtype=np.float64) for p in parts])
    by_id = np.argsort(ids, kind="stable")
    ids, scores = ids[by_id], scores[by_id]
    positions = select_batch(nonnegative(scores), min(count, len(ids)), mode=mode, seed=seed, beta=beta, item_ids=ids)
    return ids[positions], scores[positions]


def select_from_shards(
    shard_orders: Callable[[int], Sequence[ShardPart]], num_items: int, budget: int, mode: str, seed: int,
    beta: float, threshold: float | None = None, rows_of_ids: Callable[[np.ndarray], np.ndarray] | None = None,
) -> ShardPart:
    """The batch `(ids (B,), scores (B,))` in draw order, from shards that together hold
    `num_items` scored items; `shard_orders(count)` returns every shard's `shard_draw_order`
    part for `count`. With `threshold`, near-duplicates are suppressed (`rows_of_ids(ids)` gives
    their embeddings) and fewer than B come back only when fewer survive in the whole pool."""
    _sharded_mode(mode)
    check_budget(budget, num_items)
    seen: dict[int, float] = {}

    def order_prefix(count: int) -> np.ndarray:
        ids, scores = merged_draw_order(shard_orders(count), count, mode, seed, beta)
        seen.update(zip(ids.tolist(), scores.tolist()))
        return ids

    if threshold is None:
        chosen = order_prefix(budget)
    else:
        if rows_of_ids is None:
            raise InputError("near-duplicate suppression needs rows_of_ids(ids) -> embeddings")
        chosen = suppress_along_order(order_prefix, num_items, rows_of_ids, budget, threshold)
    return chosen, np.array([seen[int(i)] for i in chosen], dtype=np.float64)
