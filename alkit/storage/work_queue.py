"""The embed work queue: which images still need vectors of a spec, handed out to an engine
and taken back as arrays, written as shards (`alkit.storage.shards.ShardWriter`).

Two queues behind one interface (`WorkQueue`), chosen by `open_work_queue`:

- `SerialQueue`: the single writer of a spec (SQLite, under `spec_lock`); pending images
  streamed by id, one shard per `shard_rows` images or `flush_seconds`.
- `ClaimQueue`: several writers of one spec at once (PostgreSQL); each claim is a
  transaction holding row locks on a run of pending images until their shard is written
  and their rows are committed in that same transaction.

Engines (`alkit.embedding.encode`, `alkit.embedding.ray_engine`) take `items()` (one stream)
or `windows()` (lists, for engines that need their input up front), and give every image
back through `add` (vectors, or a rejection reason).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections import deque
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from alkit.storage.schema import ImageStatus, embeddings, images
from alkit.storage.shards import ShardWriter, WriteTally, concurrent_writers

PAGE_ROWS = 1000  # pending images fetched per query
INITIAL_CLAIM_BATCHES = 4  # first claim, before any throughput is known: this many batches
CLAIM_FLUSH_SHARE = 0.5  # later claims are sized to take about this share of `flush_seconds`

WorkItem = tuple[int, str]  # (image_id, path)


def pending_filter(spec_id: int | None):
    """Images that need vectors of `spec_id`: not rejected and without a row of that spec
    (with `spec_id=None`, a spec not created yet: every image that is not rejected)."""
    condition = images.c.status != ImageStatus.REJECTED.value
    if spec_id is not None:
        done = sa.select(embeddings.c.image_id).where(
            embeddings.c.spec_id == spec_id, embeddings.c.image_id == images.c.id
        )
        condition = sa.and_(condition, ~sa.exists(done))
    return condition


def count_pending(engine: Engine, spec_id: int | None) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(images).where(pending_filter(spec_id))).scalar_one())


def iter_pending(engine: Engine, spec_id: int, page: int = PAGE_ROWS) -> Iterator[WorkItem]:
    """(image_id, path) of images without vectors for the spec, streamed by ascending id."""
    last = -1
    while True:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(images.c.id, images.c.path)
                .where(pending_filter(spec_id), images.c.id > last)
                .order_by(images.c.id)
                .limit(page)
            ).all()
        if not rows:
            return
        for image_id, path in rows:
            yield int(image_id), path
        last = int(rows[-1][0])


class WorkQueue(Protocol):
    """Where an engine's work comes from and where its results go."""

    tally: WriteTally

    def items(self) -> Iterator[WorkItem]:
        """Every pending image, streamed."""

    def windows(self, window_rows: int, max_claims: int) -> Iterator[list[WorkItem]]:
        """Pending images as lists of at most `window_rows` images (SQLite) or `max_claims` claims (PostgreSQL)."""

    def add(self, ids: np.ndarray, arrays: dict[str, np.ndarray], failed: list[tuple[int, str]]) -> None:
        """Vectors of `ids` (rows of each array) and `(image_id, reason)` of images that failed."""

    def finish(self) -> None:
        """Write what is buffered (call once every handed-out image came back)."""

    def close(self) -> None:
        """Release what is still held (abandoned claims become pending again)."""


