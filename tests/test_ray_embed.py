"""`alkit embed --engine ray` on a local Ray (2 CPUs): same shards and rows as the local
engine; an actor killed mid-run neither duplicates nor loses a row."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import sqlalchemy as sa

import ray  # the `test` extra installs ray[data]; a missing ray is a failure, not a skip

N_IMAGES = 12
# The real CLI in a subprocess with the Ray engine; its actor class dies (os._exit, like a
# killed worker process) on the first batch it sees while the marker file does not exist.
HARNESS = textwrap.dedent(
    """
    import os, sys
    from alkit.embedding.tiny import register_config
    register_config()
    import alkit.embedding.ray_engine as engine
    MARKER = os.environ["ALKIT_TEST_KILL_MARKER"]  # a global: pickled with the class into the actors

    class DyingEncoder(engine.RayEncoder):
        def __call__(self, batch):
            if not os.path.exists(MARKER):
                open(MARKER, "w").close()
                os._exit(9)
            return super().__call__(batch)

    engine.RayEncoder = DyingEncoder
    from alkit_cli.main import app
    app(sys.argv[1:])
    """
)


def _rows(project):
    from alkit.storage.schema import embeddings

    with project.engine.connect() as connection:
        return [tuple(r) for r in connection.execute(sa.select(embeddings.c.image_id, embeddings.c.shard, embeddings.c.row))]


def _same_vectors(project_a, spec_a, project_b, spec_b):
    from alkit.storage.vectors import load_vectors

    for kind in ("embedding", "phi"):
        ids_a, a = load_vectors(project_a, spec_a, kind=kind)
        ids_b, b = load_vectors(project_b, spec_b, kind=kind)
        assert ids_a.tolist() == ids_b.tolist()
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)


def _project(root, paths, **settings):
    from alkit.embedding.tiny import TINY_VIT
    from alkit.project import init_project, open_project
    from alkit.workflows.ingest import add_images

    init_project(root)
    add_images(open_project(root), paths, show_progress=False)
    return open_project(root, {"model": TINY_VIT, "pretrained": "none", "workers": 2, "batch_size": 4, **settings})


def test_ray_engine_matches_local_and_survives_a_killed_actor(local_ray, tmp_path, make_images):
    from alkit.embedding.tiny import TINY_VIT, register_config
    from alkit.project import open_project
    from alkit.workflows.embed import embed_images

    register_config()
    paths = [str(p) for p in make_images(N_IMAGES - 1, size=(40, 30))]
    local = _project(tmp_path / "local", paths, workers=0)
    local_result = embed_images(local, show_progress=False, shard_rows=5)
    on_ray = _project(tmp_path / "ray", paths, workers=1)  # one actor: 2 shared cores
    ray_result = embed_images(on_ray, show_progress=False, shard_rows=5, engine="ray")
    assert ray_result.embedded == local_result.embedded == len(paths)
    assert ray_result.spec_key == local_result.spec_key
    _same_vectors(on_ray, ray_result.spec_id, local, local_result.spec_id)
    directory = tmp_path / "ray" / ".alkit" / "vectors" / ray_result.spec_key
    assert {int(p.name.split(".")[0]) for p in directory.glob("*.npy")} == {r[1] for r in _rows(on_ray)}  # same on-disk format

    # a worker (actor) killed mid-run, in a real `alkit embed --engine ray` process; then a rerun
    killed_dir = tmp_path / "killed"
    _project(killed_dir, paths)
    marker = tmp_path / "killed-once"
    args = ["--project", str(killed_dir), "embed", "--engine", "ray", "--model", TINY_VIT, "--pretrained", "none", "--workers", "2",
            "--batch-size", "2", "--shard-rows", "3", "--no-progress", "--json",
            "--address", ray.get_runtime_context().gcs_address]  # the test's cluster: no second Ray start
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ALKIT_TEST_KILL_MARKER": str(marker)}
    run = subprocess.run([sys.executable, "-c", HARNESS, *args], env=env, capture_output=True, text=True, timeout=120)
    assert marker.exists(), run.stderr[-2000:]  # an actor did die
    killed = open_project(killed_dir, {"model": TINY_VIT, "pretrained": "none", "workers": 2, "batch_size": 4})
    rerun = embed_images(killed, show_progress=False, engine="ray")
    rows = _rows(killed)
    assert len(rows) == len(paths) and len({r[0] for r in rows}) == len(paths)  # exactly once
    assert len({(r[1], r[2]) for r in rows}) == len(paths)
    assert rerun.embedded == len(paths) - (len(rows) - rerun.embedded)
    _same_vectors(killed, rerun.spec_id, local, local_result.spec_id)
