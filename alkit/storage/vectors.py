"""Vector storage: float16 `.npy` shards memory-mapped on read; the database says which rows
are complete.

Layout under `<project>/.alkit/vectors/<spec key>/`:
    00000001.embedding.npy   (n, D) float16, unit-norm image embeddings
    00000001.phi.npy         (n, d) float16, input of the image projection (open_clip specs)
    projections.safetensors  P (d, D), Q (d_t, D), [P_bias, Q_bias], logit_scale (log s), [logit_bias]
    text-<classes key>.safetensors   text_emb (K, D) unit-norm, [psi (K, d_t)] for one class list
    lock                     held (flock) by the one process writing this spec

Crash safety: a shard is written to a temporary name, fsynced and renamed, and only then are
its `embeddings` rows (spec_id, image_id, shard, row) inserted in one transaction. A shard
file without rows (killed between the two steps) is deleted by `collect_garbage` at the next
run; a row never points at a missing or half-written file.

Concurrent writers: on SQLite one process writes a spec at a time (`spec_lock`, a flock on
the folder). On PostgreSQL several processes (on one or more hosts sharing the project
folder) may embed the same spec at once: each claims pending images with
`SELECT ... FOR NO KEY UPDATE SKIP LOCKED` (see `alkit.workflows.embed`) and holds the claim
until the transaction that records their rows commits; shard numbering, shard writing and
`collect_garbage` are serialised by a transaction-scoped advisory lock per spec
(`lock_spec_writes`), so a fresh shard is never collected and two writers never pick the
same number.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.atomic import atomic_write
from alkit.errors import IntegrityError, LockedError, StateError
from alkit.storage.db import utcnow
from alkit.storage.pool import insert_ignoring_conflicts
from alkit.storage.schema import embedding_specs, embeddings, images

VECTOR_KINDS = ("embedding", "phi")
STORAGE_DTYPE = np.float16
SHARD_FILE = re.compile(r"^(\d{8})\.(embedding|phi)\.npy$")
PROJECTIONS_FILE = "projections.safetensors"
DEFAULT_CHUNK_ROWS = 65_536
IN_LIST_IDS = 10_000  # ids per `IN (...)` list (below every backend's bound-parameter limit)
DENSE_SPAN = 4  # read an id set as one id range when its span is at most this many times its size


# --- specs -------------------------------------------------------------------------------


def current_spec(connection: Connection) -> sa.Row:
    """The embedding spec marked current; StateError when nothing was embedded yet."""
    row = connection.execute(sa.select(embedding_specs).where(embedding_specs.c.is_current.is_(True))).first()
    if row is None:
        raise StateError("no embeddings yet; run alkit embed")
    return row


def spec_row(connection: Connection, spec_id: int) -> sa.Row:
    row = connection.execute(sa.select(embedding_specs).where(embedding_specs.c.id == spec_id)).first()
    if row is None:
        raise StateError(f"no embedding spec with id {spec_id}; `alkit status` lists the specs")
    return row


def ensure_spec(connection: Connection, key: str, kind: str, name: str, spec: dict, dim: int, phi_dim: int | None) -> sa.Row:
    """The spec row with `key`, created if new (dims of an existing one must agree)."""
    insert_ignoring_conflicts(
        connection,
        embedding_specs,
        [dict(key=key, kind=kind, name=name, spec=spec, dim=dim, phi_dim=phi_dim, is_current=False, created_at=utcnow())],
    )
    row = connection.execute(sa.select(embedding_specs).where(embedding_specs.c.key == key)).one()
    if row.dim != dim:
        raise IntegrityError(f"embedding spec {row.name!r} stores {row.dim}-dim vectors, got {dim}; use another --name")
    return row


def set_current(connection: Connection, spec_id: int) -> None:
    connection.execute(embedding_specs.update().where(embedding_specs.c.id != spec_id).values(is_current=False))
    connection.execute(embedding_specs.update().where(embedding_specs.c.id == spec_id).values(is_current=True))


def spec_directory(project, key: str) -> Path:
    directory = project.artefact_path("vectors", key, PROJECTIONS_FILE).parent
    return directory


# --- writing -----------------------------------------------------------------------------


def shard_path(directory: Path, shard: int, kind: str) -> Path:
    return directory / f"{shard:08d}.{kind}.npy"


def write_shard(directory: Path, shard: int, arrays: dict[str, np.ndarray]) -> None:
    """Write each kind's (n, *) array as a float16 .npy shard, durably, before any DB row."""
    lengths = {len(array) for array in arrays.values()}
    if len(lengths) != 1:
        raise ValueError(f"shard arrays differ in length: {sorted(lengths)}")
    for kind, array in arrays.items():
        data = np.ascontiguousarray(array, dtype=STORAGE_DTYPE)
        atomic_write(shard_path(directory, shard, kind), lambda handle, data=data: np.save(handle, data))


