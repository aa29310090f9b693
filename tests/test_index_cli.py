"""`alkit index build`, `similar`, `dedup` and candidate-restricted `select` on a real FAISS index."""

import json

import numpy as np
import pytest

from alkit.embedding.tiny import TINY_VIT, register_config


@pytest.fixture
def clustered_index_pool(imported_project):
    """40 images in 4 tight clusters (imported embeddings); images 0 and 1 near-identical."""

    def near_identical(data):
        data.vectors[1] = data.vectors[0] + 1e-4

    data = imported_project(count=40, dim=16, names=("a", "b", "c", "d"), noise=0.15, seed=2, edit=near_identical,
                           spec_name="clusters")
    unit = data.vectors / np.linalg.norm(data.vectors, axis=1, keepdims=True)
    return data.pool, unit, data.class_index


def test_index_build_then_loaded_then_extended(cli, clustered_index_pool, make_images, tmp_path):
    first = json.loads(cli("index", "build", "--json").stdout)
    assert first["action"] == "built" and first["rows"] == 40 and first["kind"] == "flat"
    assert json.loads(cli("index", "build", "--json").stdout)["action"] == "loaded"
    extra = make_images(3, folder="extra", start_seed=900)
    npz = tmp_path / "more.npz"
    rng = np.random.default_rng(9)
    paths, unit, _ = clustered_index_pool
    np.savez(npz, paths=np.array([str(p) for p in paths + extra]),
             embeddings=np.concatenate([unit, rng.normal(size=(3, 16))]).astype(np.float32))
    assert cli("embed", "--from", str(npz), "--name", "clusters").exit_code == 0
    extended = json.loads(cli("index", "build", "--json").stdout)
    assert extended["action"] == "extended" and extended["rows"] == 43


def test_similar_by_id_matches_brute_force(cli, clustered_index_pool):
    paths, unit, _ = clustered_index_pool
    rows = [json.loads(l) for l in cli("similar", "--id", "5", "-k", "6", "--json").stdout.splitlines()]
    exact = unit @ unit[4]  # ids are 1-based positions here
    brute_scores = np.sort(exact)[::-1][:6]
    # Tie-aware (images 1 and 2 are near-identical; vectors are stored as float16):
    # the returned scores equal the brute-force top-6, and every returned id truly scores that high.
    np.testing.assert_allclose([r["score"] for r in rows], brute_scores, atol=3e-3)
    np.testing.assert_allclose([exact[r["id"] - 1] for r in rows], brute_scores, atol=3e-3)
    assert rows[0]["id"] == 5 and rows[0]["score"] == pytest.approx(1.0, abs=2e-3)
    by_path = [json.loads(l) for l in cli("similar", str(paths[4]), "-k", "6", "--json").stdout.splitlines()]
    assert [r["id"] for r in by_path] == [r["id"] for r in rows]


def test_text_query_on_imported_embeddings_is_a_clear_error(cli, clustered_index_pool):
    result = cli("similar", "--text", "a cat")
    assert result.exit_code == 5 and "no encoder" in result.stderr


def test_dedup_finds_the_planted_pair(cli, clustered_index_pool):
    paths, unit, _ = clustered_index_pool
    payload = json.loads(cli("dedup", "--threshold", "0.9999", "--json").stdout)
    assert [c["ids"] for c in payload["clusters"]] == [[1, 2]]
    assert payload["clusters"][0]["paths"] == [str(paths[0]), str(paths[1])]


def test_select_like_restricts_to_candidates(cli, clustered_index_pool):
    paths, unit, truth = clustered_index_pool
    result = cli("select", "--budget", "4", "--like", str(paths[2]), "--candidates", "8", "--strategy", "entropy", "--json")
    assert result.exit_code == 0, result.output
    chosen = [json.loads(l)["id"] for l in result.stdout.splitlines()]
    allowed = set((np.argsort(-(unit @ unit[2]))[:9] + 1).tolist())  # the 8 nearest plus the example itself
    assert set(chosen) <= allowed
    assert len(chosen) == 4


def test_text_query_through_a_tiny_open_clip_model(cli, make_images):
    register_config()
    paths = make_images(6, size=(40, 30))
    cli("init")
    cli("add", str(paths[0].parent))
    cli("classes", "set", "cat", "dog")
    assert cli("embed", "--model", TINY_VIT, "--pretrained", "none", "--workers", "0", "--batch-size", "4", "--no-progress").exit_code == 0
    rows = [json.loads(l) for l in cli("similar", "--text", "a photo of a cat", "-k", "3", "--json").stdout.splitlines()]
    assert len(rows) == 3 and all(r["path"] for r in rows)
    scores = [r["score"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    result = cli("select", "--budget", "2", "--query", "a photo of a dog", "--candidates", "4", "--json")
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
