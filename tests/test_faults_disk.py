"""Disk trouble: a database locked by another writer, a full disk, a read-only project.

Chosen behaviour for a locked SQLite database: alkit waits up to its busy timeout
(`alkit.storage.db.SQLITE_BUSY_TIMEOUT_MS`, 30 s; lowered here) and then fails with one line
and exit code 8 (locked). A full or read-only disk fails with one line and exit code 3;
committed work is kept and the rerun (after space is freed) completes.

Real tmpfs mounts are used where this process may mount (root in a permissive container);
elsewhere the same tests simulate the failing write in-process.
"""

from __future__ import annotations

import errno
import sqlite3
import threading
import time

import numpy as np
import pytest

from faults_support import (
    check_invariants, compare, init_pool, read_only_view, remount, snapshot, tmpfs, vectors_by_path, write_npz, write_tiny_pngs,
)


@pytest.fixture
def low_busy_timeout(monkeypatch):
    import alkit.storage.db as db

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 300)
    return 300


def _hold_exclusive(db_path, seconds: float) -> threading.Thread:
    """Another writer: BEGIN EXCLUSIVE on its own connection, released after `seconds`."""
    started = threading.Event()

    def hold() -> None:
        connection = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        connection.execute("BEGIN EXCLUSIVE")
        started.set()
        time.sleep(seconds)
        connection.execute("ROLLBACK")
        connection.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert started.wait(10)
    return thread


def test_locked_database_fails_with_one_line_after_the_busy_timeout(cli, tmp_path, low_busy_timeout):
    images = write_tiny_pngs(tmp_path / "imgs", 5)
    assert cli("init").exit_code == 0
    holder = _hold_exclusive(cli.project_dir / "alkit.db", 2.0)
    result = cli("add", str(images[0].parent))
    assert result.exit_code == 8, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "locked" in lines[0] and "Traceback" not in result.output
    assert "300 ms" in lines[0]
    holder.join()
    assert snapshot(cli.project_dir)["images"] == []  # nothing half-written
    again = cli("add", str(images[0].parent), "--json")
    assert again.exit_code == 0 and len(snapshot(cli.project_dir)["images"]) == 5


def test_locked_database_shorter_than_the_busy_timeout_is_waited_for(cli, tmp_path, monkeypatch):
    import alkit.storage.db as db

    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 5000)
    images = write_tiny_pngs(tmp_path / "imgs", 5)
    assert cli("init").exit_code == 0
    holder = _hold_exclusive(cli.project_dir / "alkit.db", 0.4)
    result = cli("add", str(images[0].parent), "--json")
    holder.join()
    assert result.exit_code == 0, result.output
    assert len(snapshot(cli.project_dir)["images"]) == 5


def _failing_atomic_write(monkeypatch, code: int, fail_on: int):
    """Make the `fail_on`-th atomic write die half-way with OSError(code), like a full disk."""
    import alkit.storage.shards as shards

    original = shards.atomic_write
    calls = {"n": 0}

    def atomic_write(path, write):
        calls["n"] += 1
        if calls["n"] != fail_on:
            return original(path, write)

        def half(handle):
            handle.write(b"\x93NUMPY partial")
            raise OSError(code, "No space left on device" if code == errno.ENOSPC else "Read-only file system", str(path))

        return original(path, half)

    monkeypatch.setattr(shards, "atomic_write", atomic_write)
    return calls


@pytest.fixture(scope="module")
def embed_inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("disk")
    images = write_tiny_pngs(base / "imgs", 40)
    npz = write_npz(base / "e.npz", images, dim=16)
    clean = base / "clean"
    init_pool(clean, images, npz)
    return images, npz, snapshot(clean), vectors_by_path(clean)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_failing_shard_write_is_one_line_no_corruption_and_the_rerun_completes(cli, embed_inputs, monkeypatch, code):
    images, npz, clean, clean_vectors = embed_inputs
    init_pool(cli.project_dir, images)
    calls = _failing_atomic_write(monkeypatch, code, fail_on=3)
    result = cli("embed", "--from", str(npz), "--name", "imported", "--shard-rows", "8")
    assert calls["n"] == 3
    assert result.exit_code == 3, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and ("No space left" in lines[0] or "Read-only" in lines[0]) and "rerun" in lines[0]
    partial = snapshot(cli.project_dir)
    assert len(partial["embeddings"]) == 16  # the two shards written before the failure, nothing of the third
    monkeypatch.undo()
    rerun = cli("embed", "--from", str(npz), "--name", "imported", "--shard-rows", "8", "--json")
    assert rerun.exit_code == 0, rerun.output
    assert check_invariants(cli.project_dir) == []  # the half-written temporary shard was collected
    assert compare(clean, snapshot(cli.project_dir)) == (0, 0)
    got = vectors_by_path(cli.project_dir)
    for path, vector in clean_vectors.items():
        np.testing.assert_array_equal(got[path], vector)