class SerialQueue:
    """The single writer of a spec (SQLite, under `spec_lock`): pending images streamed by
    id, one shard per `shard_rows` images or `flush_seconds`."""

    def __init__(self, engine: Engine, spec_id: int, directory: Path, tally: WriteTally, shard_rows: int, flush_seconds: float):
        self.engine, self.spec_id, self.tally = engine, spec_id, tally
        self.writer = ShardWriter(engine, spec_id, directory, tally)
        self.shard_rows, self.flush_seconds = shard_rows, flush_seconds
        self.last_flush = time.perf_counter()

    def items(self) -> Iterator[WorkItem]:
        return iter_pending(self.engine, self.spec_id)

    def windows(self, window_rows: int, max_claims: int) -> Iterator[list[WorkItem]]:
        items = self.items()
        while window := list(itertools.islice(items, window_rows)):
            yield window

    def add(self, ids: np.ndarray, arrays: dict[str, np.ndarray], failed: list[tuple[int, str]]) -> None:
        self.writer.rejected.extend(failed)
        if len(ids):
            self.writer.add(ids, arrays)
        if self.writer.rows >= self.shard_rows or time.perf_counter() - self.last_flush > self.flush_seconds:
            self.writer.flush()
            self.last_flush = time.perf_counter()

    def finish(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        pass


class Claim:
    """Images claimed by this process: an open transaction holding their row locks."""

    def __init__(self, connection: Connection, transaction, ids: list[int], writer: ShardWriter | None):
        self.connection, self.transaction, self.ids, self.writer = connection, transaction, ids, writer
        self.remaining = len(ids)

    def commit(self) -> None:
        try:
            self.transaction.commit()
        finally:
            self.connection.close()

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self.transaction.rollback()
        with contextlib.suppress(Exception):
            self.connection.close()


class ClaimQueue:
    """Several writers of one spec at once (PostgreSQL): each claim is a transaction that
    locks a run of pending images (`FOR NO KEY UPDATE SKIP LOCKED`, so other workers skip
    them and label/status writers are only delayed, never lost) until the shard holding
    their vectors is written and their rows are committed in that same transaction. A killed
    worker's connection drops, PostgreSQL rolls its claims back, and the images are pending
    again. Claim sizes follow the throughput so that a claim takes about
    `CLAIM_FLUSH_SHARE * flush_seconds` (between `batch_size` and `shard_rows` images),
    unless `claim_rows` fixes them."""

    def __init__(self, engine: Engine, spec_id: int, directory: Path, tally: WriteTally, shard_rows: int,
                 flush_seconds: float, batch_size: int, claim_rows: int | None = None):
        self.engine, self.spec_id, self.directory, self.tally = engine, spec_id, directory, tally
        self.shard_rows, self.flush_seconds, self.batch_size, self.claim_rows = shard_rows, flush_seconds, batch_size, claim_rows
        self.open: deque[Claim] = deque()
        self.owner: dict[int, Claim] = {}
        self.started = time.perf_counter()
        self.claimed = 0

    def _next_size(self) -> int:
        if self.claim_rows is not None:
            return max(1, self.claim_rows)
        elapsed = time.perf_counter() - self.started
        if self.tally.embedded == 0 or elapsed <= 0:
            return max(1, min(self.shard_rows, INITIAL_CLAIM_BATCHES * self.batch_size))
        wanted = int(self.tally.embedded / elapsed * self.flush_seconds * CLAIM_FLUSH_SHARE)
        return max(1, min(self.shard_rows, max(self.batch_size, wanted)))

    def claim(self, size: int) -> tuple[Claim, list[WorkItem]] | None:
        """Lock up to `size` pending images; None when none is left unclaimed."""
        while True:
            connection = self.engine.connect()
            transaction = connection.begin()
            try:
                rows = connection.execute(
                    sa.select(images.c.id, images.c.path)
                    .where(pending_filter(self.spec_id))
                    .order_by(images.c.id)
                    .limit(size)
                    .with_for_update(skip_locked=True, key_share=True, of=images)
                ).all()
                if not rows:
                    transaction.commit()
                    connection.close()
                    return None
                # The locking statement judged "no vectors yet" on its snapshot; a worker that
                # committed in between is only visible to a new statement (READ COMMITTED).
                ids = [int(r[0]) for r in rows]
                done = set(connection.execute(
                    sa.select(embeddings.c.image_id).where(embeddings.c.spec_id == self.spec_id, embeddings.c.image_id.in_(ids))
                ).scalars())
            except BaseException:
                Claim(connection, transaction, [], None).abandon()
                raise
            items = [(int(i), p) for i, p in rows if int(i) not in done]
            if not items:
                transaction.commit()
                connection.close()
                continue
            writer = ShardWriter(self.engine, self.spec_id, self.directory, self.tally)
            return Claim(connection, transaction, [i for i, _ in items], writer), items

    def windows(self, window_rows: int, max_claims: int) -> Iterator[list[WorkItem]]:
        """Up to `max_claims` claims' items at a time (claims are open transactions)."""
        while True:
            items: list[WorkItem] = []
            for _ in range(max_claims):
                claimed = self.claim(self._next_size())
                if claimed is None:
                    break
                self._adopt(*claimed)
                items += claimed[1]
            if not items:
                return
            yield items

    def _adopt(self, claim: Claim, items: list[WorkItem]) -> None:
        self.open.append(claim)
        for image_id in claim.ids:
            self.owner[image_id] = claim
        self.claimed += len(items)

    def items(self) -> Iterator[WorkItem]:
        while True:
            claimed = self.claim(self._next_size())
            if claimed is None:
                return
            self._adopt(*claimed)
            yield from claimed[1]

    def add(self, ids: np.ndarray, arrays: dict[str, np.ndarray], failed: list[tuple[int, str]]) -> None:
        start = 0
        owners = [self.owner.pop(int(i)) for i in ids]
        for stop in range(1, len(owners) + 1):  # runs of consecutive rows of one claim
            if stop == len(owners) or owners[stop] is not owners[start]:
                claim = owners[start]
                claim.writer.add(ids[start:stop], {kind: array[start:stop] for kind, array in arrays.items()})
                claim.remaining -= stop - start
                start = stop
        for image_id, reason in failed:
            claim = self.owner.pop(int(image_id))
            claim.writer.rejected.append((int(image_id), reason))
            claim.remaining -= 1
        while self.open and self.open[0].remaining == 0:
            claim = self.open.popleft()
            claim.writer.flush(claim)

    def finish(self) -> None:
        if any(claim.remaining for claim in self.open):
            raise RuntimeError(f"{sum(c.remaining for c in self.open)} claimed images came back without a result")
        while self.open:
            claim = self.open.popleft()
            claim.writer.flush(claim)

    def close(self) -> None:
        while self.open:
            self.open.popleft().abandon()
        self.owner.clear()


def open_work_queue(engine: Engine, spec_id: int, directory: Path, tally: WriteTally, shard_rows: int,
                    flush_seconds: float, batch_size: int, claim_rows: int | None = None) -> WorkQueue:
    """Claims where several processes may write the spec at once (PostgreSQL), else the serial queue."""
    if concurrent_writers(engine):
        return ClaimQueue(engine, spec_id, directory, tally, shard_rows, flush_seconds, batch_size, claim_rows)
    return SerialQueue(engine, spec_id, directory, tally, shard_rows, flush_seconds)
