"""Candidate retrieval for selection: score only pool items near the queries (SEALS / AnchorAL).

SEALS (Coleman et al., 2022) scores only the nearest neighbours of labelled items; AnchorAL
(Lesci & Vlachos, 2024) the neighbours of class anchors. Either way the caller passes the query
(or EPIG target) vectors; `candidates_near` returns a fixed number of distinct pool ids,
taking them round-robin by rank so every query contributes, and searching deeper when
exclusions (already labelled, already selected) or overlaps eat the neighbours.
"""

from __future__ import annotations

import math

import numpy as np

from alkit.errors import InputError
from alkit.retrieval.index import FaissIndex, search


def round_robin_union(neighbour_ids: np.ndarray, num_candidates: int,
                      exclude_ids: np.ndarray | None = None) -> np.ndarray:
    """Distinct ids from neighbour lists (Q, k), rank by rank: all rank-0 ids, then rank-1, ...

    Within a rank, queries are taken in order. -1 (no result) and excluded ids are skipped.
    Returns at most `num_candidates` ids (int64) in the order they were taken.
    """
    by_rank = np.asarray(neighbour_ids, dtype=np.int64).T.reshape(-1)  # (k*Q,) rank-major
    allowed = by_rank >= 0
    if exclude_ids is not None and len(exclude_ids):
        allowed &= ~np.isin(by_rank, np.asarray(exclude_ids, dtype=np.int64))
    by_rank = by_rank[allowed]
    _, first = np.unique(by_rank, return_index=True)
    return by_rank[np.sort(first)][:num_candidates]


def candidates_near(index: FaissIndex, query_vectors: np.ndarray, num_candidates: int,
                    exclude_ids: np.ndarray | None = None) -> np.ndarray:
    """Up to `num_candidates` distinct indexed ids nearest to the queries (Q, D), none excluded.

    Fewer are returned only when the index holds fewer allowed ids (or, for IVF/HNSW, when
    the probed cells run dry). Ids come in round-robin rank order (see `round_robin_union`).
    """
    if num_candidates < 1:
        raise InputError(f"num_candidates={num_candidates} must be >= 1")
    query_vectors = np.atleast_2d(np.asarray(query_vectors, dtype=np.float32))
    num_queries = len(query_vectors)
    if num_queries == 0:
        raise InputError("candidate retrieval needs at least one query vector (labelled item or target)")
    if index.ntotal == 0:
        return np.zeros(0, np.int64)
    num_excluded = 0 if exclude_ids is None else len(exclude_ids)
    # enough per query if nothing overlapped; doubled until enough distinct allowed ids appear
    depth = min(index.ntotal, 2 * math.ceil((num_candidates + num_excluded) / num_queries))
    while True:
        _, neighbour_ids = search(index, query_vectors, depth)
        chosen = round_robin_union(neighbour_ids, num_candidates, exclude_ids)
        rows_dry = np.all(neighbour_ids[:, -1] < 0) if neighbour_ids.shape[1] else True
        if len(chosen) >= num_candidates or depth >= index.ntotal or rows_dry:
            return chosen
        depth = min(index.ntotal, 2 * depth)
