"""Candidate retrieval (SEALS / AnchorAL): round-robin union of neighbours, exclusions honoured."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import unit_rows
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from alkit.errors import InputError
from alkit.retrieval.index import build_index
from alkit.retrieval.settings import IndexSettings
from alkit.retrieval.neighbours import candidates_near, round_robin_union


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def reference_round_robin(neighbour_lists: list[list[int]], num_candidates: int, excluded: set[int]) -> list[int]:
    """Plain loop: rank by rank, query by query, first occurrence of each allowed id."""
    chosen: list[int] = []
    depth = max((len(row) for row in neighbour_lists), default=0)
    for rank in range(depth):
        for row in neighbour_lists:
            if rank < len(row):
                item = row[rank]
                if item >= 0 and item not in excluded and item not in chosen and len(chosen) < num_candidates:
                    chosen.append(item)
    return chosen


@settings(max_examples=60, deadline=None)
@given(
    neighbours=arrays(np.int64, st.tuples(st.integers(1, 6), st.integers(1, 8)), elements=st.integers(-1, 15)),
    num_candidates=st.integers(1, 20),
    excluded=st.sets(st.integers(0, 15), max_size=6),
)
def test_round_robin_union_matches_a_plain_loop(neighbours, num_candidates, excluded):
    got = round_robin_union(neighbours, num_candidates, np.array(sorted(excluded), dtype=np.int64))
    assert got.tolist() == reference_round_robin(neighbours.tolist(), num_candidates, excluded)


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(0)
    vectors = unit_rows(rng.standard_normal((500, 16)))
    ids = rng.choice(10**6, size=500, replace=False).astype(np.int64)
    queries = unit_rows(rng.standard_normal((4, 16)))
    return ids, vectors, queries, build_index(ids, vectors, IndexSettings(kind="flat"))


def exact_neighbour_lists(ids, vectors, queries) -> list[list[int]]:
    order = np.argsort(-(queries.astype(np.float64) @ vectors.astype(np.float64).T), axis=1)
    return ids[order].tolist()


@pytest.mark.parametrize("num_candidates, num_excluded", [(10, 0), (40, 0), (25, 60), (200, 100)])
def test_candidates_equal_the_round_robin_of_exact_neighbour_lists(pool, num_candidates, num_excluded):
    ids, vectors, queries, index = pool
    lists = exact_neighbour_lists(ids, vectors, queries)
    excluded = [row[rank] for rank in range(num_excluded // 4) for row in lists]  # each query's nearest
    got = candidates_near(index, queries, num_candidates, exclude_ids=np.array(excluded))
    assert got.tolist() == reference_round_robin(lists, num_candidates, set(excluded))
    assert len(got) == num_candidates  # exclusions made it search deeper, not return fewer
    assert not set(got.tolist()) & set(excluded)
    assert set(got.tolist()) <= set(ids.tolist())


def test_every_query_contributes_its_nearest_neighbour(pool):
    ids, vectors, queries, index = pool
    lists = exact_neighbour_lists(ids, vectors, queries)
    got = candidates_near(index, queries, num_candidates=len(queries))
    assert sorted(got.tolist()) == sorted({row[0] for row in lists})


def test_asking_for_more_than_allowed_returns_every_allowed_id(pool):
    ids, vectors, queries, index = pool
    excluded = ids[:123]
    got = candidates_near(index, queries, num_candidates=10_000, exclude_ids=excluded)
    assert sorted(got.tolist()) == sorted(set(ids.tolist()) - set(excluded.tolist()))


def test_ivf_candidates_stay_within_the_index_and_outside_exclusions():
    rng = np.random.default_rng(1)
    vectors = unit_rows(rng.standard_normal((800, 16)))
    ids = np.arange(800, dtype=np.int64) * 7 + 3
    index = build_index(ids, vectors, IndexSettings(kind="ivf", nlist=16, nprobe=2))
    excluded = ids[::3]
    got = candidates_near(index, unit_rows(rng.standard_normal((3, 16))), 50, exclude_ids=excluded)
    assert len(got) == len(set(got.tolist())) and 0 < len(got) <= 50
    assert set(got.tolist()) <= set(ids.tolist()) - set(excluded.tolist())


def test_no_queries_is_an_input_error(pool):
    with pytest.raises(InputError, match="at least one query"):
        candidates_near(pool[3], np.zeros((0, 16), np.float32), 5)
