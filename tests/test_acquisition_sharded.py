"""Sharded batch selection (`alkit select --engine ray`'s merge) against selection over the
whole pool, and Gumbel keys that follow the image id, not the array position."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from alkit.acquisition import batch, sharded
from alkit.errors import InputError


def _shards(scores, ids, cuts):
    """shard_orders(count) over the pool cut at `cuts`, as the Ray actors answer it."""
    parts = list(zip(np.split(scores, cuts), np.split(ids, cuts)))
    asked = []

    def shard_orders(count, mode, seed, beta):
        asked.append(count)
        out = []
        for part_scores, part_ids in parts:
            positions = sharded.shard_draw_order(part_scores, part_ids, count, mode, seed, beta)
            out.append((part_ids[positions], part_scores[positions]))
        return out

    return shard_orders, asked


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 15), st.sampled_from(["top", "power", "softmax", "softrank"]),
       st.integers(1, 5), st.booleans())
def test_sharded_selection_equals_the_whole_pool(seed, budget, mode, num_shards, dedup):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((60, 4))
    embeddings = np.vstack([base, base[:50] + 1e-3 * rng.standard_normal((50, 4))])  # many near-duplicates
    scores = np.round(rng.uniform(-0.01, 1, size=len(embeddings)), 2)  # ties and round-off below zero
    ids = np.sort(rng.choice(10_000, size=len(scores), replace=False))
    by_id = dict(zip(ids.tolist(), range(len(ids))))
    cuts = np.sort(rng.choice(np.arange(1, len(scores)), size=num_shards - 1, replace=False))
    shard_orders, asked = _shards(scores, ids, cuts)
    threshold = 0.95 if dedup else None
    got_ids, got_scores = sharded.select_from_shards(
        lambda count: shard_orders(count, mode, seed, 1.0), len(scores), budget, mode, seed, 1.0, threshold,
        lambda chosen: embeddings[[by_id[int(i)] for i in chosen]],
    )
    clipped = np.clip(scores, 0, None)
    if dedup:
        local = batch.select_diverse_batch(clipped, embeddings, budget, threshold, mode=mode, seed=seed, item_ids=ids)
    else:
        local = batch.select_batch(clipped, budget, mode=mode, seed=seed, item_ids=ids)
    np.testing.assert_array_equal(got_ids, ids[local])
    np.testing.assert_array_equal(got_scores, scores[local])  # unclipped, as the local engine reports them


def test_shards_are_asked_for_more_while_suppression_leaves_too_few():
    rng = np.random.default_rng(0)
    embeddings = np.repeat(rng.standard_normal((20, 8)), 60, axis=0)  # 20 distinct directions, 60 copies each
    scores = rng.uniform(0.1, 1, size=len(embeddings))
    ids = np.arange(len(scores)) * 3 + 1
    shard_orders, asked = _shards(scores, ids, [400, 800])
    chosen, _ = sharded.select_from_shards(
        lambda count: shard_orders(count, "power", 5, 1.0), len(scores), 25, "power", 5, 1.0, 0.99,
        lambda chosen: embeddings[(np.asarray(chosen) - 1) // 3],
    )
    expected = batch.select_diverse_batch(scores, embeddings, 25, 0.99, mode="power", seed=5, item_ids=ids)
    np.testing.assert_array_equal(chosen, ids[expected])
    assert len(chosen) == 20  # fewer than B survive in the whole pool ...
    first = batch.ORDER_OVERSAMPLE * 25 + batch.ORDER_SLACK
    assert asked == [first, first * batch.ORDER_GROWTH, len(scores)]  # ... so the shards were asked up to all of it


@pytest.mark.parametrize("mode", ["top", "power", "softmax", "softrank"])
def test_keys_follow_the_id_not_the_row(mode):
    rng = np.random.default_rng(3)
    scores = np.round(rng.uniform(0, 1, size=500), 2)  # ties: broken by id
    ids = rng.choice(1_000_000, size=500, replace=False)
    chosen = ids[batch.select_batch(scores, 40, mode=mode, seed=9, item_ids=ids)]
    permutation = rng.permutation(500)
    permuted = ids[permutation][batch.select_batch(scores[permutation], 40, mode=mode, seed=9, item_ids=ids[permutation])]
    np.testing.assert_array_equal(permuted, chosen)
    other_seed = ids[batch.select_batch(scores, 40, mode=mode, seed=10, item_ids=ids)]
    assert mode == "top" or set(other_seed) != set(chosen)


def test_gumbel_noise_is_standard_gumbel():
    """Mean and variance of the hashed noise against the Gumbel law (Euler's gamma, pi^2 / 6)."""
    noise = batch.gumbel_noise(7, np.arange(200_000))
    assert abs(noise.mean() - np.euler_gamma) < 0.01
    assert abs(noise.var() - np.pi**2 / 6) < 0.03
    assert np.corrcoef(noise[:-1], noise[1:])[0, 1] < 0.01  # neighbouring ids look independent


def test_joint_modes_are_not_sharded():
    with pytest.raises(InputError, match="not sharded"):
        sharded.select_from_shards(lambda count: [], 5, 2, "batchbald", 0, 1.0)
