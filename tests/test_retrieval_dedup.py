"""Near-duplicate clusters and batch suppression against brute-force pairwise references
(one rule for both: cosine >= threshold, `alkit.acquisition.batch.is_near_duplicate`)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import unit_rows
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from alkit.acquisition.batch import select_without_near_duplicates
from alkit.errors import InputError
from alkit.retrieval.dedup import near_duplicate_clusters
from alkit.retrieval.index import build_index
from alkit.retrieval.settings import IndexSettings


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def planted_set(seed: int, n_base: int, n_copies: int, noise: float, dim: int = 8):
    """Random unit vectors plus noisy copies of some of them (chains of copies included)."""
    rng = np.random.default_rng(seed)
    vectors = list(unit_rows(rng.standard_normal((n_base, dim))))
    for _ in range(n_copies):
        source = vectors[rng.integers(len(vectors))]  # may copy a copy: transitive chains
        vectors.append(unit_rows((source + noise * rng.standard_normal(dim))[None])[0])
    vectors = np.stack(vectors)
    ids = rng.choice(10**6, size=len(vectors), replace=False).astype(np.int64)
    return ids, vectors


def reference_clusters(ids, vectors, threshold) -> list[list[int]]:
    """All pairs in float64, union-find by plain loops."""
    cosine = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    parent = list(range(len(ids)))

    def root(i):
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(ids)):
        for j in range(i + 1, len(ids)):
            if cosine[i, j] >= threshold:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(ids)):
        groups.setdefault(root(i), []).append(int(ids[i]))
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def far_from_threshold(vectors, threshold, gap=1e-5) -> bool:
    cosine = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    upper = cosine[np.triu_indices(len(vectors), 1)]
    return bool(np.all(np.abs(upper - threshold) > gap))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n_base=st.integers(1, 25), n_copies=st.integers(0, 12),
       noise=st.sampled_from([0.0, 0.02, 0.1, 0.3]), threshold=st.sampled_from([0.9, 0.95, 0.99, 0.999]))
def test_clusters_match_brute_force_pairwise_union_find(seed, n_base, n_copies, noise, threshold):
    ids, vectors = planted_set(seed, n_base, n_copies, noise)
    assume(far_from_threshold(vectors, threshold))  # float32 rounding may flip exact boundary pairs
    expected = reference_clusters(ids, vectors, threshold)
    assert near_duplicate_clusters(vectors, ids, threshold) == expected
    with_index = build_index(ids, vectors, IndexSettings(kind="flat"))
    assert near_duplicate_clusters(vectors, ids, threshold, index=with_index) == expected


def test_exact_copies_cluster_and_distinct_items_do_not():
    ids, vectors = planted_set(seed=3, n_base=30, n_copies=0, noise=0.0)
    vectors = np.concatenate([vectors, vectors[[4, 4, 9]]])
    ids = np.concatenate([ids, [10**7, 10**7 + 1, 10**7 + 2]])
    assert near_duplicate_clusters(vectors, ids, threshold=0.999) == sorted(
        [sorted([int(ids[4]), 10**7, 10**7 + 1]), sorted([int(ids[9]), 10**7 + 2])], key=lambda g: g[0])


def test_index_covering_more_items_only_links_the_given_ids():
    ids, vectors = planted_set(seed=5, n_base=40, n_copies=20, noise=0.02)
    index = build_index(ids, vectors, IndexSettings(kind="flat"))
    subset = np.arange(0, len(ids), 2)
    got = near_duplicate_clusters(vectors[subset], ids[subset], 0.95, index=index)
    assert got == reference_clusters(ids[subset], vectors[subset], 0.95)


def test_ivf_index_finds_planted_duplicates_with_all_cells_probed():
    ids, vectors = planted_set(seed=6, n_base=400, n_copies=60, noise=0.01, dim=16)
    index = build_index(ids, vectors, IndexSettings(kind="ivf", nlist=8, nprobe=8))
    assert near_duplicate_clusters(vectors, ids, 0.97, index=index) == reference_clusters(ids, vectors, 0.97)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n_base=st.integers(1, 15), n_copies=st.integers(0, 10),
       threshold=st.sampled_from([0.9, 0.97]))
def test_suppression_keeps_the_best_ranked_of_each_near_duplicate_group(seed, n_base, n_copies, threshold):
    ids, vectors = planted_set(seed, n_base, n_copies, noise=0.05)
    assume(far_from_threshold(vectors, threshold))
    kept = ids[select_without_near_duplicates(np.arange(len(ids)), vectors, len(ids), threshold)]
    cosine = vectors.astype(np.float64) @ vectors.astype(np.float64).T
    expected: list[int] = []
    for position in range(len(ids)):  # greedy in rank order, plain loop
        if all(cosine[position, list(ids).index(k)] < threshold for k in expected):
            expected.append(int(ids[position]))
    assert kept.tolist() == expected


def test_threshold_outside_the_cosine_range_is_rejected():
    ids, vectors = planted_set(seed=0, n_base=3, n_copies=0, noise=0.0)
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        near_duplicate_clusters(vectors, ids, threshold=95)


def test_a_pair_exactly_at_the_threshold_is_a_near_duplicate_for_both_clusters_and_suppression():
    """The same rule in `alkit dedup` and in `alkit select`: cosine == threshold counts."""
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)  # cosine exactly 0
    ids = np.array([10, 11], dtype=np.int64)
    assert near_duplicate_clusters(vectors, ids, threshold=0.0) == [[10, 11]]
    assert select_without_near_duplicates(np.arange(2), vectors, 2, threshold=0.0).tolist() == [0]
    assert near_duplicate_clusters(vectors, ids, threshold=1e-6) == []
    assert select_without_near_duplicates(np.arange(2), vectors, 2, threshold=1e-6).tolist() == [0, 1]
