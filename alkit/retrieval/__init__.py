"""FAISS retrieval adapter: build/search/persist an inner-product index over item embeddings,
candidate retrieval for selection (SEALS / AnchorAL) and near-duplicate clusters.

faiss is imported inside functions only, so importing this package stays cheap.
"""

from alkit.retrieval.dedup import near_duplicate_clusters, suppress_near_duplicates
from alkit.retrieval.errors import (
    DimMismatchError,
    IdsAddedError,
    IdsRemovedError,
    IndexCorruptError,
    IndexMissingError,
    SpecMismatchError,
    StaleIndexError,
)
from alkit.retrieval.index import (
    AUTO_IVF_THRESHOLD,
    FaissIndex,
    IndexKind,
    IndexSettings,
    add_to_index,
    build_index,
    choose_kind,
    gpu_available,
    search,
)
from alkit.retrieval.neighbours import candidates_near
from alkit.retrieval.store import EnsuredIndex, ensure_index, load_index, save_index

__all__ = [
    "AUTO_IVF_THRESHOLD", "DimMismatchError", "EnsuredIndex", "FaissIndex", "IdsAddedError",
    "IdsRemovedError", "IndexCorruptError", "IndexKind", "IndexMissingError", "IndexSettings",
    "SpecMismatchError", "StaleIndexError", "add_to_index", "build_index", "candidates_near",
    "choose_kind", "ensure_index", "gpu_available", "load_index", "near_duplicate_clusters",
    "save_index", "search", "suppress_near_duplicates",
]
