"""`alkit select --engine ray` on a local Ray (2 CPUs, one start for the module): two actors,
one shard each, choose exactly the batch of the local engine."""

import json
import shutil

import pytest

import ray  # noqa: F401  (the `test` extra installs ray[data]; a missing ray is a failure, not a skip)

CASES = [  # (strategy, batch mode, near-duplicate threshold)
    ("margin", "top", None), ("margin", "power", None), ("margin", "softmax", None), ("margin", "softrank", None),
    ("entropy", "power", None), ("bald", "power", None),
    ("bald", "softmax", 0.3),  # near-duplicate suppression drops many draws (growth: test_acquisition_sharded)
]


@pytest.fixture
def fitted(cli, imported_project, tmp_path):
    """A fitted project of 80 images in 3 clusters (8 labels), kept as a snapshot to restore."""
    imported_project(count=80, dim=16, noise=0.8, seed=1, labelled_pool=8)
    assert cli("fit").exit_code == 0
    snapshot = tmp_path / "snapshot"
    shutil.copytree(cli.project_dir, snapshot)

    def fresh():
        shutil.rmtree(cli.project_dir)
        shutil.copytree(snapshot, cli.project_dir)
        from alkit.project import open_project

        return open_project(cli.project_dir)

    return fresh


def test_ray_engine_selects_the_local_engines_batch(local_ray, fitted):
    from alkit.workflows.select import SelectSettings, select_round

    for strategy, mode, threshold in CASES:
        # chunks of 16: the 72 unlabelled images are 5 chunks, cut into 2 shards (3 + 2 chunks)
        settings = SelectSettings(budget=6, strategy=strategy, batch_mode=mode, seed=4, samples=32,
                                  dedup_threshold=threshold, chunk_size=16)
        local = select_round(fitted(), settings)
        on_ray = select_round(fitted(), SelectSettings(**{**settings.snapshot(), "like": (), "engine": "ray", "workers": 2}))
        case = (strategy, mode, threshold)
        assert [i.image_id for i in on_ray.items] == [i.image_id for i in local.items], case
        assert [i.score for i in on_ray.items] == pytest.approx([i.score for i in local.items], rel=1e-6), case
        assert len(on_ray.items) == 6 and any(n.startswith("scored on Ray: 2 actors, one shard each") for n in on_ray.notes), case


def test_cli_engine_ray_and_batchbald_refused(local_ray, fitted, cli):
    fitted()
    args = ["select", "--budget", "5", "--strategy", "bald", "--batch-mode", "power", "--seed", "2", "--json"]
    on_ray = cli(*args, "--engine", "ray", "--workers", "2")
    assert on_ray.exit_code == 0, on_ray.output
    fitted()
    local = cli(*args)
    assert [json.loads(l)["id"] for l in on_ray.stdout.splitlines()] == [json.loads(l)["id"] for l in local.stdout.splitlines()]
    refused = cli("select", "--budget", "3", "--strategy", "bald", "--batch-mode", "batchbald", "--engine", "ray")
    assert refused.exit_code == 4 and "not sharded; use --engine local" in refused.output


def test_more_actors_than_the_clusters_cpus_is_a_clear_error(local_ray, fitted):
    from alkit.errors import StateError
    from alkit.workflows.select import SelectSettings, select_round

    settings = SelectSettings(budget=3, strategy="entropy", engine="ray", workers=3, chunk_size=16)  # 5 chunks: 3 shards
    with pytest.raises(StateError, match="--workers 3 needs 3 CPUs but the Ray cluster has 2; lower --workers"):
        select_round(fitted(), settings)
