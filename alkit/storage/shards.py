"""Writing vector shards: float16 `.npy` files, durable before the database lists their rows.

Layout under `<project>/.alkit/vectors/<spec key>/`:
    00000001.embedding.npy   (n, D) float16, unit-norm image embeddings
    00000001.phi.npy         (n, d) float16, input of the image projection (open_clip specs)
    00000001.embedding_var.npy, 00000001.phi_var.npy   their diagonal variances (specs embedded
                             with `--cvp-blocks k`, `alkit.workflows.cvp_embed`; no other spec has them)
    lock                     held (flock) by the one process writing this spec
(plus the tensor files of `alkit.storage.spec_files`).

Crash safety: a shard is written to a temporary name, fsynced and renamed, and only then are
its `embeddings` rows (spec_id, image_id, shard, row) inserted in one transaction. A shard
file without rows (killed between the two steps) is deleted by `collect_garbage` at the next
run; a row never points at a missing or half-written file.

Concurrent writers: on SQLite one process writes a spec at a time (`spec_lock`, a flock on
the folder). On PostgreSQL several processes (on one or more hosts sharing the project
folder) may embed the same spec at once: each claims pending images (see
`alkit.storage.work_queue`) and holds the claim until the transaction that records their
rows commits; shard numbering, shard writing and `collect_garbage` are serialised by a
transaction-scoped advisory lock per spec (`lock_spec_writes`), so a fresh shard is never
collected and two writers never pick the same number.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Protocol

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alkit.atomic import atomic_write
from alkit.errors import LockedError
from alkit.storage.db import utcnow
from alkit.storage.inserts import insert_ignoring_conflicts
from alkit.storage.schema import ImageStatus, embeddings, images

VECTOR_KINDS = ("embedding", "phi", "embedding_var", "phi_var")
VARIANCE_KINDS = {"embedding_var": "embedding", "phi_var": "phi"}  # kind -> the kind it is the variance of
# kinds read as several stored kinds side by side (columns concatenated): BayesVLM with CVP's phi variance
COMBINED_KINDS = {"phi+phi_var": ("phi", "phi_var")}
SHARD_ROWS = 1024  # default images per shard file and per DB transaction
STORAGE_DTYPE = np.float16  # half the disk and page cache of float32; unit vectors lose ~1e-3
SHARD_FILE = re.compile(r"^(\d{8})\.(embedding|phi|embedding_var|phi_var)\.npy$")
ADVISORY_NAMESPACE = 0x616C6B  # "alk": first key of alkit's PostgreSQL advisory locks
STALE_TEMPORARY_SECONDS = 3600.0  # a temporary file this old belongs to a dead writer


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
    """A shard number used neither by a row nor by a file on disk (orphans included)."""
    in_db = connection.execute(sa.select(sa.func.max(embeddings.c.shard)).where(embeddings.c.spec_id == spec_id)).scalar()
    on_disk = [int(m.group(1)) for m in map(SHARD_FILE.match, os.listdir(directory)) if m]
    return max([int(in_db or 0), *on_disk]) + 1


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


def drop_spec_rows(connection: Connection, spec_id: int) -> int:
    """Forget every vector row of a spec (its shard files become garbage for `collect_garbage`);
    returns the rows deleted. Used when a spec's vectors must all be recomputed (CVP recalibration)."""
    lock_spec_writes(connection, spec_id)
    return int(connection.execute(embeddings.delete().where(embeddings.c.spec_id == spec_id)).rowcount or 0)


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


def writer_lock(engine: Engine, directory: Path):
    """SQLite: one writer per spec (flock). PostgreSQL: none; claims and the advisory write
    lock let several processes share the spec."""
    return contextlib.nullcontext() if concurrent_writers(engine) else spec_lock(directory)


# --- buffered writing ----------------------------------------------------------------------


@dataclass
class WriteTally:
    """What the writers of one run stored: vectors, shard files and rejected images."""

    embedded: int = 0
    shards_written: int = 0
    rejected: list[dict] = field(default_factory=list)  # {image_id, reason}


class OpenTransaction(Protocol):
    """A claim's transaction (`alkit.storage.work_queue`): rows written in it commit with it."""

    connection: Connection

    def commit(self) -> None: ...


class ShardWriter:
    """Buffers rows; `flush` writes one shard durably, then its DB rows in one transaction.

    With a claim (PostgreSQL), the rows go into the claim's transaction, which holds the
    row locks on its images and, from the shard number on, the spec's write lock; its
    commit makes the images done and releases both at once.
    """

    def __init__(self, engine: Engine, spec_id: int, directory: Path, tally: WriteTally):
        self.engine, self.spec_id, self.directory, self.tally = engine, spec_id, directory, tally
        self.ids: list[np.ndarray] = []
        self.arrays: dict[str, list[np.ndarray]] = {}
        self.rejected: list[tuple[int, str]] = []
        self.rows = 0

    def add(self, ids: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        self.ids.append(ids)
        for kind, array in arrays.items():
            self.arrays.setdefault(kind, []).append(array.astype(STORAGE_DTYPE))
        self.rows += len(ids)

    def _record(self, connection: Connection, ids: np.ndarray, shard: int | None, now) -> None:
        if len(ids):
            record_shard(connection, self.spec_id, shard, ids.tolist())
            connection.execute(
                images.update()
                .where(images.c.id.in_(ids.tolist()), images.c.status == ImageStatus.REGISTERED.value)
                .values(status=ImageStatus.EMBEDDED.value, updated_at=now)
            )
        for image_id, reason in self.rejected:
            connection.execute(
                images.update()
                .where(images.c.id == image_id)
                .values(status=ImageStatus.REJECTED.value, error_reason=reason, updated_at=now)
            )

    def flush(self, claim: OpenTransaction | None = None) -> None:
        if not self.rows and not self.rejected:
            if claim is not None:
                claim.commit()
            return
        now = utcnow()
        ids = np.concatenate(self.ids) if self.ids else np.zeros(0, dtype=np.int64)
        arrays = {kind: np.concatenate(parts) for kind, parts in self.arrays.items()}
        shard = None
        if claim is not None:
            connection = claim.connection
            if len(ids):
                lock_spec_writes(connection, self.spec_id)  # held until the commit below
                shard = next_shard(connection, self.spec_id, self.directory)
                write_shard(self.directory, shard, arrays)
            self._record(connection, ids, shard, now)
            claim.commit()
        else:
            if len(ids):
                with self.engine.connect() as connection:
                    shard = next_shard(connection, self.spec_id, self.directory)
                write_shard(self.directory, shard, arrays)
            with self.engine.begin() as connection:
                self._record(connection, ids, shard, now)
        if len(ids):
            self.tally.shards_written += 1
            self.tally.embedded += len(ids)
        self.tally.rejected.extend({"image_id": image_id, "reason": reason} for image_id, reason in self.rejected)
        self.ids, self.arrays, self.rejected, self.rows = [], {}, [], 0
