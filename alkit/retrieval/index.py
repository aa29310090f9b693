"""Build, extend and search a FAISS inner-product index whose results are global item ids.

Vectors are unit-norm embeddings (N, D) float32, so inner product = cosine. Every index is
keyed by the caller's int64 ids (`IndexIDMap` for flat/HNSW, native `add_with_ids` for IVF):
search never returns positions. Kinds:

- `flat`  exact search; memory N*D*4 bytes; query cost grows linearly with N.
- `ivf`   inverted lists over `nlist` k-means cells trained on a seeded sample, `nprobe` cells
          scanned per query; with `pq_m` the vectors are product-quantised to `pq_m` bytes.
          IVF stores x - o, o the mean of the training sample: for a fixed query q,
          <q, x - o> = <q, x> - <q, o> ranks exactly like <q, x>, and `search` adds <q, o>
          back. Without this, the shared direction of CLIP-like embeddings gives a few huge
          cells (9x slower queries at 100k, lower recall: benchmarks/results_index.md).
- `hnsw`  graph search; no training, more memory, CPU only.
- `auto`  flat below `AUTO_IVF_THRESHOLD` items, IVF above (measured in
          benchmarks/results_index.md), IVF-PQ with `default_pq_m(D)` bytes per vector from
          `AUTO_PQ_THRESHOLD` items on.

Re-ranking: PQ distances are approximate, so a PQ index searched with a `reranker` (a function
ids -> float32 vectors, e.g. the float16 shards on disk; attached by the caller, never
persisted) takes the `RERANK_FACTOR * k` best ids by PQ distance and orders them by exact
inner product. Recall then depends only on whether the true neighbours reach the short list.

faiss is imported inside functions so that `import alkit.retrieval` stays cheap. The kinds,
settings and `auto` rules are `alkit.retrieval.settings`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from alkit.arrays import chunk_slices
from alkit.errors import InputError
from alkit.retrieval.settings import PQ_BITS, PQ_CODES, IndexKind, IndexSettings, resolve_settings

log = logging.getLogger(__name__)

RERANK_FACTOR = 8
"""A re-ranked PQ search takes RERANK_FACTOR * k candidates by PQ distance before exact scoring."""

RERANK_BLOCK_ROWS = 16_384
"""Candidate vectors gathered at once while re-ranking (16k x 512 float32 = 32 MB)."""

TRAIN_POINTS_PER_LIST = 40
"""IVF k-means trains on at most this many sampled vectors per list (faiss wants >= 39):
training is most of an IVF build, and more points did not raise recall in the benchmark."""

PQ_TRAIN_POINTS_PER_CODE = 64
PQ_TRAIN_ITERATIONS = 10
"""PQ codebooks (256 codes per sub-vector) train on <= 64 * 256 points for 10 k-means rounds:
FAISS's defaults (256 * 256 points, 25 rounds) made PQ training most of an IVF-PQ build."""

ADD_CHUNK_ROWS = 65_536
"""Rows added to FAISS at once (65k x 512 float32 = 128 MB for the centred copy)."""

GPU_MAX_K = 2048
"""FAISS GPU indexes answer at most k = 2048 neighbours; larger k searches on the CPU."""


@dataclass
class FaissIndex:
    """A CPU FAISS index plus what it holds: ids in insertion order and resolved settings.

    The CPU index is the source of truth (it is what gets written); a GPU copy is made lazily
    for searching and dropped whenever items are added.
    """

    index: Any  # faiss.Index over ids (IndexIDMap or IndexIVF)
    settings: IndexSettings  # resolved: kind is never auto
    ids: np.ndarray  # int64 (N,), insertion order
    trained_on: int  # N when built (IVF cells were trained for this size)
    offset: np.ndarray | None = None  # (D,) float32 subtracted from stored vectors (IVF), else None
    reranker: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False, compare=False)
    """ids (n,) -> exact float32 vectors (n, D); used by `search` on PQ indexes. Not persisted."""
    _gpu_index: Any = field(default=None, repr=False, compare=False)

    @property
    def kind(self) -> IndexKind:
        return IndexKind(self.settings.kind)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)


# ---------------------------------------------------------------- validation (public boundary)


def _check_vectors(vectors: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise InputError(f"{what} must be 2-d (N, D), got shape {vectors.shape}")
    if dim is not None and vectors.shape[1] != dim:
        raise InputError(f"{what} have dimension {vectors.shape[1]} but the index has {dim}; rebuild the index")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(vectors):
        norms = np.linalg.norm(vectors, axis=1)
        bad = np.flatnonzero(np.abs(norms - 1.0) > 1e-3)
        if len(bad):
            raise InputError(
                f"{what}: {len(bad)} of {len(vectors)} rows are not unit-norm (row {bad[0]} has norm "
                f"{norms[bad[0]]:.4f}); normalise embeddings before indexing"
            )
    return vectors


def _check_ids(ids: np.ndarray, num_vectors: int) -> np.ndarray:
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) != num_vectors:
        raise InputError(f"got {len(ids)} ids for {num_vectors} vectors; pass one id per row")
    if len(ids) and ids.min() < 0:
        raise InputError(f"ids must be >= 0 (-1 marks 'no result' in FAISS), got {ids.min()}")
    if len(np.unique(ids)) != len(ids):
        raise InputError(f"{len(ids) - len(np.unique(ids))} duplicate ids; each item may be indexed once")
    return ids


