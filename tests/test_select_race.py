"""Atomic rounds: concurrent `select` runs never put one image in two open rounds.

The children meet at a barrier just before recording their rounds, so both have scored the
same pool and chosen the same images; the database must let exactly one claim them.
"""

from __future__ import annotations

import multiprocessing
import subprocess
import sys

import numpy as np
import pytest
import sqlalchemy as sa

from alkit.errors import StateError

PAIRS = 12  # repetitions; the old read-then-write check shared images in about 1 of 10


def _make_pool(cli, make_images, tmp_path, *init_args):
    paths = make_images(24)
    vectors = np.random.default_rng(1).normal(size=(len(paths), 8)).astype(np.float32)
    npz = tmp_path / "emb.npz"
    np.savez(npz, paths=np.array([str(p) for p in paths]), embeddings=vectors)
    assert cli("init", *init_args).exit_code == 0
    assert cli("add", str(paths[0].parent)).exit_code == 0
    assert cli("classes", "set", "a", "b").exit_code == 0
    assert cli("embed", "--from", str(npz), "--name", "synthetic").exit_code == 0
    return cli.project_dir


@pytest.fixture
def embedded_pool(cli, make_images, tmp_path):
    return _make_pool(cli, make_images, tmp_path)


def _engine(project_dir):
    from alkit.project import open_project

    return open_project(project_dir).engine


def _select_at_barrier(project_dir, barrier, results, seed):
    from alkit.project import open_project
    from alkit.workflows import select

    original = select._record_round

    def record_after_barrier(*args, **kwargs):
        barrier.wait(timeout=60)
        return original(*args, **kwargs)

    select._record_round = record_after_barrier
    try:
        result = select.select_round(open_project(project_dir), select.SelectSettings(budget=10, strategy="random", seed=seed))
        results.put(("ok", [item.image_id for item in result.items]))
    except StateError as error:
        results.put(("state", str(error)))
    except BaseException as error:  # noqa: BLE001 - reported to the parent as a failure
        results.put(("crash", repr(error)))


def _rounds(project_dir):
    engine = _engine(project_dir)
    with engine.connect() as connection:
        items = connection.execute(sa.text("SELECT round_id, image_id FROM round_items")).all()
        selected = connection.execute(sa.text("SELECT count(*) FROM images WHERE status = 'selected'")).scalar_one()
        rounds = connection.execute(sa.text("SELECT count(*) FROM rounds")).scalar_one()
    engine.dispose()
    return items, selected, rounds


def _reopen_everything(project_dir):
    engine = _engine(project_dir)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM round_items"))
        connection.execute(sa.text("DELETE FROM rounds"))
        connection.execute(sa.text("UPDATE images SET status = 'embedded' WHERE status = 'selected'"))
    engine.dispose()


def test_two_concurrent_selects_never_share_images(embedded_pool):
    _race(embedded_pool, PAIRS)


def test_two_concurrent_selects_never_share_images_on_postgresql(pg_url, cli, make_images, tmp_path):
    from pgserver import fresh_database

    project_dir = _make_pool(cli, make_images, tmp_path, "--db", fresh_database(pg_url, "select_race"))
    _race(project_dir, PAIRS // 2)


def _race(project_dir, pairs):
    import alkit.workflows.select  # noqa: F401 - imported before forking so the children start fast

    embedded_pool = project_dir
    context = multiprocessing.get_context("fork")
    for pair in range(pairs):
        barrier, results = context.Barrier(2), context.Queue()
        children = [context.Process(target=_select_at_barrier, args=(embedded_pool, barrier, results, 7)) for _ in range(2)]
        for child in children:
            child.start()
        outcomes = [results.get(timeout=120) for _ in children]
        for child in children:
            child.join(timeout=60)
        kinds = sorted(kind for kind, _ in outcomes)
        assert kinds == ["ok", "state"], (pair, outcomes)
        message = next(detail for kind, detail in outcomes if kind == "state")
        assert "concurrent" in message and "nothing was recorded" in message
        items, selected, rounds = _rounds(embedded_pool)
        image_ids = [image_id for _, image_id in items]
        assert rounds == 1 and len(image_ids) == 10 == len(set(image_ids)) == selected, (pair, items)
        _reopen_everything(embedded_pool)


def test_concurrent_select_commands_both_finish_without_overlap(embedded_pool):
    """The real CLI, twice at once with different seeds: either both rounds are disjoint, or one
    fails with exit 5 and records nothing."""
    command = [sys.executable, "-m", "alkit_cli.main", "--project", str(embedded_pool), "select", "--budget", "8", "--strategy", "random"]
    processes = [subprocess.Popen([*command, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for seed in (1, 2)]
    codes = [process.wait(timeout=300) for process in processes]
    errors = [process.stderr.read() for process in processes]
    assert set(codes) <= {0, 5}, errors
    items, selected, rounds = _rounds(embedded_pool)
    image_ids = [image_id for _, image_id in items]
    assert rounds == codes.count(0) and len(image_ids) == len(set(image_ids)) == selected == 8 * codes.count(0)