def record_shard(connection: Connection, spec_id: int, shard: int, image_ids: Iterable[int]) -> int:
    """Insert one row per image of a written shard; returns rows inserted."""
    now = utcnow()
    rows = [dict(spec_id=spec_id, image_id=int(i), shard=shard, row=r, created_at=now) for r, i in enumerate(image_ids)]
    return insert_ignoring_conflicts(connection, embeddings, rows)


def next_shard(connection: Connection, spec_id: int, directory: Path) -> int:
    in_db = connection.execute(sa.select(sa.func.max(embeddings.c.shard)).where(embeddings.c.spec_id == spec_id)).scalar()
    on_disk = [int(m.group(1)) for m in map(SHARD_FILE.match, os.listdir(directory)) if m]
    return max([int(in_db or 0), *on_disk]) + 1


ADVISORY_NAMESPACE = 0x616C6B  # "alk": first key of alkit's PostgreSQL advisory locks
STALE_TEMPORARY_SECONDS = 3600.0


def concurrent_writers(connection_or_engine) -> bool:
    """True where several processes may write one spec at once (PostgreSQL)."""
    return connection_or_engine.dialect.name == "postgresql"


def lock_spec_writes(connection: Connection, spec_id: int) -> None:
    """On PostgreSQL, wait for the spec's write lock until this transaction ends; shard
    numbering, shard files and their rows happen under it. A no-op elsewhere (the
    single writer holds `spec_lock`)."""
    if concurrent_writers(connection):
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:namespace, :spec)"), {"namespace": ADVISORY_NAMESPACE, "spec": int(spec_id)})


def _is_stale_temporary(directory: Path, name: str, concurrent: bool) -> bool:
    """Shard temporaries are written under the write lock, so any one seen while holding it
    is dead. Other temporaries (projections, text features) are written without it: with
    concurrent writers they are removed only once old."""
    if not name.startswith(".tmp-"):
        return False
    if not concurrent or SHARD_FILE.match(name.split("-", 2)[-1]):
        return True
    with contextlib.suppress(FileNotFoundError):
        return time.time() - os.stat(directory / name).st_mtime > STALE_TEMPORARY_SECONDS
    return False


def collect_garbage(connection: Connection, spec_id: int, directory: Path) -> int:
    """Delete shard files no row points at, and temporary files; returns files deleted.

    Call only while holding `spec_lock` (SQLite): another writer's fresh shard has no rows
    yet. On PostgreSQL it takes the spec's write lock itself (until the transaction ends).
    """
    lock_spec_writes(connection, spec_id)
    concurrent = concurrent_writers(connection)
    used = set(connection.execute(sa.select(embeddings.c.shard).where(embeddings.c.spec_id == spec_id).distinct()).scalars())
    deleted = 0
    for name in os.listdir(directory):
        match = SHARD_FILE.match(name)
        if _is_stale_temporary(directory, name, concurrent) or (match and int(match.group(1)) not in used):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(directory / name)
                deleted += 1
    return deleted


@contextlib.contextmanager
def spec_lock(directory: Path) -> Iterator[None]:
    """Exclusive, non-blocking lock on one spec's folder (released when the process dies)."""
    import fcntl

    handle = open(directory / "lock", "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"another alkit process is writing vectors in {directory}; wait for it to finish or stop it"
            ) from None
        yield
    finally:
        handle.close()


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


def _reader(project, spec_id: int, kind: str) -> tuple[_ShardReader, int]:
    if kind not in VECTOR_KINDS:
        raise ValueError(f"kind must be one of {VECTOR_KINDS}, got {kind!r}")
    with project.engine.connect() as connection:
        spec = spec_row(connection, spec_id)
    dim = spec.dim if kind == "embedding" else spec.phi_dim
    if dim is None:
        raise StateError(f"embedding spec {spec.name!r} ({spec.kind}) has no {kind} vectors; BayesVLM needs an open_clip spec")
    return _ShardReader(spec_directory(project, spec.key), kind), int(dim)


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


def embedded_image_ids(project, spec_id: int, *conditions) -> np.ndarray:
    """Ascending ids `(N,)` of images with vectors of this spec; `conditions` filter on `images`."""
    query = sa.select(embeddings.c.image_id).where(embeddings.c.spec_id == spec_id)
    if conditions:
        query = query.join(images, images.c.id == embeddings.c.image_id).where(*conditions)
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


# --- small tensor files (projections, text features) -------------------------------------


def save_tensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    from safetensors.numpy import save

    data = save({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, metadata=metadata)
    atomic_write(path, lambda handle: handle.write(data))


def load_tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


class TextFeatures(NamedTuple):
    """Class-prompt text features of one spec for one class list (any may be None).

    text_emb (K, D) unit-norm; psi (K, d_t) input of the text projection; P (d, D) image
    projection and Q (d_t, D) text projection in open_clip's layout (g = phi @ P,
    h = psi @ Q); logit_scale is open_clip's raw parameter, s = exp(logit_scale).
    """

    text_emb: np.ndarray | None
    psi: np.ndarray | None
    P: np.ndarray | None
    Q: np.ndarray | None
    logit_scale: float | None