# ---------------------------------------------------------------- build / add / search


def build_index(ids: np.ndarray, vectors: np.ndarray, settings: IndexSettings | None = None) -> FaissIndex:
    """Index `vectors` (N, D) unit-norm float32 under global `ids` (N,) int64.

    IVF cells are trained on a sample drawn with `settings.seed`, so a rebuild of the same
    data gives the same index.
    """
    settings = settings or IndexSettings()
    vectors = _check_vectors(vectors, "vectors")
    ids = _check_ids(ids, len(vectors))
    if len(ids) == 0:
        raise InputError("cannot build an index over 0 items; embed the pool first")
    resolved = resolve_settings(len(ids), vectors.shape[1], settings)
    cpu_index = _new_cpu_index(vectors.shape[1], resolved)
    offset = None
    if not cpu_index.is_trained:
        sample = _training_sample(vectors, resolved)
        offset = sample.mean(axis=0, dtype=np.float64).astype(np.float32)  # (D,)
        cpu_index.train(sample - offset)
    built = FaissIndex(index=cpu_index, settings=resolved, ids=ids.copy(), trained_on=len(ids), offset=offset)
    _add_rows(built, ids, vectors)
    apply_search_settings(built)
    return built


def _add_rows(index: FaissIndex, ids: np.ndarray, vectors: np.ndarray, chunk: int = ADD_CHUNK_ROWS) -> None:
    """add_with_ids, centred by the index offset, in chunks (no full-size centred copy)."""
    for part in chunk_slices(len(ids), chunk):
        rows = vectors[part]
        if index.offset is not None:
            rows = rows - index.offset
        index.index.add_with_ids(rows, ids[part])


