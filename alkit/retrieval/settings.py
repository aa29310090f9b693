"""Which FAISS index to build and how to search it: the kinds, the settings and the `auto` rules.

No faiss and no numpy here, so the CLI takes its defaults and choices from this module while it
builds `--help`. Building and searching is `alkit.retrieval.index`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from alkit.errors import InputError

log = logging.getLogger(__name__)

DEFAULT_NEIGHBOURS = 20
"""Neighbours `alkit similar` returns unless -k says otherwise."""

DUPLICATE_THRESHOLD = 0.95
"""`alkit dedup`'s default: cosine at or above which two images are near-duplicates."""

AUTO_IVF_THRESHOLD = 100_000
"""`auto` switches from exact to IVF at this many items. Measured (results_index.md): from 100k
clustered CLIP-like vectors IVF (4 sqrt(N) cells, nprobe 16) keeps recall@50 >= 0.95 and beats
exact search on build + 10 rounds of 1k queries; below, its recall drops (0.73 at 30k) while
exact search costs under 0.4 s per 1k queries."""

AUTO_PQ_THRESHOLD = 500_000
"""`auto` compresses with PQ (and re-ranks) from this many items: an IVF-flat index of 1M x 512
float32 vectors holds ~2 GB, IVF-PQ with 128-byte codes ~140 MB (codes + ids)."""

PQ_BITS = 8  # bits per PQ sub-vector code ...
PQ_CODES = 1 << PQ_BITS  # ... so 256 codes per sub-vector, and at least as many items to train them

MIN_POINTS_PER_LIST = 39
"""`nlist` is capped at N // 39 so k-means never runs with too few points per centroid."""

class IndexKind(str, Enum):
    """The FAISS index family (`--kind`)."""

    AUTO = "auto"
    """Exact below `IndexSettings.auto_threshold` items, IVF at or above it."""
    FLAT = "flat"
    """Exact brute-force inner product: perfect recall, linear query cost."""
    IVF = "ivf"
    """Inverted file: k-means cells, `nprobe` scanned per query; PQ-compressed if `pq_m`."""
    HNSW = "hnsw"
    """Hierarchical navigable small-world graph; no training; CPU only."""


@dataclass(frozen=True)
class IndexSettings:
    """How to build and search an index. `None` fields are resolved from N by `resolve_settings`."""

    kind: IndexKind | str = IndexKind.AUTO
    nlist: int | None = None  # IVF cells; None: power of two near 4 sqrt(N)
    pq_m: int | None = None  # PQ bytes per vector (must divide D); None/0: IVF-flat
    nprobe: int = 16  # IVF cells scanned per query (search time, not persisted as a build choice)
    hnsw_m: int = 32  # HNSW graph degree
    ef_search: int = 128  # HNSW search beam (search time)
    seed: int = 0  # IVF training sample and k-means seed
    use_gpu: bool | None = None  # None: use a GPU when faiss-gpu sees one
    auto_threshold: int = AUTO_IVF_THRESHOLD

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", IndexKind(self.kind))
        except ValueError:
            valid = ", ".join(k.value for k in IndexKind)
            raise InputError(f"unknown index kind {self.kind!r}; valid: {valid}") from None
        for name in ("nprobe", "hnsw_m", "ef_search", "auto_threshold"):
            if getattr(self, name) < 1:
                raise InputError(f"index setting {name}={getattr(self, name)} must be >= 1")
        if self.nlist is not None and self.nlist < 1:
            raise InputError(f"index setting nlist={self.nlist} must be >= 1 (or omitted for a default)")
        if self.pq_m is not None and self.pq_m < 0:
            raise InputError(f"index setting pq_m={self.pq_m} must be >= 0 (0 = no PQ)")

    def build_fields(self) -> dict[str, Any]:
        """The fields that shape the built index (a change means rebuild); search fields excluded."""
        return {
            "kind": IndexKind(self.kind).value,
            "nlist": self.nlist,
            "pq_m": self.pq_m or None,
            "hnsw_m": self.hnsw_m,
            "seed": self.seed,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.build_fields(), "nprobe": self.nprobe, "ef_search": self.ef_search,
                "auto_threshold": self.auto_threshold}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IndexSettings":
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def choose_kind(num_items: int, settings: IndexSettings) -> IndexKind:
    """The `auto` rule: exact search below `settings.auto_threshold` items, IVF at or above it.

    An explicit kind is returned unchanged.
    """
    kind = IndexKind(settings.kind)
    if kind is not IndexKind.AUTO:
        return kind
    return IndexKind.FLAT if num_items < settings.auto_threshold else IndexKind.IVF


def default_nlist(num_items: int) -> int:
    """A power of two near 4 sqrt(N) (FAISS's guidance is 4-16 sqrt(N)), capped at N // 39.

    IVF scanning is memory-bound, so query time follows the vectors scanned, nprobe * N / nlist;
    sqrt(N) cells scan 4x more per probe. 4 sqrt(N) keeps training affordable on two cores
    (128 CPU-s at 1M; see benchmarks/results_index.md).
    """
    wanted = 2 ** max(0, round(math.log2(max(1.0, 4 * math.sqrt(num_items)))))
    return max(1, min(wanted, num_items // MIN_POINTS_PER_LIST))


def resolve_settings(num_items: int, dim: int, settings: IndexSettings) -> IndexSettings:
    """Concrete settings for N items of dimension D: kind chosen, nlist set and capped, PQ checked."""
    kind = choose_kind(num_items, settings)
    if kind is not IndexKind.IVF:
        return replace(settings, kind=kind, nlist=None, pq_m=None)
    nlist = settings.nlist or default_nlist(num_items)
    capped = max(1, min(nlist, num_items // MIN_POINTS_PER_LIST))
    if capped < nlist:
        log.info("nlist %d capped to %d for %d items (>= %d per cell)", nlist, capped, num_items, MIN_POINTS_PER_LIST)
    pq_m = settings.pq_m or None
    if pq_m is None and IndexKind(settings.kind) is IndexKind.AUTO and num_items >= AUTO_PQ_THRESHOLD:
        pq_m = default_pq_m(dim)
    if pq_m is not None:
        if dim % pq_m:
            raise InputError(f"--pq {pq_m} must divide the embedding dimension {dim}; try {_divisor_near(dim, pq_m)}")
        if num_items < PQ_CODES:
            raise InputError(f"IVF-PQ needs >= {PQ_CODES} items to train its codebooks, the pool has {num_items}; use --kind flat")
    return replace(settings, kind=kind, nlist=capped, pq_m=pq_m)


def default_pq_m(dim: int) -> int:
    """PQ bytes per vector for `auto`: one byte per 4 dimensions (128 for 512-d), a divisor of D.

    On a clustered sample (tests/test_retrieval_index.py) one byte per 8 dimensions reached
    recall@20 0.89 after re-ranking 8k candidates, one per 4 dimensions 0.96."""
    return _divisor_near(dim, max(1, dim // 4))


def _divisor_near(dim: int, wanted: int) -> int:
    return min((d for d in range(1, dim + 1) if dim % d == 0), key=lambda d: abs(d - wanted))
