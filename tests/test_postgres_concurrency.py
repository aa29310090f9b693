"""Several `alkit embed` processes and a label writer on one PostgreSQL pool at once.

Each worker claims pending images with FOR NO KEY UPDATE SKIP LOCKED; the test checks that
every image got exactly one vector row (no image embedded twice, none missing), that the
label writer's status updates survive, and that the vectors equal a single-process run.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import sqlalchemy as sa

from pgserver import fresh_database


N_IMAGES = 30
N_WORKERS = 2
# The real CLI; all workers start embedding together (after their slow imports), and each
# forward pass is slowed down so the workers' claims interleave.
HARNESS = textwrap.dedent(
    """
    import os, sys, time
    from alkit.embedding.tiny import register_config
    register_config()
    import alkit.embedding.encode as encode
    original = encode.encode_batch
    def slow_encode_batch(*args, **kwargs):
        time.sleep(0.1)
        return original(*args, **kwargs)
    encode.encode_batch = slow_encode_batch
    from alkit_cli.main import app
    ready, go = sys.argv[1], sys.argv[2]
    open(ready, "w").close()
    while not os.path.exists(go):
        time.sleep(0.02)
    app(sys.argv[3:])
    """
)


def test_concurrent_embed_workers_and_label_writer(pg_url, runner, tmp_path, make_images):
    from alkit.embedding.tiny import TINY_VIT, register_config
    from alkit.project import init_project, open_project
    from alkit.storage.schema import embeddings, images
    from alkit.storage.vectors import load_vectors
    from alkit.workflows.embed import embed_images
    from alkit.workflows.ingest import add_images
    from alkit_cli.main import app

    register_config()
    url = fresh_database(pg_url, "concurrent")
    paths = [str(p) for p in make_images(N_IMAGES, size=(40, 30))]
    directory = tmp_path / "pgproject"
    project_flag = ["--project", str(directory)]
    assert runner.invoke(app, [*project_flag, "init", "--db", url]).exit_code == 0
    project = open_project(directory)
    add_images(project, paths, show_progress=False)
    assert runner.invoke(app, [*project_flag, "classes", "set", "a", "b"]).exit_code == 0

    args = [*project_flag, "embed", "--model", TINY_VIT, "--pretrained", "none", "--workers", "0", "--batch-size", "2", "--shard-rows", "4",
            "--no-progress", "--json"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{k}" for k in range(N_WORKERS)]
    workers = [
        subprocess.Popen([sys.executable, "-c", HARNESS, str(ready[k]), str(go), *args], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for k in range(N_WORKERS)
    ]
    deadline = time.monotonic() + 90
    while not all(r.exists() for r in ready) and time.monotonic() < deadline:
        assert all(w.poll() is None for w in workers), [w.communicate() for w in workers]
        time.sleep(0.05)
    go.touch()

    # the concurrent writer: labels for the first ten images, re-imported (updated) while embedding
    csv = tmp_path / "labels.csv"
    imports = 0
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
        names = "ab" if imports % 2 == 0 else "ba"
        csv.write_text("path,label\n" + "".join(f"{p},{names[i % 2]}\n" for i, p in enumerate(paths[:10])))
        result = runner.invoke(app, [*project_flag, "labels", "import", str(csv), "--json"])
        assert result.exit_code == 0, result.output
        imports += 1
        time.sleep(0.3)  # leave the CPU to the workers
    outputs = [w.communicate(timeout=60) for w in workers]
    assert all(w.returncode == 0 for w in workers), outputs
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    embedded = [r["embedded"] for r in reports]
    assert sum(embedded) == N_IMAGES, embedded  # no image embedded twice, none left out
    assert sum(1 for e in embedded if e > 0) >= 2, embedded  # the workers really shared the pool
    assert imports >= 1

    with project.engine.connect() as connection:
        rows = connection.execute(sa.select(embeddings.c.image_id, embeddings.c.shard, embeddings.c.row)).all()
        statuses = dict(connection.execute(sa.select(images.c.path, images.c.status)).all())
    assert len(rows) == N_IMAGES and len({r[0] for r in rows}) == N_IMAGES
    assert len({(r[1], r[2]) for r in rows}) == N_IMAGES
    vector_dir = next((directory / ".alkit" / "vectors").iterdir())
    shard_files = sorted(vector_dir.glob("*.embedding.npy"))
    assert {int(p.name.split(".")[0]) for p in shard_files} == {r[1] for r in rows}  # no orphan, none missing
    assert sum(len(np.load(p, mmap_mode="r")) for p in shard_files) == N_IMAGES  # no wasted vector rows
    assert [statuses[p] for p in paths[:10]] == ["labeled"] * 10  # the writer's updates were not lost
    assert {statuses[p] for p in paths[10:]} == {"embedded"}

    clean_dir = tmp_path / "clean"
    init_project(clean_dir)
    clean = open_project(clean_dir, {"model": TINY_VIT, "pretrained": "none", "workers": 0, "batch_size": 16})
    add_images(clean, paths, show_progress=False)
    clean_result = embed_images(clean, show_progress=False)
    ids_by_path = {p: i for i, p in enumerate(paths)}
    with project.engine.connect() as connection:
        pg_paths = dict(connection.execute(sa.select(images.c.id, images.c.path)).all())
    with clean.engine.connect() as connection:
        clean_paths = dict(connection.execute(sa.select(images.c.id, images.c.path)).all())
    for kind in ("embedding", "phi"):
        ids_a, a = load_vectors(project, reports[0]["spec_id"], kind=kind)
        ids_b, b = load_vectors(clean, clean_result.spec_id, kind=kind)
        order_a = np.argsort([ids_by_path[pg_paths[i]] for i in ids_a.tolist()])
        order_b = np.argsort([ids_by_path[clean_paths[i]] for i in ids_b.tolist()])
        np.testing.assert_allclose(a[order_a], b[order_b], rtol=2e-3, atol=2e-3)

    # the rest of the loop on the same PostgreSQL pool
    for command in (["index", "build"], ["select", "--budget", "4", "--json"], ["similar", "--id", "1", "-k", "3", "--json"]):
        result = runner.invoke(app, [*project_flag, *command])
        assert result.exit_code == 0, (command, result.output)
