"""Vector shards: atomic writes, DB rows as the source of truth, orphan collection, reads."""

import numpy as np
import pytest
import sqlalchemy as sa

from alkit.errors import LockedError, StateError
from alkit.storage.schema import embeddings
from alkit.storage import shards
from alkit.storage import specs
from alkit.storage import vectors as V
from alkit.workflows.ingest import add_images


@pytest.fixture
def spec(project, make_images):
    add_images(project, [str(p) for p in make_images(7)], show_progress=False)
    with project.engine.begin() as connection:
        row = specs.ensure_spec(connection, "k" * 32, "imported", "test", {}, dim=4, phi_dim=3)
        specs.set_current(connection, row.id)
    return row


def _store(project, spec, shard, ids, rng):
    directory = specs.spec_directory(project, spec.key)
    emb, phi = rng.normal(size=(len(ids), 4)), rng.normal(size=(len(ids), 3))
    shards.write_shard(directory, shard, {"embedding": emb, "phi": phi})
    with project.engine.begin() as connection:
        shards.record_shard(connection, spec.id, shard, ids)
    return emb, phi


def test_current_spec_missing_is_a_state_error(project):
    with project.engine.connect() as connection, pytest.raises(StateError, match="run alkit embed"):
        specs.current_spec(connection)


def test_round_trip_across_shards_with_filters_and_chunks(project, spec):
    rng = np.random.default_rng(0)
    e1, p1 = _store(project, spec, 1, [5, 1, 3], rng)
    e2, p2 = _store(project, spec, 2, [2, 7], rng)
    with project.engine.connect() as connection:
        assert specs.current_spec(connection).id == spec.id
    ids, vectors = V.load_vectors(project, spec.id)
    expected = {5: e1[0], 1: e1[1], 3: e1[2], 2: e2[0], 7: e2[1]}
    assert ids.tolist() == [1, 2, 3, 5, 7] and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, np.stack([expected[i] for i in ids]), rtol=1e-3, atol=1e-3)
    ids, phi = V.load_vectors(project, spec.id, [7, 3, 4], kind="phi")  # 4 has no vectors: left out
    assert ids.tolist() == [3, 7]
    np.testing.assert_allclose(phi, np.stack([p1[2], p2[1]]), rtol=1e-3, atol=1e-3)
    assert V.load_vectors(project, spec.id, split="test")[0].shape == (0,)
    chunks = list(V.iter_vector_chunks(project, spec.id, chunk_rows=2, status="registered"))
    assert [c[0].tolist() for c in chunks] == [[1, 2], [3, 5], [7]]
    assert all(c[1].shape[1] == 4 for c in chunks)


def test_orphan_shards_are_collected_and_numbers_never_reused(project, spec):
    rng = np.random.default_rng(1)
    _store(project, spec, 1, [1, 2], rng)
    directory = specs.spec_directory(project, spec.key)
    shards.write_shard(directory, 2, {"embedding": np.ones((2, 4))})  # killed before its rows
    (directory / ".tmp-99-00000003.embedding.npy").write_bytes(b"half")
    with project.engine.begin() as connection:
        assert shards.next_shard(connection, spec.id, directory) == 3
        assert shards.collect_garbage(connection, spec.id, directory) == 2
        assert shards.next_shard(connection, spec.id, directory) == 2
    assert sorted(p.name for p in directory.glob("*.npy")) == ["00000001.embedding.npy", "00000001.phi.npy"]
    with project.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(embeddings)).scalar() == 2


def test_record_shard_ignores_duplicates(project, spec):
    _store(project, spec, 1, [1, 2], np.random.default_rng(2))
    with project.engine.begin() as connection:
        assert shards.record_shard(connection, spec.id, 2, [2, 3]) == 1


def test_spec_lock_is_exclusive(project, spec):
    directory = specs.spec_directory(project, spec.key)
    with shards.spec_lock(directory):
        # flock is per open file description: a second open in this process conflicts too
        with pytest.raises(LockedError, match="another alkit process"):
            with shards.spec_lock(directory):
                pass
    with shards.spec_lock(directory):
        pass


def test_imported_spec_has_no_phi_when_phi_dim_missing(project):
    with project.engine.begin() as connection:
        row = specs.ensure_spec(connection, "x" * 32, "imported", "nophi", {}, dim=4, phi_dim=None)
    with pytest.raises(StateError, match="no phi vectors"):
        V.load_vectors(project, row.id, kind="phi")