def test_failing_posterior_write_leaves_no_row_and_refit_works(cli, embed_inputs, monkeypatch, tmp_path):
    import safetensors.numpy

    images, npz, _, _ = embed_inputs
    init_pool(cli.project_dir, images, npz)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    for writer in ("save_file", "save"):  # the posterior is serialised by one of them, then written
        monkeypatch.setattr(safetensors.numpy, writer, full)
    result = cli("fit", "--json")
    assert result.exit_code == 3 and "No space left" in result.stderr, result.output
    assert snapshot(cli.project_dir)["posteriors"] == []
    monkeypatch.undo()
    assert cli("fit", "--json").exit_code == 0
    assert snapshot(cli.project_dir)["posteriors"] == [0]
    assert cli("select", "--budget", "4", "--json").exit_code == 0


def _cli_at(directory):
    from typer.testing import CliRunner

    from alkit_cli.main import app

    return lambda *args: CliRunner().invoke(app, ["--project", str(directory), *args], catch_exceptions=False)


def test_real_full_tmpfs(embed_inputs, monkeypatch, tmp_path):
    """On a real 1 MiB tmpfs (when mounting is allowed; else the failure is simulated) the
    import runs out of space: one line, exit 3, nothing half-recorded; after the filesystem
    is grown the rerun stores every vector."""
    images, _, _, _ = embed_inputs
    big_npz = write_npz(tmp_path / "big.npz", images, dim=16384)  # 40 x 16384 x 2 B = 1.3 MiB of shards
    mountpoint = tmp_path / "mnt"
    with tmpfs(mountpoint, "1m") as mounted:
        directory = mountpoint / "project"
        init_pool(directory, images)
        run = _cli_at(directory)
        if not mounted:
            _failing_atomic_write(monkeypatch, errno.ENOSPC, fail_on=2)
        full = run("embed", "--from", str(big_npz), "--name", "big", "--shard-rows", "10")
        assert full.exit_code == 3, full.output
        assert "No space left" in full.stderr or "disk is full" in full.stderr, full.stderr
        assert len(full.stderr.strip().splitlines()) == 1
        assert check_invariants(directory) == []  # the partial temporary shard was removed at once
        done_before = len(snapshot(directory)["embeddings"])
        assert done_before < len(images) and done_before % 10 == 0  # whole shards only

        if mounted:
            remount(mountpoint, "size=4m")
        else:
            monkeypatch.undo()
        rerun = run("embed", "--from", str(big_npz), "--name", "big", "--shard-rows", "10", "--json")
        assert rerun.exit_code == 0, rerun.output
        assert check_invariants(directory) == []
        assert len(snapshot(directory)["embeddings"]) == len(images)
        assert len(vectors_by_path(directory)) == len(images)


def test_read_only_project_directory(embed_inputs, monkeypatch, tmp_path):
    """A read-only view of the project (bind mount; simulated EROFS where mounting is not
    allowed): commands fail with one line (exit 3, also when SQLite cannot even open the
    database), nothing changes, and the writable project then completes."""
    images, npz, _, _ = embed_inputs
    directory = tmp_path / "project"
    init_pool(directory, images)
    before = snapshot(directory)
    with read_only_view(directory, tmp_path / "ro") as mounted:
        target = tmp_path / "ro" if mounted else directory
        run = _cli_at(target)
        if not mounted:
            _failing_atomic_write(monkeypatch, errno.EROFS, fail_on=1)
        status = run("status", "--json")  # SQLite in WAL mode may not even open a read-only database
        assert status.exit_code in (0, 3), status.output
        if status.exit_code == 3:
            assert "cannot open database" in status.stderr and "permissions" in status.stderr
        result = run("embed", "--from", str(npz), "--name", "imported", "--shard-rows", "8")
        assert result.exit_code == 3, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in result.output
        assert any(word in lines[0].lower() for word in ("read-only", "readonly", "permissions")), lines[0]
    monkeypatch.undo()
    assert snapshot(directory) == before
    assert check_invariants(directory) == []
    rerun = _cli_at(directory)("embed", "--from", str(npz), "--name", "imported", "--json")
    assert rerun.exit_code == 0 and len(snapshot(directory)["embeddings"]) == len(images)
