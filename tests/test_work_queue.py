"""The embed work queue: serial (SQLite) and claiming (PostgreSQL) queues behind one interface."""

import numpy as np
import sqlalchemy as sa

from alkit.storage import specs
from alkit.storage.schema import ImageStatus, images
from alkit.storage.shards import WriteTally
from alkit.storage.vectors import load_vectors
from alkit.storage.work_queue import ClaimQueue, SerialQueue, count_pending, open_work_queue

DIM = 4
NEVER = 1e9  # flush_seconds that never trigger a time-based flush


def _register(project, count: int) -> list[int]:
    """`count` image rows (no files: the queue never opens images)."""
    from alkit.storage.db import utcnow

    now = utcnow()
    rows = [dict(path=f"/nowhere/{i}.png", split="pool", status="registered", added_at=now, updated_at=now) for i in range(count)]
    with project.engine.begin() as connection:
        connection.execute(images.insert(), rows)
        return sorted(connection.execute(sa.select(images.c.id)).scalars())


def _spec(project):
    with project.engine.begin() as connection:
        return specs.ensure_spec(connection, "q" * 32, "imported", "queue", {}, dim=DIM, phi_dim=None)


def _unit(rng, count: int) -> np.ndarray:
    rows = rng.normal(size=(count, DIM)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_serial_queue_windows_shards_and_rejections(project):
    ids = _register(project, 7)
    spec = _spec(project)
    directory = specs.spec_directory(project, spec.key)
    tally = WriteTally()
    queue = open_work_queue(project.engine, spec.id, directory, tally, shard_rows=4, flush_seconds=NEVER, batch_size=2)
    assert isinstance(queue, SerialQueue)

    windows = list(queue.windows(3, max_claims=99))
    assert [len(w) for w in windows] == [3, 3, 1]
    assert [image_id for window in windows for image_id, _ in window] == ids
    assert windows[0][0][1] == "/nowhere/0.png"

    rng = np.random.default_rng(0)
    vectors = _unit(rng, 6)
    queue.add(np.asarray(ids[:3]), {"embedding": vectors[:3]}, [])
    assert tally.shards_written == 0  # 3 rows < shard_rows: still buffered
    queue.add(np.asarray(ids[3:6]), {"embedding": vectors[3:]}, [(ids[6], "decode failed")])
    queue.finish()
    queue.close()

    assert (tally.embedded, tally.shards_written) == (6, 1)
    assert tally.rejected == [{"image_id": ids[6], "reason": "decode failed"}]
    assert count_pending(project.engine, spec.id) == 0  # rejected images are not pending
    found, stored = load_vectors(project, spec.id)
    assert found.tolist() == ids[:6]
    np.testing.assert_allclose(stored, vectors, atol=1e-3)  # float16 storage
    with project.engine.connect() as connection:
        status = dict(connection.execute(sa.select(images.c.id, images.c.status)).all())
    assert status[ids[6]] == ImageStatus.REJECTED.value
    assert {status[i] for i in ids[:6]} == {ImageStatus.EMBEDDED.value}


def test_claim_queues_hand_out_disjoint_work_and_abandoned_claims_return(pg_url, tmp_path):
    from pgserver import fresh_database

    from alkit.project import init_project, open_project

    directory = tmp_path / "pg_queue"
    init_project(directory, db=fresh_database(pg_url, "work_queue"))
    project = open_project(directory)
    ids = _register(project, 10)
    spec = _spec(project)
    folder = specs.spec_directory(project, spec.key)
    first_tally, second_tally = WriteTally(), WriteTally()
    first = open_work_queue(project.engine, spec.id, folder, first_tally, 8, NEVER, batch_size=2, claim_rows=3)
    second = open_work_queue(project.engine, spec.id, folder, second_tally, 8, NEVER, batch_size=2, claim_rows=3)
    assert isinstance(first, ClaimQueue)
    try:
        first_window = next(first.windows(1000, max_claims=2))  # two claims of 3, held open
        second_window = next(second.windows(1000, max_claims=2))  # skips the locked rows: the other 4
        first_ids = [i for i, _ in first_window]
        second_ids = [i for i, _ in second_window]
        assert first_ids == ids[:6] and second_ids == ids[6:]

        vectors = _unit(np.random.default_rng(1), 6)
        first.add(np.asarray(first_ids), {"embedding": vectors}, [])
        first.finish()
        assert (first_tally.embedded, first_tally.shards_written) == (6, 2)  # one shard per claim
    finally:
        first.close()
        second.close()  # abandons its claims: rolled back, pending again

    assert count_pending(project.engine, spec.id) == 4
    found, stored = load_vectors(project, spec.id)
    assert found.tolist() == ids[:6]
    np.testing.assert_allclose(stored, vectors, atol=1e-3)
    project.engine.dispose()
