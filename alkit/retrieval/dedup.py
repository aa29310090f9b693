"""Near-duplicate images: clusters of items whose embeddings have cosine >= a threshold.

`near_duplicate_clusters` (for `alkit dedup`) links every pair at or above the threshold,
found by a FAISS range search, and returns the connected components. The rule is the one
of `alkit.acquisition.batch.is_near_duplicate`, whose `select_without_near_duplicates` keeps a
selected batch free of near-duplicates.

Range search runs with a small margin below the threshold and every candidate pair is
re-checked with exact float64 cosine, so the result does not depend on float32 rounding.
"""

from __future__ import annotations

import numpy as np

from alkit.acquisition.batch import is_near_duplicate
from alkit.arrays import chunk_slices
from alkit.errors import InputError
from alkit.retrieval.index import FaissIndex
from alkit.retrieval.settings import IndexKind

EXACT_MARGIN = 1e-4
"""Range-search radius below the threshold for exact scores (float32 rounding is ~1e-6)."""

PQ_MARGIN = 0.05
"""Wider margin for IVF-PQ, whose compressed scores err by a few hundredths."""

QUERY_CHUNK = 4096
"""Rows range-searched at once; bounds the memory of the result lists."""


def _check_threshold(threshold: float) -> None:
    if not -1.0 <= threshold <= 1.0:
        raise InputError(f"--threshold {threshold} is not a cosine; use a value in [-1, 1], e.g. 0.95")


def near_duplicate_clusters(vectors: np.ndarray, ids: np.ndarray, threshold: float,
                            index: FaissIndex | None = None) -> list[list[int]]:
    """Clusters (>= 2 items) of `ids` linked by cosine >= `threshold`, as sorted id lists.

    vectors (N, D) unit-norm, ids (N,). Linking is transitive (A~B, B~C puts A, B, C together).
    With `index` (covering at least `ids`), its range search is used: exact for flat, approximate
    (missed pairs possible) for IVF and HNSW. Without it the search is exact. Clusters are
    ordered by their smallest id.
    """
    _check_threshold(threshold)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.asarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise InputError(f"got {len(ids)} ids for vectors of shape {vectors.shape}; pass one id per row")
    if len(ids) < 2:
        return []
    left, right = _pairs_at_or_above(vectors, ids, threshold, index)
    return _connected_clusters(ids, left, right)


def _pairs_at_or_above(vectors: np.ndarray, ids: np.ndarray, threshold: float,
                       index: FaissIndex | None) -> tuple[np.ndarray, np.ndarray]:
    """Positions (i, j), i < j, with exact cosine(v_i, v_j) >= threshold (among those searched)."""
    import faiss

    if index is None:
        searcher = faiss.IndexFlatIP(vectors.shape[1])
        searcher.add(vectors)
        to_position = None  # searcher ids are positions
        margin = EXACT_MARGIN
    else:
        if index.dim != vectors.shape[1]:
            raise InputError(f"vectors are {vectors.shape[1]}-d, the index is {index.dim}-d; rebuild the index")
        searcher = index.index
        order = np.argsort(ids)
        to_position = (ids[order], order)
        is_pq = index.kind is IndexKind.IVF and bool(index.settings.pq_m)
        margin = PQ_MARGIN if is_pq else EXACT_MARGIN
    offset = None if index is None else index.offset
    lefts, rights = [], []
    for part in chunk_slices(len(vectors), QUERY_CHUNK):
        chunk = vectors[part]
        # a centred IVF index scores <q, x> - <q, o>: one radius low enough for every query of the chunk
        shift = np.zeros(len(chunk), np.float32) if offset is None else chunk @ offset  # (chunk,)
        limits, _, found = searcher.range_search(chunk, float(threshold - margin - shift.max()))
        query_pos = np.repeat(np.arange(part.start, part.stop), np.diff(limits.astype(np.int64)))
        found_pos = _positions_of(found.astype(np.int64), to_position)
        keep = (found_pos >= 0) & (found_pos != query_pos)  # both directions: approximate search may find one
        lefts.append(np.minimum(query_pos[keep], found_pos[keep]))
        rights.append(np.maximum(query_pos[keep], found_pos[keep]))
    left, right = np.concatenate(lefts), np.concatenate(rights)
    exact = np.einsum("ij,ij->i", vectors[left].astype(np.float64), vectors[right].astype(np.float64))
    close = is_near_duplicate(exact, threshold)
    return left[close], right[close]


def _positions_of(found_ids: np.ndarray, to_position: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
    """Map index ids to positions in `ids`; -1 for ids not among them."""
    if to_position is None:
        return found_ids
    sorted_ids, order = to_position
    slot = np.clip(np.searchsorted(sorted_ids, found_ids), 0, len(sorted_ids) - 1)
    return np.where(sorted_ids[slot] == found_ids, order[slot], -1)


def _connected_clusters(ids: np.ndarray, left: np.ndarray, right: np.ndarray) -> list[list[int]]:
    """Connected components with >= 2 members, each as sorted ids, ordered by smallest id."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(ids)
    graph = coo_matrix((np.ones(len(left), dtype=np.int8), (left, right)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    members = np.flatnonzero(sizes[labels] >= 2)
    clusters: dict[int, list[int]] = {}
    for position in members[np.argsort(ids[members], kind="stable")]:
        clusters.setdefault(int(labels[position]), []).append(int(ids[position]))
    return sorted(clusters.values(), key=lambda cluster: cluster[0])
