"""Why a stored FAISS index cannot be used as it is.

Every class is an `IntegrityError` (exit code 7) or a `StateError`, so the CLI maps them like
any other alkit error. `ensure_index` catches them and rebuilds or extends instead; only
callers that ask for a specific stored index (`load_index`) ever see them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from alkit.errors import IntegrityError, StateError

if TYPE_CHECKING:
    from alkit.retrieval.index import FaissIndex


class IndexMissingError(StateError):
    """No index (or no manifest) in the directory: nothing has been built yet."""


class StaleIndexError(IntegrityError):
    """The stored index exists but does not match the current pool; `reason` says why."""

    reason = "stale"


class SpecMismatchError(StaleIndexError):
    """Built from another embedding spec: its vectors live in another space. Rebuild."""

    reason = "spec mismatch"


class DimMismatchError(StaleIndexError):
    """The stored dimension differs from the current embeddings. Rebuild."""

    reason = "dim mismatch"


class IndexCorruptError(StaleIndexError):
    """The file checksum, format version or contents disagree with the manifest. Rebuild."""

    reason = "corrupt"


class IdsRemovedError(StaleIndexError):
    """Items in the index are no longer in the pool. Rebuild (FAISS removal is not worth it)."""

    reason = "ids removed"

    def __init__(self, message: str, removed_ids: np.ndarray):
        super().__init__(message)
        self.removed_ids = removed_ids  # int64 (R,)


class IdsAddedError(StaleIndexError):
    """The pool has items the index lacks; the index is otherwise valid and can be extended.

    `index` is the loaded index and `missing_ids` the ids to add with `add_to_index`.
    """

    reason = "ids added"

    def __init__(self, message: str, index: "FaissIndex", missing_ids: np.ndarray):
        super().__init__(message)
        self.index = index
        self.missing_ids = missing_ids  # int64 (A,)
