"""Reading stored vectors: one spec's float16 shards memory-mapped, gathered in the order
asked for and widened to float32; the database's `embeddings` rows say which rows are
complete (writing: `alkit.storage.shards`, spec rows: `alkit.storage.specs`).

Kinds: `embedding`, `phi`, and for specs embedded with `--cvp-blocks k` their variances
`embedding_var`, `phi_var`; `phi+phi_var` reads phi and its variance side by side `(N, 2d)`
(what a BayesVLM posterior with CVP's phi variance consumes).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.errors import IntegrityError, StateError
from alkit.storage.db import IN_LIST_IDS
from alkit.storage.schema import embeddings, images
from alkit.storage.shards import COMBINED_KINDS, VARIANCE_KINDS, VECTOR_KINDS, shard_path
from alkit.storage.specs import spec_directory, spec_row

DEFAULT_CHUNK_ROWS = 65_536  # rows per `iter_vector_chunks` chunk: 128 MiB of float32 at D = 512
DENSE_SPAN = 4  # read an id set as one id range when its span is at most this many times its size


# --- reading -----------------------------------------------------------------------------


class _ShardReader:
    """Memory maps of one spec's shards, opened on first use."""

    def __init__(self, directory: Path, kind: str):
        self.directory, self.kind, self.maps = directory, kind, {}

    def get(self, shard: int) -> np.ndarray:
        if shard not in self.maps:
            path = shard_path(self.directory, shard, self.kind)
            try:
                self.maps[shard] = np.load(path, mmap_mode="r")
            except FileNotFoundError:
                raise IntegrityError(f"vector shard {path} is missing but the database lists rows in it; rerun alkit embed after deleting the spec") from None
        return self.maps[shard]

    def gather(self, shards: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(N,) shard and row numbers -> (N, dim) float32, in the given order.

        Rows are copied shard by shard into one float16 buffer (a plain slice where a shard's
        rows and their output positions are both contiguous, the usual case for ids in
        ascending order, else one `np.take`), then widened to float32 in one pass.
        """
        if len(shards) == 0:
            return np.zeros((0, 0), dtype=np.float32)
        first = self.get(int(shards[0]))
        stored = np.empty((len(shards), first.shape[1]), dtype=first.dtype)
        for shard in np.unique(shards):
            where = np.flatnonzero(shards == shard)
            source, wanted = self.get(int(shard)), rows[where]
            block = source[wanted[0] : wanted[-1] + 1] if _is_run(wanted) else np.take(source, wanted, axis=0)
            if _is_run(where):
                stored[where[0] : where[-1] + 1] = block
            else:
                stored[where] = block
        return _as_float32(stored)


def _is_run(values: np.ndarray) -> bool:
    """True when `values` (non-empty) is first, first + 1, ..., first + n - 1."""
    return bool(values[-1] - values[0] == len(values) - 1 and (len(values) < 3 or (np.diff(values) == 1).all()))


def _as_float32(stored: np.ndarray) -> np.ndarray:
    """A float32 copy of `stored`. torch's float16 -> float32 conversion is vectorised (~8x
    numpy's on the dev machine: 8 vs 64 ms per 51M values), so it is used when torch is
    already imported (scoring imports it anyway); importing it here would cost more than it saves."""
    if stored.dtype == np.float32:
        return stored
    if "torch" in sys.modules and stored.dtype == np.float16:
        import torch

        out = np.empty(stored.shape, dtype=np.float32)
        torch.from_numpy(out).copy_(torch.from_numpy(stored))
        return out
    return stored.astype(np.float32)


class _CombinedReader:
    """Several kinds of one spec read side by side: columns concatenated in the given order."""

    def __init__(self, readers: list[_ShardReader]):
        self.readers = readers

    def gather(self, shards: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.concatenate([reader.gather(shards, rows) for reader in self.readers], axis=1)


def _reader(project, spec_id: int, kind: str) -> tuple[_ShardReader | _CombinedReader, int]:
    if kind not in VECTOR_KINDS and kind not in COMBINED_KINDS:
        raise ValueError(f"kind must be one of {VECTOR_KINDS + tuple(COMBINED_KINDS)}, got {kind!r}")
    with project.engine.connect() as connection:
        spec = spec_row(connection, spec_id)
    directory = spec_directory(project, spec.key)
    parts = COMBINED_KINDS.get(kind, (kind,))
    dims = []
    for part in parts:
        base = VARIANCE_KINDS.get(part, part)
        dim = spec.dim if base == "embedding" else spec.phi_dim
        if dim is None:
            raise StateError(f"embedding spec {spec.name!r} ({spec.kind}) has no {part} vectors; BayesVLM needs an open_clip spec")
        if part in VARIANCE_KINDS and not (spec.spec or {}).get("cvp_blocks"):
            raise StateError(
                f"embedding spec {spec.name!r} has no {part} vectors (it was not embedded with CVP); "
                "run alkit embed --cvp-blocks K for vectors with variances"
            )
        dims.append(int(dim))
    if len(parts) == 1:
        return _ShardReader(directory, kind), dims[0]
    return _CombinedReader([_ShardReader(directory, part) for part in parts]), sum(dims)


def _row_query(spec_id: int, split: str | None, status: str | Iterable[str] | None):
    query = sa.select(embeddings.c.image_id, embeddings.c.shard, embeddings.c.row).where(embeddings.c.spec_id == spec_id)
    if split is not None or status is not None:
        query = query.join(images, images.c.id == embeddings.c.image_id)
        if split is not None:
            query = query.where(images.c.split == split)
        if status is not None:
            statuses = [status] if isinstance(status, str) else [str(s) for s in status]
            query = query.where(images.c.status.in_(statuses))
    return query


def _int_table(connection: Connection, query, columns: int) -> np.ndarray:
    """All rows of an integer-only `query` as one `(rows, columns)` int64 array.

    SQLAlchemy executes the statement; the rows are then taken from its DBAPI cursor in one
    `fetchall` (plain tuples built by the driver in C) and converted by numpy in one call, so
    no Python code runs per row. (`np.asarray(list_of_Rows)` probed every Row for the array
    protocols, each probe a failed key lookup: 1.2M of them made loading a 200k pool take
    ~2 s; iterating Rows costs ~1 us each in SQLAlchemy's fetch loop.)
    """
    result = connection.execute(query)
    try:
        cursor = getattr(result, "cursor", None)
        rows = cursor.fetchall() if cursor is not None else [tuple(row) for row in result]
    finally:
        result.close()
    return np.array(rows, dtype=np.int64).reshape(-1, columns)


def _columns(table: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return table[:, 0], table[:, 1], table[:, 2]


def _rows_of_ids(connection: Connection, query, wanted: np.ndarray) -> np.ndarray:
    """`_int_table` rows (image_id first) of `query` restricted to the ascending ids `wanted`.

    Dense id sets (span <= DENSE_SPAN x count, e.g. a chunk of the pool) are read as one id
    range and filtered in numpy; sparse ones through bounded `IN (...)` lists, whose expansion
    costs SQLAlchemy ~1.5 us of Python per id.
    """
    if len(wanted) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    low, high = int(wanted[0]), int(wanted[-1])
    if high - low + 1 <= DENSE_SPAN * len(wanted):
        table = _int_table(connection, query.where(embeddings.c.image_id.between(low, high)), 3)
        return table[np.isin(table[:, 0], wanted, assume_unique=True)]
    parts = [
        _int_table(connection, query.where(embeddings.c.image_id.in_(wanted[start : start + IN_LIST_IDS].tolist())), 3)
        for start in range(0, len(wanted), IN_LIST_IDS)
    ]
    return np.concatenate(parts)


def int_column(connection: Connection, query) -> np.ndarray:
    """The one integer column of `query`'s rows as int64 `(rows,)`, without per-row Python work."""
    return _int_table(connection, query, 1)[:, 0]


def embedded_image_ids(project, spec_id: int, splits: Iterable[str] | None = None) -> np.ndarray:
    """Ascending ids `(N,)` of images with vectors of this spec (only those in `splits` if given)."""
    query = sa.select(embeddings.c.image_id).where(embeddings.c.spec_id == spec_id)
    if splits is not None:
        query = query.join(images, images.c.id == embeddings.c.image_id).where(images.c.split.in_([str(s) for s in splits]))
    with project.engine.connect() as connection:
        return int_column(connection, query.order_by(embeddings.c.image_id))


def load_vectors_in_order(project, spec_id: int, image_ids, *, kind: str = "embedding") -> np.ndarray:
    """Vectors `(len(image_ids), dim)` in the order asked for (ids may repeat); StateError when
    some image has no vectors of this spec."""
    wanted = np.asarray(image_ids, dtype=np.int64)
    found, vectors = load_vectors(project, spec_id, wanted, kind=kind)
    missing = np.setdiff1d(wanted, found)
    if len(missing):
        raise StateError(f"{len(missing)} images (e.g. id {missing[0]}) have no vectors of this spec; run `alkit embed`")
    return vectors[np.searchsorted(found, wanted)]  # load_vectors returns ascending ids


def load_vectors(
    project,
    spec_id: int,
    image_ids: Iterable[int] | None = None,
    *,
    split: str | None = None,
    status: str | Iterable[str] | None = None,
    kind: str = "embedding",
) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 (N,) ascending, vectors float32 (N, D or d)) of one spec.

    `image_ids` restricts to those images (ids without vectors are left out: compare the
    returned ids); `split` / `status` filter on the images table.
    """
    reader, dim = _reader(project, spec_id, kind)
    query = _row_query(spec_id, split, status).order_by(embeddings.c.image_id)
    wanted = None if image_ids is None else np.unique(np.fromiter(image_ids, dtype=np.int64))
    with project.engine.connect() as connection:
        if wanted is None:
            table = _int_table(connection, query, 3)
        else:
            table = _rows_of_ids(connection, query, wanted)
    ids, shards, positions = _columns(table)
    if len(ids) == 0:
        return ids, np.zeros((0, dim), dtype=np.float32)
    return ids, reader.gather(shards, positions)


def iter_vector_chunks(
    project,
    spec_id: int,
    *,
    split: str | None = None,
    status: str | Iterable[str] | None = None,
    kind: str = "embedding",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (ids (n,), vectors float32 (n, dim)) chunks in ascending id order; memory ~ chunk_rows."""
    reader, _ = _reader(project, spec_id, kind)
    last = -1
    while True:
        query = _row_query(spec_id, split, status).where(embeddings.c.image_id > last)
        with project.engine.connect() as connection:
            table = _int_table(connection, query.order_by(embeddings.c.image_id).limit(chunk_rows), 3)
        if len(table) == 0:
            return
        ids, shards, positions = _columns(table)
        yield ids, reader.gather(shards, positions)
        last = int(ids[-1])