def _new_cpu_index(dim: int, settings: IndexSettings) -> Any:
    import faiss

    kind = IndexKind(settings.kind)
    if kind is IndexKind.FLAT:
        return faiss.IndexIDMap(faiss.IndexFlatIP(dim))
    if kind is IndexKind.HNSW:
        return faiss.IndexIDMap(faiss.IndexHNSWFlat(dim, settings.hnsw_m, faiss.METRIC_INNER_PRODUCT))
    quantizer = faiss.IndexFlatIP(dim)
    if settings.pq_m:
        ivf = faiss.IndexIVFPQ(quantizer, dim, settings.nlist, settings.pq_m, PQ_BITS, faiss.METRIC_INNER_PRODUCT)
        ivf.do_polysemous_training = False  # only used for Hamming pre-filtering, which we do not use
        ivf.pq.cp.min_points_per_centroid = 1  # small pools: train anyway, without FAISS's stderr warning
        ivf.pq.cp.max_points_per_centroid = PQ_TRAIN_POINTS_PER_CODE  # PQ k-means dominates build time
        ivf.pq.cp.niter = PQ_TRAIN_ITERATIONS
    else:
        ivf = faiss.IndexIVFFlat(quantizer, dim, settings.nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = settings.seed
    ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST  # we sample ourselves; no second subsample
    return ivf


def _training_sample(vectors: np.ndarray, settings: IndexSettings) -> np.ndarray:
    """A seeded sample of at most TRAIN_POINTS_PER_LIST * nlist rows (>= 256 * 64 rows for PQ)."""
    size = TRAIN_POINTS_PER_LIST * settings.nlist
    if settings.pq_m:
        size = max(size, PQ_CODES * PQ_TRAIN_POINTS_PER_CODE)
    if size >= len(vectors):
        return vectors
    rows = np.sort(np.random.default_rng(settings.seed).choice(len(vectors), size=size, replace=False))
    return vectors[rows]


def add_to_index(index: FaissIndex, ids: np.ndarray, vectors: np.ndarray) -> FaissIndex:
    """Add new items without rebuilding (IVF assigns them to the trained cells). Mutates `index`.

    Ids already in the index raise `InputError`: FAISS would store them twice.
    """
    vectors = _check_vectors(vectors, "new vectors", dim=index.dim)
    ids = _check_ids(ids, len(vectors))
    if len(ids) == 0:
        return index
    already = ids[np.isin(ids, index.ids)]
    if len(already):
        raise InputError(f"{len(already)} ids are already indexed (e.g. {already[0]}); add only new items")
    _add_rows(index, ids, vectors)
    index.ids = np.concatenate([index.ids, ids])
    index._gpu_index = None  # stale; recopied on next search
    return index


def search(index: FaissIndex, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product. Returns scores (Q, k') float32 and ids (Q, k') int64, k' = min(k, N).

    Rows are sorted by decreasing score. IVF and HNSW can find fewer than k' items for a query
    (too few cells probed); those slots hold id -1 and score -inf.
    """
    if k < 1:
        raise InputError(f"k={k} must be >= 1")
    queries = _check_vectors(queries, "queries", dim=index.dim)
    k_eff = min(k, index.ntotal)
    if k_eff == 0 or len(queries) == 0:
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    rerank = index.reranker is not None and bool(index.settings.pq_m)
    depth = min(index.ntotal, RERANK_FACTOR * k_eff) if rerank else k_eff
    searcher = _searcher(index, depth)
    scores, found = searcher.search(queries, depth)
    scores = np.asarray(scores, dtype=np.float32)
    found = np.asarray(found, dtype=np.int64)
    if rerank:
        return rerank_exactly(queries, found, index.reranker, k_eff)
    if index.offset is not None:
        scores += (queries @ index.offset)[:, None]  # undo the centring: <q, x - o> + <q, o>
    scores[found < 0] = -np.inf
    return scores, found


def rerank_exactly(queries: np.ndarray, candidates: np.ndarray, vectors_of: Callable[[np.ndarray], np.ndarray],
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each query's candidate ids `(Q, c)` (-1 = none) by exact inner product.

    Each distinct candidate's vector is loaded once (`vectors_of(ids)` -> (n, D) float32);
    returns scores (Q, k) float32 and ids (Q, k) int64 sorted by decreasing score, -inf / -1
    where a query had fewer than k candidates.
    """
    unique = np.unique(candidates[candidates >= 0])
    vectors = np.asarray(vectors_of(unique), dtype=np.float32)
    slots = np.searchsorted(unique, np.where(candidates >= 0, candidates, unique[0] if len(unique) else 0))
    exact = np.empty(candidates.shape, dtype=np.float32)
    block = max(1, RERANK_BLOCK_ROWS // max(1, candidates.shape[1]))
    for part in chunk_slices(len(queries), block):  # (q, c, D) x (q, D): the candidates differ per query
        exact[part] = np.einsum("qcd,qd->qc", vectors[slots[part]], queries[part])
    exact[candidates < 0] = -np.inf
    order = np.argsort(-exact, axis=1, kind="stable")[:, :k]
    scores = np.take_along_axis(exact, order, axis=1)
    found = np.where(np.isfinite(scores), np.take_along_axis(candidates, order, axis=1), -1)
    return scores, found


def apply_search_settings(index: FaissIndex, settings: IndexSettings | None = None) -> None:
    """Set nprobe / efSearch on the CPU index (and drop the GPU copy); `settings` overrides."""
    import faiss

    if settings is not None:
        index.settings = replace(index.settings, nprobe=settings.nprobe, ef_search=settings.ef_search,
                                 use_gpu=settings.use_gpu)
    space = faiss.ParameterSpace()
    if index.kind is IndexKind.IVF:
        space.set_index_parameter(index.index, "nprobe", min(index.settings.nprobe, index.settings.nlist))
    elif index.kind is IndexKind.HNSW:
        space.set_index_parameter(index.index, "efSearch", index.settings.ef_search)
    index._gpu_index = None


# ---------------------------------------------------------------- GPU


def gpu_available() -> bool:
    """True when the installed faiss has GPU support and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


_GPU_RESOURCES: Any = None


def _searcher(index: FaissIndex, k: int) -> Any:
    """The index to search: a cached GPU copy when allowed and possible, else the CPU index."""
    wants_gpu = index.settings.use_gpu
    if wants_gpu is False or index.kind is IndexKind.HNSW or k > GPU_MAX_K or not gpu_available():
        return index.index
    if index._gpu_index is None:
        index._gpu_index = _to_gpu(index)
    return index._gpu_index or index.index


def _to_gpu(index: FaissIndex) -> Any:
    import faiss

    global _GPU_RESOURCES
    try:
        if _GPU_RESOURCES is None:
            _GPU_RESOURCES = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        options.useFloat16LookupTables = bool(index.settings.pq_m)  # large PQ needs fp16 tables
        gpu_index = faiss.index_cpu_to_gpu(_GPU_RESOURCES, 0, index.index, options)
        if index.kind is IndexKind.IVF:
            faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", min(index.settings.nprobe, index.settings.nlist))
        return gpu_index
    except RuntimeError as error:  # e.g. a PQ size the GPU kernels do not support
        log.warning("searching on the CPU: could not copy the %s index to the GPU (%s)", index.kind.value, error)
        return False  # falsy: remembered, so we do not retry on every search
