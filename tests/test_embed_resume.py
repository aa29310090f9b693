"""kill -9 during `alkit embed`, then rerun: every image exactly once, same vectors as a clean run."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import sqlalchemy as sa

from alkit.embedding.tiny import TINY_VIT, register_config
from alkit.project import init_project, open_project
from alkit.storage.schema import embeddings
from alkit.storage.vectors import load_vectors
from alkit.workflows.embed import embed_images
from alkit.workflows.ingest import add_images

N_IMAGES = 60
# The real CLI in a subprocess; the harness only registers the tiny config and slows each
# shard write down so the kill lands mid-run (often between a shard file and its rows).
HARNESS = textwrap.dedent(
    """
    import sys, time
    from alkit.embedding.tiny import register_config
    register_config()
    import alkit.storage.shards as shards
    original = shards.write_shard
    def slow_write_shard(*args, **kwargs):
        original(*args, **kwargs)
        time.sleep(0.15)
    shards.write_shard = slow_write_shard
    from alkit_cli.main import app
    app(sys.argv[1:])
    """
)


def _rows(project) -> list[tuple[int, int, int]]:
    with project.engine.connect() as connection:
        return [tuple(r) for r in connection.execute(sa.select(embeddings.c.image_id, embeddings.c.shard, embeddings.c.row))]


def test_kill_9_then_resume(tmp_path, make_images):
    register_config()
    paths = [str(p) for p in make_images(N_IMAGES, size=(40, 30))]
    directory = tmp_path / "killed"
    init_project(directory)
    project = open_project(directory)
    add_images(project, paths, show_progress=False)
    args = ["--project", str(directory), "embed", "--model", TINY_VIT, "--pretrained", "none", "--workers", "0", "--batch-size", "2", "--shard-rows", "2", "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-c", HARNESS, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120  # torch import alone can take 15 s on a loaded machine
    while len(_rows(project)) < 6 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    done_before = len(_rows(project))
    assert 6 <= done_before < N_IMAGES

    resumed = embed_images(open_project(directory, {"model": TINY_VIT, "pretrained": "none", "workers": 0, "batch_size": 2}), show_progress=False)
    assert resumed.embedded == N_IMAGES - done_before  # work already done is not redone
    rows = _rows(project)
    assert len(rows) == N_IMAGES and len({r[0] for r in rows}) == N_IMAGES  # exactly once
    assert len({(r[1], r[2]) for r in rows}) == N_IMAGES  # no two images share a vector row
    vector_dir = next((directory / ".alkit" / "vectors").iterdir())
    on_disk = {int(p.name.split(".")[0]) for p in vector_dir.glob("*.npy")}
    assert on_disk == {r[1] for r in rows}  # orphan shards collected, every referenced shard present
    assert not list(vector_dir.glob(".tmp-*"))

    clean_dir = tmp_path / "clean"
    init_project(clean_dir)
    clean = open_project(clean_dir, {"model": TINY_VIT, "pretrained": "none", "workers": 0, "batch_size": 16})
    add_images(clean, paths, show_progress=False)
    clean_result = embed_images(clean, show_progress=False)
    for kind in ("embedding", "phi"):
        ids_a, a = load_vectors(project, resumed.spec_id, kind=kind)
        ids_b, b = load_vectors(clean, clean_result.spec_id, kind=kind)
        assert ids_a.tolist() == ids_b.tolist()
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)
