"""Batch selectors: Plackett-Luce distribution, seeding, near-duplicate suppression, BatchBALD."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from alkit.acquisition import batch, batchbald
from alkit.errors import InputError, StateError, UnknownNameError

SCORES_4 = np.array([0.1, 0.2, 0.3, 0.4])
NUM_DRAWS = 20_000


def plackett_luce_pair_probs(weights) -> dict[tuple[int, int], float]:
    """P(first = i, second = j) of sequential sampling without replacement, by enumeration."""
    total = sum(weights)
    return {
        (i, j): weights[i] / total * weights[j] / (total - weights[i])
        for i in range(len(weights))
        for j in range(len(weights))
        if i != j
    }


def drawn_pair_counts(selector, beta: float, num_draws: int) -> dict[tuple[int, int], int]:
    counts: dict[tuple[int, int], int] = {}
    for seed in range(num_draws):
        first, second = selector(SCORES_4, 2, seed=seed, beta=beta)
        counts[(int(first), int(second))] = counts.get((int(first), int(second)), 0) + 1
    return counts


@pytest.mark.parametrize(
    "selector, beta, weights, num_draws",
    [
        (batch.power, 1.0, [0.1, 0.2, 0.3, 0.4], NUM_DRAWS),
        (batch.power, 2.0, [0.01, 0.04, 0.09, 0.16], NUM_DRAWS // 2),
        (batch.softmax, 5.0, [math.exp(5 * s) for s in SCORES_4], NUM_DRAWS // 2),
        (batch.softrank, 1.0, [1 / 4, 1 / 3, 1 / 2, 1 / 1], NUM_DRAWS // 2),  # rank 1 = highest score
    ],
)
def test_gumbel_top_matches_plackett_luce(selector, beta, weights, num_draws):
    """Ordered pairs (first, second) of B=2 draws from N=4, one seed per draw."""
    expected = plackett_luce_pair_probs(weights)
    counts = drawn_pair_counts(selector, beta, num_draws)
    pairs = sorted(expected)
    observed = [counts.get(pair, 0) for pair in pairs]
    assert sum(observed) == num_draws  # never a repeated index
    result = chisquare(observed, [expected[p] * num_draws for p in pairs])
    assert result.pvalue > 1e-3
    # The test has power: the same draws reject uniform sampling without replacement.
    assert chisquare(observed, [num_draws / len(pairs)] * len(pairs)).pvalue < 1e-6


def test_top_is_sorted_descending_with_lower_index_on_ties():
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.9])
    np.testing.assert_array_equal(batch.top(scores, 4), [1, 4, 0, 2])


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank", "top"])
def test_same_seed_same_batch_and_prefix_consistency(mode):
    scores = np.random.default_rng(0).uniform(0, 1, size=200)
    small = batch.select_batch(scores, 10, mode=mode, seed=3)
    np.testing.assert_array_equal(small, batch.select_batch(scores, 10, mode=mode, seed=3))
    np.testing.assert_array_equal(batch.select_batch(scores, 30, mode=mode, seed=3)[:10], small)
    assert len(set(small.tolist())) == 10


@pytest.mark.parametrize("mode", ["power", "softmax", "softrank"])
def test_different_seeds_usually_give_different_batches(mode):
    scores = np.random.default_rng(1).uniform(0, 1, size=200)
    batches = {tuple(sorted(batch.select_batch(scores, 10, mode=mode, seed=s))) for s in range(10)}
    assert len(batches) >= 9


def test_large_beta_recovers_top_and_zero_scores_come_last():
    scores = np.random.default_rng(2).uniform(0, 1, size=50)
    np.testing.assert_array_equal(batch.softmax(scores, 5, seed=0, beta=1e6), batch.top(scores, 5))
    with_zeros = np.array([0.0, 0.3, 0.0, 0.5, 0.0, 0.2])
    for seed in range(20):
        assert set(batch.power(with_zeros, 3, seed=seed)) == {1, 3, 5}


def test_budget_errors():
    with pytest.raises(StateError, match="budget 6 is larger than the 5"):
        batch.power(np.ones(5), 6)
    with pytest.raises(StateError, match="at most 5"):
        batchbald.batchbald(np.full((2, 5, 3), 1 / 3), 6)
    with pytest.raises(InputError, match="softmax or softrank"):
        batch.power(np.array([0.2, -0.1]), 1)
    with pytest.raises(InputError, match="NaN"):
        batch.softmax(np.array([0.2, np.nan]), 1)
    with pytest.raises(UnknownNameError, match="power, softmax, softrank, top"):
        batch.select_batch(np.ones(3), 1, mode="gumbel")
    assert batch.power(np.ones(3), 0).shape == (0,)


# ---- near-duplicate suppression --------------------------------------------------------


def ref_greedy_without_duplicates(order, embeddings, budget, threshold) -> list[int]:
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    kept: list[int] = []
    for i in order:
        if len(kept) == budget:
            break
        if all(float(unit[i] @ unit[j]) < threshold for j in kept):
            kept.append(int(i))
    return kept


@settings(max_examples=40, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(1, 40),
    st.integers(2, 6),
    st.integers(0, 12),
    st.floats(-0.2, 0.99),
)
def test_near_duplicate_suppression_never_keeps_close_pairs(seed, num_items, dim, budget, threshold):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((num_items, dim))
    copies = base[rng.integers(num_items, size=num_items // 2)] + 1e-3 * rng.standard_normal((num_items // 2, dim))
    embeddings = np.vstack([base, copies])  # planted near-duplicates
    order = rng.permutation(embeddings.shape[0])
    kept = batch.select_without_near_duplicates(order, embeddings, budget, threshold)
    unit = embeddings[kept] / np.linalg.norm(embeddings[kept], axis=1, keepdims=True)
    cosines = unit @ unit.T - 2 * np.eye(len(kept))
    assert len(kept) <= budget and len(set(kept.tolist())) == len(kept)
    assert len(kept) < 2 or cosines.max() < threshold + 1e-12
    assert kept.tolist() == ref_greedy_without_duplicates(order, embeddings, budget, threshold)


def test_diverse_batch_replaces_duplicates_with_later_draws():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((30, 8))
    embeddings = np.vstack([base, base + 1e-4])  # item i and i + 30 are duplicates
    scores = rng.uniform(0.1, 1, size=60)
    chosen = batch.select_diverse_batch(scores, embeddings, 20, threshold=0.99, seed=4)
    assert len(chosen) == 20 and len({int(i) % 30 for i in chosen}) == 20
    # Only 30 distinct directions exist: asking for 40 returns the 30 survivors.
    assert len(batch.select_diverse_batch(scores, embeddings, 40, threshold=0.99, seed=4)) == 30


# ---- BatchBALD -------------------------------------------------------------------------


def tiny_probs(seed: int, num_samples=8, num_items=5, num_classes=3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((num_samples, num_items, num_classes)) * 2 + rng.standard_normal((1, num_items, num_classes))
    exps = np.exp(logits)
    return exps / exps.sum(axis=2, keepdims=True)


def ref_joint_mutual_information(probs, items) -> float:
    """I(y_A; theta) by enumerating every label configuration of A with plain loops."""
    num_samples, _, num_classes = probs.shape
    joint_entropy = 0.0
    for config in itertools.product(range(num_classes), repeat=len(items)):
        p = sum(math.prod(probs[k, i, c] for i, c in zip(items, config)) for k in range(num_samples)) / num_samples
        joint_entropy -= p * math.log(p) if p > 0 else 0.0
    conditional = sum(
        -sum(probs[k, i, c] * math.log(probs[k, i, c]) for c in range(num_classes)) / num_samples
        for i in items
        for k in range(num_samples)
    )
    return joint_entropy - conditional


def ref_greedy_batchbald(probs, budget) -> list[int]:
    chosen: list[int] = []
    for _ in range(budget):
        gains = {i: ref_joint_mutual_information(probs, chosen + [i]) for i in range(probs.shape[1]) if i not in chosen}
        chosen.append(max(gains, key=gains.get))
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("budget", [2, 3])
def test_batchbald_exact_matches_brute_force_greedy(seed, budget):
    probs = tiny_probs(seed)
    chosen = batchbald.batchbald(probs, budget, num_configs_exact_limit=10_000)
    assert chosen.tolist() == ref_greedy_batchbald(probs, budget)
    assert batchbald.joint_mutual_information(probs, chosen) == pytest.approx(
        ref_joint_mutual_information(probs, chosen.tolist()), rel=1e-10
    )


def test_batchbald_first_pick_is_top_bald():
    from alkit.acquisition.scores import bald

    probs = tiny_probs(3, num_items=12)
    assert batchbald.batchbald(probs, 1)[0] == int(np.argmax(bald(probs)))


def test_sampled_joint_entropy_approximates_exact():
    probs = tiny_probs(4, num_samples=16, num_items=6, num_classes=3)
    chosen = [1, 4]
    exact_configs = np.ones((16, 1))
    for item in chosen:
        exact_configs = (exact_configs[:, :, None] * probs[:, item, None, :]).reshape(16, -1)
    exact = batchbald._exact_joint_entropies(exact_configs, probs)
    sampled_configs = batchbald._sample_config_probs(probs, chosen, 20_000, np.random.default_rng(0))
    sampled = batchbald._sampled_joint_entropies(sampled_configs, probs)
    np.testing.assert_allclose(sampled, exact, atol=0.03)


def test_sampled_batchbald_reaches_nearly_the_exact_joint_information():
    probs = tiny_probs(5, num_samples=16, num_items=10, num_classes=3)
    exact_batch = batchbald.batchbald(probs, 4, num_configs_exact_limit=10_000)
    sampled_batch = batchbald.batchbald(probs, 4, num_configs_exact_limit=1, num_sampled_configs=5_000, seed=1)
    assert len(set(sampled_batch.tolist())) == 4
    exact_information = batchbald.joint_mutual_information(probs, exact_batch)
    sampled_information = batchbald.joint_mutual_information(probs, sampled_batch)
    assert sampled_information == pytest.approx(exact_information, abs=0.03)


# ---- batch modes as registered pieces --------------------------------------------------


def test_batch_mode_registry_lists_batchbald_as_a_joint_mode():
    assert batch.BATCH_MODES.names() == ["batchbald", "power", "softmax", "softrank", "top"]
    assert [name for name in batch.BATCH_MODES if batch.BATCH_MODES.get(name).joint] == ["batchbald"]
    assert "BatchBALD" in batch.BATCH_MODES.describe("batchbald")


def test_batchbald_mode_is_greedy_batchbald_over_the_top_scored_shortlist(monkeypatch):
    """select_batch("batchbald") == batchbald() run by hand on the best-scored items, whose
    probabilities are asked for in ascending position order."""
    monkeypatch.setattr(batchbald, "SHORTLIST", 6)
    probs = tiny_probs(3, num_samples=16, num_items=20, num_classes=3)
    scores = np.random.default_rng(1).uniform(size=20)
    asked = []

    def sample_probs(positions):
        asked.append(positions.copy())
        return probs[:, positions]

    chosen = batch.select_batch(scores, 3, mode="batchbald", seed=2, sample_probs=sample_probs)
    shortlist = np.sort(np.argsort(-scores)[:6])
    np.testing.assert_array_equal(asked[0], shortlist)
    np.testing.assert_array_equal(chosen, shortlist[batchbald.batchbald(probs[:, shortlist], 3, seed=2)])
    assert set(chosen.tolist()) <= set(shortlist.tolist()) and len(set(chosen.tolist())) == 3


def test_joint_mode_without_posterior_samples_says_what_to_use():
    with pytest.raises(InputError, match="needs a posterior"):
        batch.select_batch(np.ones(4), 2, mode="batchbald")


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 12), st.sampled_from(["top", "power", "softrank"]))
def test_diverse_batch_loading_rows_lazily_equals_suppression_over_the_full_order(seed, budget, mode):
    """The step-wise extended draw order (rows loaded on demand) gives the batch that greedy
    suppression over all N draws gives."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((40, 4))
    embeddings = np.vstack([base, base[:30] + 1e-3 * rng.standard_normal((30, 4))])  # many duplicates
    scores = rng.uniform(0.01, 1, size=len(embeddings))
    loaded = []

    def rows(positions):
        loaded.append(len(positions))
        return embeddings[positions]

    lazy = batch.select_diverse_batch(scores, rows, budget, 0.95, mode=mode, seed=seed)
    full_order = batch.select_batch(scores, len(scores), mode=mode, seed=seed)
    expected = full_order[batch.select_without_near_duplicates(np.arange(len(scores)), embeddings[full_order], budget, 0.95)]
    np.testing.assert_array_equal(lazy, expected)
    assert loaded[0] == min(len(scores), batch.ORDER_OVERSAMPLE * budget + batch.ORDER_SLACK)
