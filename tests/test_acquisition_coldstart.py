"""Cold-start selectors against brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from alkit.acquisition import coldstart
from alkit.errors import StateError


def ref_kcenter(points, budget, first, already=()) -> list[int]:
    """k-center greedy with plain loops and exact Euclidean distances."""
    centres = list(already)
    chosen: list[int] = []
    for step in range(budget):
        if step == 0 and not centres:
            pick = first
        else:
            best, pick = -1.0, None
            for i in range(len(points)):
                if i in centres or i in chosen:
                    continue
                nearest = min(math.dist(points[i], points[c]) for c in centres + chosen)
                if nearest > best:
                    best, pick = nearest, i
        chosen.append(pick)
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcenter_matches_brute_force(seed):
    points = np.random.default_rng(seed).standard_normal((40, 3)).astype(np.float32)
    chosen = coldstart.kcenter_greedy(points, 8, seed=seed)
    assert chosen.tolist() == ref_kcenter(points.tolist(), 8, first=int(chosen[0]))
    first = int(np.random.default_rng(seed).integers(40))
    assert chosen[0] == first  # the seeded first centre


def test_kcenter_continues_from_already_selected():
    points = np.random.default_rng(5).standard_normal((30, 2)).astype(np.float32)
    already = [3, 17]
    chosen = coldstart.kcenter_greedy(points, 6, seed=0, already_selected=already)
    assert chosen.tolist() == ref_kcenter(points.tolist(), 6, first=None, already=already)
    assert not set(chosen.tolist()) & set(already)
    with pytest.raises(StateError, match="28 items not yet selected"):
        coldstart.kcenter_greedy(points, 29, already_selected=already)


def blobs(seed: int, num_blobs: int, per_blob: int, dim: int = 4):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_blobs, dim)) * 50
    points = np.concatenate([c + rng.standard_normal((per_blob, dim)) for c in centres])
    return points.astype(np.float32), np.repeat(np.arange(num_blobs), per_blob)


def ref_most_typical(points, members, k) -> int:
    best, pick = -1.0, None
    for i in members:
        distances = sorted(math.dist(points[i], points[j]) for j in members if j != i)[:k]
        typicality = 1 / (sum(distances) / len(distances))
        if typicality > best:
            best, pick = typicality, i
    return pick


def test_typiclust_takes_the_most_typical_point_of_each_blob():
    points, blob_of = blobs(0, num_blobs=5, per_blob=30)
    chosen = coldstart.typiclust(points, 5, seed=0, num_neighbors=7)
    assert sorted(blob_of[chosen].tolist()) == [0, 1, 2, 3, 4]
    for index in chosen:
        members = np.flatnonzero(blob_of == blob_of[index]).tolist()
        assert index == ref_most_typical(points.tolist(), members, 7)


def test_typiclust_minibatch_path_returns_distinct_indices(monkeypatch):
    monkeypatch.setattr(coldstart, "MINIBATCH_KMEANS_ABOVE", 10)
    points = np.random.default_rng(1).standard_normal((300, 6))
    for budget in (1, 7, 40):
        chosen = coldstart.typiclust(points, budget, seed=3)
        assert len(chosen) == budget and len(set(chosen.tolist())) == budget
    np.testing.assert_array_equal(coldstart.typiclust(points, 7, seed=3), coldstart.typiclust(points, 7, seed=3))


@pytest.mark.filterwarnings("ignore:Number of distinct clusters")
def test_typiclust_fills_up_when_clusters_are_fewer_than_budget():
    points = np.repeat(np.eye(3), 4, axis=0)  # only 3 distinct points: k-means leaves clusters empty
    chosen = coldstart.typiclust(points, 6, seed=0)
    assert len(chosen) == 6 and len(set(chosen.tolist())) == 6


def test_registry_and_budget_error():
    assert coldstart.COLD_START.names() == ["kcenter", "typiclust"]
    points = np.zeros((4, 2))
    for name in coldstart.COLD_START:
        with pytest.raises(StateError, match="budget 5 is larger than the 4"):
            coldstart.COLD_START.get(name)(points, 5, seed=0)
