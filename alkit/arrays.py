"""Small array and sequence helpers shared by the core and the adapters."""

from __future__ import annotations

from itertools import islice
from typing import Iterable, Iterator, TypeVar

import numpy as np

T = TypeVar("T")

NORM_FLOOR = 1e-12  # rows shorter than this are left (near) zero rather than divided by zero


def l2_normalise(rows: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean length, `(N, D) -> (N, D)`; zero rows stay zero."""
    rows = np.asarray(rows)
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)  # (N, 1)
    return rows / np.maximum(norms, NORM_FLOOR).astype(rows.dtype if rows.dtype.kind == "f" else np.float64)


def iter_chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter); works on any iterable."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def chunk_slices(total: int, size: int) -> Iterator[slice]:
    """`slice(start, stop)` over `range(total)` in steps of `size`."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))
