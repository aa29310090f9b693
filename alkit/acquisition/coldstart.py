"""Cold-start selectors: representative batches from embeddings `(N, D)` alone.

Used when there are too few labels (and no usable zero-shot prompts) for any posterior to
be informative, so the first batch is not random:
- `kcenter_greedy` (Sener & Savarese, 2018): repeatedly take the point farthest from every
  chosen centre; covers the space, including outliers.
- `typiclust` (Hacohen et al., 2022): cluster into B groups and take the most typical point
  of each; favours dense, representative regions.
Euclidean distances throughout (equal to cosine ranking for unit-norm embeddings).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from alkit.acquisition.checks import check_budget
from alkit.errors import InputError, StateError
from alkit.registry import Registry

# Above this many points TypiClust clusters with MiniBatchKMeans instead of KMeans.
MINIBATCH_KMEANS_ABOVE = 20_000
_ROW_BLOCK = 2048


def _validated(embeddings, budget: int) -> np.ndarray:
    vectors = np.asarray(embeddings, dtype=np.float32)
    if vectors.ndim != 2:
        raise InputError(f"embeddings must have shape (N, D), got {vectors.shape}")
    check_budget(budget, vectors.shape[0])
    return vectors


def _squared_distances_to(vectors: np.ndarray, squared_norms: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """|x_i - c|^2 for all rows `(N,)`, via |x|^2 + |c|^2 - 2 x.c (clamped at 0)."""
    distances = squared_norms + float(centre @ centre) - 2.0 * (vectors @ centre)
    return np.maximum(distances, 0.0)


def kcenter_greedy(embeddings, budget: int, seed: int = 0, already_selected=None) -> np.ndarray:
    """k-center greedy: indices `(B,)` in selection order, none from `already_selected`.

    Keeps the distance from every point to its nearest centre `(N,)` and adds the argmax
    each step (one `(N, D) x (D,)` product per pick). Without `already_selected` the first
    centre is a seeded uniform draw. Ties go to the lower index.
    """
    vectors = _validated(embeddings, budget)
    num_items = vectors.shape[0]
    squared_norms = np.einsum("nd,nd->n", vectors, vectors)
    nearest = np.full(num_items, np.inf, dtype=np.float32)
    selected = np.asarray([] if already_selected is None else already_selected, dtype=np.int64)
    if budget > num_items - np.unique(selected).size:
        raise StateError(
            f"budget {budget} is larger than the {num_items - np.unique(selected).size} items not yet selected; "
            "lower --budget"
        )
    for centre in selected:
        np.minimum(nearest, _squared_distances_to(vectors, squared_norms, vectors[centre]), out=nearest)
    chosen: list[int] = []
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    if selected.size == 0:
        first = int(np.random.default_rng(seed).integers(num_items))
    else:
        nearest[selected] = -1.0
        first = int(np.argmax(nearest))
    chosen.append(first)
    for _ in range(budget - 1):
        np.minimum(nearest, _squared_distances_to(vectors, squared_norms, vectors[chosen[-1]]), out=nearest)
        nearest[chosen[-1]] = -1.0  # a chosen centre is never chosen again
        if selected.size:
            nearest[selected] = -1.0
        chosen.append(int(np.argmax(nearest)))
    return np.asarray(chosen, dtype=np.int64)


def _typicality(members: np.ndarray, num_neighbors: int) -> np.ndarray:
    """1 / mean distance to the k nearest other members `(m,)`; 1 point -> typicality 1."""
    count = members.shape[0]
    if count == 1:
        return np.ones(1)
    k = min(num_neighbors, count - 1)
    squared_norms = np.einsum("nd,nd->n", members, members)
    typicality = np.empty(count)
    for start in range(0, count, _ROW_BLOCK):
        rows = members[start : start + _ROW_BLOCK]
        squared = squared_norms[start : start + _ROW_BLOCK, None] + squared_norms[None, :] - 2.0 * rows @ members.T
        np.fill_diagonal(squared[:, start : start + rows.shape[0]], np.inf)  # exclude self
        nearest = np.partition(squared, k - 1, axis=1)[:, :k]
        typicality[start : start + rows.shape[0]] = 1.0 / (np.sqrt(np.maximum(nearest, 0.0)).mean(axis=1) + 1e-12)
    return typicality


def typiclust(embeddings, budget: int, seed: int = 0, num_neighbors: int = 20) -> np.ndarray:
    """TypiClust: k-means into B clusters, then the most typical point of each cluster.

    Typicality = inverse mean distance to the `num_neighbors` nearest points of the same
    cluster. KMeans for N <= `MINIBATCH_KMEANS_ABOVE`, MiniBatchKMeans above (seeded).
    Indices `(B,)` ordered by cluster size, largest first. If k-means leaves clusters empty,
    the remaining slots go to the next most typical points of the largest clusters, so
    exactly B distinct indices are always returned.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    vectors = _validated(embeddings, budget)
    if budget == 0:
        return np.empty(0, dtype=np.int64)
    if vectors.shape[0] > MINIBATCH_KMEANS_ABOVE:
        clusterer = MiniBatchKMeans(n_clusters=budget, random_state=seed, n_init=3, batch_size=4096)
    else:
        clusterer = KMeans(n_clusters=budget, random_state=seed, n_init=1)
    labels = clusterer.fit_predict(vectors)
    sizes = np.bincount(labels, minlength=budget)
    ranked_per_cluster: list[np.ndarray] = []
    for cluster in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero(labels == cluster)
        if members.size == 0:
            continue
        typicality = _typicality(vectors[members], num_neighbors)
        ranked_per_cluster.append(members[np.argsort(-typicality, kind="stable")])
    chosen = [int(ranked[0]) for ranked in ranked_per_cluster]
    depth = 1
    while len(chosen) < budget:  # only when k-means left clusters empty
        for ranked in ranked_per_cluster:
            if depth < ranked.size and len(chosen) < budget:
                chosen.append(int(ranked[depth]))
        depth += 1
    return np.asarray(chosen, dtype=np.int64)


ColdStartSelector = Callable[..., np.ndarray]  # (embeddings (N, D), budget, seed) -> indices (B,)

COLD_START: Registry[ColdStartSelector] = Registry("cold-start selector")
COLD_START.register("kcenter", kcenter_greedy, "k-center greedy coverage of the embedding space")
COLD_START.register("typiclust", typiclust, "most typical point of each of B k-means clusters")