def _register_rows(project, count: int) -> list[int]:
    """`count` image rows inserted directly (no files: reads of vectors never open images)."""
    from alkit.storage.db import utcnow
    from alkit.storage.schema import images

    now = utcnow()
    rows = [dict(path=f"/nowhere/{i}.png", split="pool", status="registered", added_at=now, updated_at=now) for i in range(count)]
    with project.engine.begin() as connection:
        connection.execute(images.insert(), rows)
        return sorted(connection.execute(sa.select(images.c.id)).scalars())


@pytest.mark.parametrize("dense_span", [0, 4, 10**9])  # always IN lists / the default / always one id range
def test_bulk_reads_equal_a_per_id_reference(project, monkeypatch, dense_span):
    monkeypatch.setattr(V, "DENSE_SPAN", dense_span)
    monkeypatch.setattr(V, "IN_LIST_IDS", 7)  # several IN lists per read
    all_ids = _register_rows(project, 300)
    with project.engine.begin() as connection:
        spec = specs.ensure_spec(connection, "b" * 32, "imported", "bulk", {}, dim=5, phi_dim=None)
    rng = np.random.default_rng(3)
    stored = [i for i in all_ids if i % 11 != 0]  # some images have no vectors
    scrambled = rng.permutation(stored[:120]).tolist()  # a shard written in random id order
    reference = {}
    for shard, ids in enumerate([scrambled, stored[120:200], stored[200:]], start=1):
        values = rng.normal(size=(len(ids), 5))
        shards.write_shard(specs.spec_directory(project, spec.key), shard, {"embedding": values})
        with project.engine.begin() as connection:
            shards.record_shard(connection, spec.id, shard, ids)
        reference.update(zip(ids, values.astype(np.float16).astype(np.float32)))

    def expect(wanted):
        ids = sorted(set(wanted) & set(reference))
        return np.asarray(ids, dtype=np.int64), np.stack([reference[i] for i in ids]) if ids else np.zeros((0, 5), np.float32)

    cases = [None, all_ids[40:170], all_ids[::37] + [10**6], [all_ids[5]], [stored[3]] * 3 + [stored[150]], []]
    for wanted in cases:
        ids, vectors = V.load_vectors(project, spec.id, wanted)
        want_ids, want_vectors = expect(all_ids if wanted is None else wanted)
        np.testing.assert_array_equal(ids, want_ids)
        assert vectors.dtype == np.float32 and vectors.shape == (len(want_ids), 5)
        np.testing.assert_array_equal(vectors, want_vectors)  # float16 -> float32 is exact
    order = [stored[150], stored[2], stored[150], stored[250]]
    np.testing.assert_array_equal(V.load_vectors_in_order(project, spec.id, order), np.stack([reference[i] for i in order]))
    np.testing.assert_array_equal(V.embedded_image_ids(project, spec.id), np.asarray(stored))
    chunks = list(V.iter_vector_chunks(project, spec.id, chunk_rows=64))
    np.testing.assert_array_equal(np.concatenate([c[1] for c in chunks]), expect(stored)[1])


def test_float16_widening_is_exact_with_and_without_torch(monkeypatch):
    import sys

    import torch  # noqa: F401  (the torch branch runs only when torch is imported)

    values = np.random.default_rng(4).normal(scale=300, size=(257, 33)).astype(np.float16)
    values[0, :3] = [np.inf, -np.inf, 6e-8]  # infinities and a subnormal survive both ways
    with_torch = V._as_float32(values)
    monkeypatch.delitem(sys.modules, "torch")
    without_torch = V._as_float32(values)
    np.testing.assert_array_equal(with_torch, values.astype(np.float32))
    np.testing.assert_array_equal(without_torch, values.astype(np.float32))


def test_int_column_reads_ids_in_query_order(project):
    ids = _register_rows(project, 25)
    from alkit.storage.schema import images

    with project.engine.connect() as connection:
        column = V.int_column(connection, sa.select(images.c.id).order_by(images.c.id.desc()))
        empty = V.int_column(connection, sa.select(images.c.id).where(images.c.id < 0))
    assert column.dtype == np.int64 and column.tolist() == ids[::-1]
    assert empty.shape == (0,)
