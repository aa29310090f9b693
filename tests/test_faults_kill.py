"""kill -9 at seeded random points during `add`, `embed --from`, `fit` and `select` (real CLI
subprocesses, slowed by the harness so the kill lands mid-work), then rerun: the pool equals a
clean run's. The open_clip embed kill is `test_embed_resume.py`; Label Studio push/pull/sync
kills are in `test_faults_labelstudio.py`.
"""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest

from faults_support import (
    check_invariants,
    compare,
    init_pool,
    kill_after_ready,
    kill_when,
    snapshot,
    start_alkit,
    vectors_by_path,
    write_npz,
    write_tiny_pngs,
)

SEEDS = [11, 12, 13]


def _db_count(project_dir, table: str) -> int:
    import sqlite3

    with sqlite3.connect(project_dir / "alkit.db", timeout=5) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


@pytest.fixture(scope="module")
def pool_files(tmp_path_factory):
    """300 tiny PNGs, 4 exact duplicates, 2 broken files."""
    folder = tmp_path_factory.mktemp("faults-pool") / "images"
    paths = write_tiny_pngs(folder, 300)
    for i in range(4):
        shutil.copy(paths[i], folder / f"zz_dup_{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


@pytest.fixture(scope="module")
def clean_add(pool_files, tmp_path_factory):
    from alkit.project import init_project, open_project
    from alkit.workflows.ingest import add_images

    directory = tmp_path_factory.mktemp("clean-add") / "p"
    init_project(directory)
    add_images(open_project(directory), [str(pool_files)], show_progress=False)
    return snapshot(directory)


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_during_add_then_rerun_equals_a_clean_run(seed, pool_files, clean_add, tmp_path):
    from alkit.project import init_project, open_project
    from alkit.workflows.ingest import add_images

    directory = tmp_path / "p"
    init_project(directory)
    threshold = random.Random(seed).randint(1, 240)
    process = start_alkit(
        directory, "add", str(pool_files),
        patches={"set": {"alkit.workflows.ingest:CHUNK_SIZE": 8}, "slow": {"alkit.workflows.ingest:_record_chunk": 0.02}},
    )
    assert kill_when(process, lambda: _db_count(directory, "images") >= threshold), "add finished before the kill"
    partial = _db_count(directory, "images")
    assert 0 < partial < len(clean_add["images"])
    assert check_invariants(directory) == []

    rerun = add_images(open_project(directory), [str(pool_files)], show_progress=False)
    assert rerun.already_registered >= 1
    assert snapshot(directory) == clean_add
    assert compare(clean_add, snapshot(directory)) == (0, 0)


@pytest.fixture(scope="module")
def embed_setup(pool_files, tmp_path_factory):
    base = tmp_path_factory.mktemp("embed-base")
    images = sorted(p for p in pool_files.glob("img_*.png"))[:120]
    npz = write_npz(base / "e.npz", images, dim=16)
    clean = base / "clean"
    init_pool(clean, images, npz)
    return images, npz, snapshot(clean), vectors_by_path(clean)


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_during_embed_import_then_rerun_equals_a_clean_run(seed, embed_setup, tmp_path):
    from alkit.project import open_project
    from alkit.workflows.embed_import import import_embeddings

    images, npz, clean, clean_vectors = embed_setup
    directory = tmp_path / "p"
    init_pool(directory, images)
    threshold = random.Random(seed).randint(1, 80)
    process = start_alkit(
        directory, "embed", "--from", str(npz), "--name", "imported", "--shard-rows", "4",
        patches={"slow": {"alkit.storage.shards:write_shard": 0.03}},
    )
    assert kill_when(process, lambda: _db_count(directory, "embeddings") >= threshold), "embed finished before the kill"
    assert 0 < _db_count(directory, "embeddings") < len(images)
    assert check_invariants(directory) == []

    result = import_embeddings(open_project(directory), npz, "imported", show_progress=False)
    assert result.already_embedded > 0 and result.embedded + result.already_embedded == len(images)
    assert check_invariants(directory) == []
    assert compare(clean, snapshot(directory)) == (0, 0)
    got = vectors_by_path(directory)
    assert got.keys() == clean_vectors.keys()
    for path, vector in clean_vectors.items():
        np.testing.assert_array_equal(got[path], vector)


@pytest.fixture(scope="module")
def labelled_setup(pool_files, tmp_path_factory):
    """60 images, imported embeddings, 12 CSV labels; the clean fit and select results."""
    from alkit.posterior.io import load_posterior
    from alkit.workflows.fit import fit_posterior
    from alkit.workflows.select import SelectSettings, select_round

    base = tmp_path_factory.mktemp("fit-base")
    images = sorted(p for p in pool_files.glob("img_*.png"))[:60]
    npz = write_npz(base / "e.npz", images, dim=16)
    csv = base / "labels.csv"
    names = ("cat", "dog", "bird")
    csv.write_text("path,label\n" + "".join(f"{p},{names[i % 3]}\n" for i, p in enumerate(images[:12])))
    clean = base / "clean"
    project = init_pool(clean, images, npz, labels_csv=csv)
    fitted = fit_posterior(project)
    selection = select_round(project, SelectSettings(budget=6, seed=0))
    arrays = load_posterior(fitted.path).to_state()[0]
    return images, npz, csv, arrays, sorted(item.path for item in selection.items), snapshot(clean)


def _posterior_dirs_load(directory) -> int:
    """Every posterior row points at a loadable posterior; returns how many rows."""
    import sqlalchemy as sa

    from alkit.posterior.io import load_posterior
    from alkit.project import open_project
    from alkit.storage.schema import posteriors

    project = open_project(directory)
    with project.engine.connect() as connection:
        paths = list(connection.execute(sa.select(posteriors.c.path)).scalars())
    for path in paths:
        load_posterior(path)
    return len(paths)


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_during_fit_then_rerun_gives_the_clean_posterior(seed, labelled_setup, tmp_path):
    from alkit.posterior.io import load_posterior
    from alkit.workflows.fit import fit_posterior

    images, npz, csv, clean_arrays, _, _ = labelled_setup
    directory = tmp_path / "p"
    project = init_pool(directory, images, npz, labels_csv=csv)
    ready = tmp_path / "ready"
    delay = random.Random(seed).uniform(0.0, 0.6)
    process = start_alkit(directory, "fit", "--json", ready_file=ready, patches={"slow": {"safetensors.numpy:save_file": 0.1}})
    kill_after_ready(process, ready, delay)
    assert _posterior_dirs_load(directory) in (0, 1)  # a row never points at a half-written posterior
    fitted = fit_posterior(project)
    arrays = load_posterior(fitted.path).to_state()[0]
    assert arrays.keys() == clean_arrays.keys()
    for name in arrays:
        np.testing.assert_allclose(arrays[name], clean_arrays[name], rtol=1e-6, atol=1e-8)
    assert check_invariants(directory) == []


@pytest.mark.parametrize("seed", SEEDS)
def test_kill_during_select_leaves_no_or_one_whole_round(seed, labelled_setup, tmp_path):
    import sqlalchemy as sa

    from alkit.storage.schema import rounds
    from alkit.workflows.fit import fit_posterior
    from alkit.workflows.select import SelectSettings, select_round

    images, npz, csv, _, clean_chosen, clean = labelled_setup
    directory = tmp_path / "p"
    project = init_pool(directory, images, npz, labels_csv=csv)
    fit_posterior(project)
    ready = tmp_path / "ready"
    delay = random.Random(seed).uniform(0.0, 1.5)
    process = start_alkit(
        directory, "select", "--budget", "6", "--seed", "0", ready_file=ready,
        patches={"slow": {"alkit.workflows.select:_record_round": 0.2}},
    )
    kill_after_ready(process, ready, delay)
    snap = snapshot(directory)
    assert len(snap["rounds"]) in (0, 1)
    if snap["rounds"]:  # all of the round or none of it
        assert snap["rounds"][0] == ("open", clean_chosen)
    assert check_invariants(directory) == []
    with project.engine.connect() as connection:
        has_round = connection.execute(sa.select(sa.func.count()).select_from(rounds)).scalar()
    if not has_round:  # the operator's next run
        select_round(project, SelectSettings(budget=6, seed=0))
    final = snapshot(directory)
    assert final["rounds"] == clean["rounds"] and compare(clean, final) == (0, 0)
    assert json.dumps(final["images"]) == json.dumps(clean["images"])
