"""FAISS index adapter: search against numpy brute force, IVF recall, incremental add, persistence."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import unit_rows

from alkit.errors import InputError, IntegrityError
from alkit.retrieval.errors import (
    DimMismatchError,
    IdsAddedError,
    IdsRemovedError,
    IndexCorruptError,
    IndexMissingError,
    SpecMismatchError,
)
from alkit.retrieval.index import add_to_index, apply_search_settings, build_index, search
from alkit.retrieval.manifest import IDS_FILE, INDEX_FILE, MANIFEST_FILE, ids_checksum
from alkit.retrieval.settings import IndexKind, IndexSettings, choose_kind, default_nlist, resolve_settings
from alkit.retrieval.store import ensure_index, load_index, save_index


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def random_unit(n: int, dim: int, seed: int) -> np.ndarray:
    return unit_rows(np.random.default_rng(seed).standard_normal((n, dim)))


def gaussian_mixture(n: int, dim: int, clusters: int, spread: float, seed: int) -> np.ndarray:
    """Normalised Gaussian mixture: neighbour structure like real embeddings."""
    rng = np.random.default_rng(seed)
    centres = unit_rows(rng.standard_normal((clusters, dim)))
    members = rng.integers(0, clusters, size=n)
    return unit_rows(centres[members] + spread * rng.standard_normal((n, dim)) / np.sqrt(dim))


def global_ids(n: int, seed: int) -> np.ndarray:
    """Ids that are clearly not positions: large, unsorted, gappy."""
    return np.random.default_rng(seed).choice(10**9, size=n, replace=False).astype(np.int64)


def assert_valid_top_k(scores, found, ids, vectors, queries, k):
    """Tie-aware check against brute force: each returned id is a true top-k member.

    Every returned score equals that id's exact score, rows are sorted, ids are distinct, and
    the returned scores equal the reference top-k scores (so swaps among equal scores pass).
    """
    exact = queries.astype(np.float64) @ vectors.astype(np.float64).T  # (Q, N)
    reference = -np.sort(-exact, axis=1)[:, :k]
    position_of = {int(item): position for position, item in enumerate(ids)}
    assert found.shape == scores.shape == (len(queries), k)
    for row in range(len(queries)):
        assert len(set(found[row].tolist())) == k
        assert np.all(np.diff(scores[row]) <= 1e-6)
        true_scores = exact[row, [position_of[int(item)] for item in found[row]]]
        np.testing.assert_allclose(scores[row], true_scores, atol=1e-5)
        np.testing.assert_allclose(true_scores, reference[row], atol=1e-5)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth)]))


def exact_top_ids(ids, vectors, queries, k):
    order = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    return ids[order]


# ---------------------------------------------------------------- search against brute force


@pytest.mark.parametrize("settings", [
    IndexSettings(kind="flat"),
    IndexSettings(kind="ivf", nlist=8, nprobe=8),  # all cells probed: exact
], ids=["flat", "ivf-all-cells"])
def test_exact_search_matches_numpy_brute_force(settings):
    vectors, ids = random_unit(600, 16, seed=1), global_ids(600, seed=2)
    queries = random_unit(25, 16, seed=3)
    index = build_index(ids, vectors, settings)
    scores, found = search(index, queries, k=10)
    assert_valid_top_k(scores, found, ids, vectors, queries, k=10)


def test_centred_ivf_returns_exact_scores_on_data_with_a_shared_direction():
    """IVF stores x - mean; search must add <q, mean> back so scores are true cosines."""
    rng = np.random.default_rng(30)
    shared = 3.0 * unit_rows(rng.standard_normal((1, 16)))
    vectors, ids = unit_rows(shared + rng.standard_normal((600, 16))), global_ids(600, seed=31)
    queries = unit_rows(shared + rng.standard_normal((20, 16)))
    index = build_index(ids, vectors, IndexSettings(kind="ivf", nlist=8, nprobe=8))
    assert np.linalg.norm(index.offset) > 0.5  # the shared direction was really removed
    scores, found = search(index, queries, k=10)
    assert_valid_top_k(scores, found, ids, vectors, queries, k=10)


def test_search_handles_ties_between_duplicate_vectors():
    base = random_unit(50, 8, seed=4)
    vectors = np.concatenate([base, base])  # every vector twice: every score tied in pairs
    ids = global_ids(100, seed=5)
    scores, found = search(build_index(ids, vectors, IndexSettings(kind="flat")), base[:5], k=7)
    assert_valid_top_k(scores, found, ids, vectors, base[:5], k=7)


def test_k_above_pool_size_returns_every_item_once():
    vectors, ids = random_unit(12, 8, seed=6), global_ids(12, seed=7)
    scores, found = search(build_index(ids, vectors, IndexSettings(kind="flat")), vectors[:3], k=50)
    assert found.shape == (3, 12)
    for row in found:
        assert sorted(row.tolist()) == sorted(ids.tolist())


def test_ivf_marks_missing_results_with_minus_one_and_minus_inf():
    vectors = gaussian_mixture(800, 16, clusters=20, spread=0.3, seed=8)
    ids = global_ids(800, seed=9)
    index = build_index(ids, vectors, IndexSettings(kind="ivf", nlist=20, nprobe=1))
    scores, found = search(index, vectors[:10], k=400)  # one cell of ~40 items cannot fill 400
    missing = found < 0
    assert missing.any()
    assert np.all(np.isneginf(scores[missing]))
    assert np.all(np.isfinite(scores[~missing]))
    assert set(found[~missing].tolist()) <= set(ids.tolist())
    for row_scores, row_missing in zip(scores, missing):  # padding only after the real results
        assert not np.any(row_missing[:-1] & ~row_missing[1:])
        assert np.all(np.diff(row_scores[~row_missing]) <= 1e-6)


@pytest.mark.parametrize("settings, floor", [
    (IndexSettings(kind="ivf", nprobe=8), 0.80),  # 8 of 64 cells; measured 0.88-0.90 over seeds
    (IndexSettings(kind="ivf", nprobe=8, pq_m=8), 0.50),  # 4-d sub-vectors; measured 0.63-0.64
    (IndexSettings(kind="hnsw", hnsw_m=16, ef_search=64), 0.95),  # measured 0.99
], ids=["ivf-flat", "ivf-pq", "hnsw"])
def test_approximate_recall_at_k_above_floor_on_clustered_data(settings, floor):
    # overlapping clusters (spread 1.5) so that approximate search actually misses neighbours
    drawn = gaussian_mixture(4100, 32, clusters=40, spread=1.5, seed=10)
    vectors, queries = drawn[:4000], drawn[4000:]  # queries: fresh draws from the same mixture
    ids = global_ids(4000, seed=11)
    index = build_index(ids, vectors, settings)
    _, found = search(index, queries, k=10)
    assert recall(found, exact_top_ids(ids, vectors, queries, 10)) >= floor


def test_ivf_recall_grows_with_nprobe_and_is_exact_with_every_cell():
    drawn = gaussian_mixture(2050, 32, clusters=20, spread=1.5, seed=12)
    vectors, queries, ids = drawn[:2000], drawn[2000:], global_ids(2000, seed=13)
    truth = exact_top_ids(ids, vectors, queries, 10)
    index = build_index(ids, vectors, IndexSettings(kind="ivf", nlist=32, nprobe=1))
    recalls = []
    for nprobe in (1, 4, 32):
        apply_search_settings(index, IndexSettings(nprobe=nprobe))
        recalls.append(recall(search(index, queries, 10)[1], truth))
    assert recalls[0] < recalls[1] < recalls[2] == 1.0


# ---------------------------------------------------------------- incremental add


@pytest.mark.parametrize("settings", [IndexSettings(kind="flat"), IndexSettings(kind="ivf", nlist=16, nprobe=16)],
                         ids=["flat", "ivf-all-cells"])
def test_incremental_add_gives_the_same_results_as_a_rebuild(settings):
    vectors, ids = random_unit(900, 16, seed=12), global_ids(900, seed=13)
    queries = random_unit(20, 16, seed=14)
    grown = build_index(ids[:700], vectors[:700], settings)
    add_to_index(grown, ids[700:], vectors[700:])
    rebuilt = build_index(ids, vectors, settings)
    grown_scores, grown_found = search(grown, queries, k=15)
    rebuilt_scores, rebuilt_found = search(rebuilt, queries, k=15)
    np.testing.assert_allclose(grown_scores, rebuilt_scores, atol=1e-6)
    np.testing.assert_array_equal(grown_found, rebuilt_found)
    np.testing.assert_array_equal(grown.ids, ids)


def test_add_rejects_ids_already_indexed():
    vectors, ids = random_unit(30, 8, seed=15), global_ids(30, seed=16)
    index = build_index(ids[:20], vectors[:20], IndexSettings(kind="flat"))
    with pytest.raises(InputError, match="already indexed"):
        add_to_index(index, ids[15:], vectors[15:])
    assert index.ntotal == 20


@pytest.mark.parametrize("bad_vectors, ids, message", [
    (np.ones((4, 8), np.float32), np.arange(4), "not unit-norm"),
    (random_unit(4, 8, seed=0), np.arange(3), "4 vectors"),
    (random_unit(4, 8, seed=0), np.array([1, 2, 2, 3]), "duplicate"),
    (random_unit(4, 8, seed=0)[0], np.arange(1), "2-d"),
])
def test_build_rejects_bad_input_with_a_clear_error(bad_vectors, ids, message):
    with pytest.raises(InputError, match=message):
        build_index(ids, bad_vectors, IndexSettings(kind="flat"))


def test_search_rejects_queries_of_another_dimension():
    index = build_index(np.arange(10), random_unit(10, 8, seed=0), IndexSettings(kind="flat"))
    with pytest.raises(InputError, match="dimension 16"):
        search(index, random_unit(2, 16, seed=1), k=3)


# ---------------------------------------------------------------- the auto rule and settings


def test_auto_picks_exact_below_the_threshold_and_ivf_from_it():
    settings = IndexSettings(auto_threshold=1000)
    assert choose_kind(999, settings) is IndexKind.FLAT
    assert choose_kind(1000, settings) is IndexKind.IVF
    assert choose_kind(10, IndexSettings(kind="hnsw", auto_threshold=1)) is IndexKind.HNSW


def test_nlist_is_capped_so_every_cell_has_enough_training_points():
    assert resolve_settings(390, 16, IndexSettings(kind="ivf", nlist=64)).nlist == 10
    assert default_nlist(1_000_000) == 4096  # 4 sqrt(N) = 4000, nearest power of two
    assert default_nlist(100) == 2  # 4 sqrt(N) gives 32, capped at 100 // 39


def test_pq_must_divide_the_dimension():
    with pytest.raises(InputError, match="must divide"):
        resolve_settings(10_000, 30, IndexSettings(kind="ivf", pq_m=8))


def test_unknown_kind_lists_the_valid_ones():
    with pytest.raises(InputError, match="auto, flat, ivf, hnsw"):
        IndexSettings(kind="annoy")


# ---------------------------------------------------------------- persistence


@pytest.fixture
def pool():
    vectors, ids = random_unit(300, 16, seed=20), global_ids(300, seed=21)
    return ids, vectors


def loader_for(ids, vectors, calls):
    rows = {int(item): row for item, row in zip(ids, vectors)}

    def load(wanted):
        calls.append(np.asarray(wanted).copy())
        return np.stack([rows[int(item)] for item in wanted])

    return load


@pytest.mark.parametrize("settings", [IndexSettings(kind="flat"), IndexSettings(kind="ivf", nprobe=3),
                                      IndexSettings(kind="hnsw", hnsw_m=8)], ids=["flat", "ivf", "hnsw"])
def test_save_load_round_trip_gives_identical_results(tmp_path, pool, settings):
    ids, vectors = pool
    built = build_index(ids, vectors, settings)
    manifest = save_index(tmp_path, built, "spec-a")
    loaded = load_index(tmp_path, "spec-a", ids[::-1])  # order of expected ids is irrelevant
    assert (manifest.row_count, manifest.dim, manifest.kind) == (300, 16, settings.kind.value)
    assert manifest.ids_checksum == ids_checksum(np.sort(ids))
    assert loaded.settings == built.settings
    np.testing.assert_array_equal(loaded.ids, built.ids)
    queries = random_unit(10, 16, seed=22)
    for before, after in zip(search(built, queries, 8), search(loaded, queries, 8)):
        np.testing.assert_array_equal(before, after)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([INDEX_FILE, IDS_FILE, MANIFEST_FILE])


def test_load_detects_a_different_embedding_spec(tmp_path, pool):
    ids, vectors = pool
    save_index(tmp_path, build_index(ids, vectors, IndexSettings(kind="flat")), "spec-a")
    with pytest.raises(SpecMismatchError, match="spec-b"):
        load_index(tmp_path, "spec-b", ids)


def test_load_detects_a_different_dimension(tmp_path, pool):
    ids, vectors = pool
    save_index(tmp_path, build_index(ids, vectors, IndexSettings(kind="flat")), "spec-a")
    with pytest.raises(DimMismatchError, match="16-d"):
        load_index(tmp_path, "spec-a", ids, expected_dim=32)


def test_load_reports_added_ids_with_the_loaded_index(tmp_path, pool):
    ids, vectors = pool
    save_index(tmp_path, build_index(ids[:250], vectors[:250], IndexSettings(kind="flat")), "spec-a")
    with pytest.raises(IdsAddedError) as caught:
        load_index(tmp_path, "spec-a", ids)
    np.testing.assert_array_equal(caught.value.missing_ids, np.sort(ids[250:]))
    assert caught.value.index.ntotal == 250


def test_load_detects_removed_ids(tmp_path, pool):
    ids, vectors = pool
    save_index(tmp_path, build_index(ids, vectors, IndexSettings(kind="flat")), "spec-a")
    with pytest.raises(IdsRemovedError) as caught:
        load_index(tmp_path, "spec-a", np.concatenate([ids[5:], [10**10]]))  # 5 removed, 1 added
    np.testing.assert_array_equal(caught.value.removed_ids, np.sort(ids[:5]))


@pytest.mark.parametrize("damage", ["flip-index-byte", "truncate-index", "edit-ids", "garble-manifest", "old-format"])
def test_load_detects_corruption(tmp_path, pool, damage):
    ids, vectors = pool
    save_index(tmp_path, build_index(ids, vectors, IndexSettings(kind="flat")), "spec-a")
    index_file = tmp_path / INDEX_FILE
    if damage == "flip-index-byte":
        data = bytearray(index_file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        index_file.write_bytes(bytes(data))
    elif damage == "truncate-index":
        index_file.write_bytes(index_file.read_bytes()[:100])
    elif damage == "edit-ids":
        np.save(tmp_path / IDS_FILE, ids[::-1] + 1)
    elif damage == "garble-manifest":
        (tmp_path / MANIFEST_FILE).write_text("{not json")
    else:
        manifest = json.loads((tmp_path / MANIFEST_FILE).read_text())
        manifest["format_version"] = 0
        (tmp_path / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(IndexCorruptError) as caught:
        load_index(tmp_path, "spec-a", ids)
    assert isinstance(caught.value, IntegrityError) and caught.value.exit_code == 7


def test_load_of_an_empty_directory_says_nothing_is_built(tmp_path, pool):
    with pytest.raises(IndexMissingError, match="alkit index build"):
        load_index(tmp_path, "spec-a", pool[0])


def test_ensure_builds_loads_extends_and_rebuilds(tmp_path, pool):
    ids, vectors = pool
    calls: list[np.ndarray] = []
    load = loader_for(ids, vectors, calls)
    flat = IndexSettings(kind="flat")

    built = ensure_index(tmp_path, "spec-a", ids[:200], load, flat)
    assert built.action == "built" and built.index.ntotal == 200

    loaded = ensure_index(tmp_path, "spec-a", ids[:200], load, flat)
    assert loaded.action == "loaded" and len(calls) == 1  # nothing re-read

    extended = ensure_index(tmp_path, "spec-a", ids, load, flat)
    assert extended.action == "extended"
    np.testing.assert_array_equal(calls[-1], np.sort(ids[200:]))  # only the new vectors were read
    queries = random_unit(5, 16, seed=23)
    reference = build_index(ids, vectors, flat)
    for got, want in zip(search(extended.index, queries, 9), search(reference, queries, 9)):
        np.testing.assert_allclose(got, want, atol=1e-6)
    assert ensure_index(tmp_path, "spec-a", ids, load, flat).action == "loaded"  # the extension was saved

    shrunk = ensure_index(tmp_path, "spec-a", ids[10:], load, flat)
    assert shrunk.action == "rebuilt" and "no longer in the pool" in shrunk.reason and shrunk.index.ntotal == 290

    respecced = ensure_index(tmp_path, "spec-b", ids[10:], load, flat)
    assert respecced.action == "rebuilt" and "spec-b" in respecced.reason


def test_ensure_rebuilds_when_the_auto_kind_or_build_settings_change(tmp_path, pool):
    ids, vectors = pool
    load = loader_for(ids, vectors, [])
    auto = IndexSettings(auto_threshold=250)
    assert ensure_index(tmp_path, "s", ids[:200], load, auto).index.kind is IndexKind.FLAT
    grown = ensure_index(tmp_path, "s", ids, load, auto)  # 300 >= 250: now IVF
    assert grown.action == "rebuilt" and grown.index.kind is IndexKind.IVF
    assert ensure_index(tmp_path, "s", ids, load, IndexSettings(auto_threshold=250, nprobe=5)).action == "loaded"
    changed = ensure_index(tmp_path, "s", ids, load, IndexSettings(kind="hnsw"))
    assert changed.action == "rebuilt" and changed.index.kind is IndexKind.HNSW


def test_ensure_rebuilds_a_corrupted_index(tmp_path, pool):
    ids, vectors = pool
    load = loader_for(ids, vectors, [])
    ensure_index(tmp_path, "s", ids, load, IndexSettings(kind="flat"))
    (tmp_path / INDEX_FILE).write_bytes(b"garbage")
    repaired = ensure_index(tmp_path, "s", ids, load, IndexSettings(kind="flat"))
    assert repaired.action == "rebuilt" and "checksum" in repaired.reason
    assert load_index(tmp_path, "s", ids).ntotal == 300


# ---------------------------------------------------------------- IVF-PQ with exact re-ranking


def _clustered(num_items: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Unit vectors around `clusters` centres sharing one common direction (CLIP-like)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) + 2.0 * rng.normal(size=dim)
    return unit_rows(centres[rng.integers(0, clusters, num_items)] + 0.35 * rng.normal(size=(num_items, dim)))


def test_pq_with_exact_reranking_reaches_brute_force_recall():
    from alkit.retrieval.index import build_index, rerank_exactly, search

    vectors = _clustered(6000, 64, 40, seed=11).astype(np.float32)
    ids = np.arange(6000, dtype=np.int64) * 3 + 7  # global ids, not positions
    queries = _clustered(100, 64, 40, seed=12).astype(np.float32)
    k = 20
    truth = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :k]]
    index = build_index(ids, vectors, IndexSettings(kind="ivf", pq_m=16, nlist=32, nprobe=16))  # 1 byte per 4 dims

    def recall(found):
        return np.mean([len(np.intersect1d(f, t)) / k for f, t in zip(found, truth)])

    _, plain = search(index, queries, k)
    stored = vectors.astype(np.float16).astype(np.float32)  # what the shards on disk give back
    index.reranker = lambda wanted: stored[(wanted - 7) // 3]
    scores, reranked = search(index, queries, k)
    assert recall(reranked) >= 0.95 and recall(reranked) > recall(plain) + 0.3  # PQ distances alone miss many
    position = (reranked - 7) // 3
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", queries, stored[position]), rtol=1e-5, atol=1e-6)
    assert (np.diff(scores, axis=1) <= 0).all()
    # fewer candidates than k: the missing slots are -1 / -inf
    s, f = rerank_exactly(queries[:2], np.array([[ids[0], -1, ids[1]], [-1, -1, -1]]), index.reranker, 2)
    assert f[0].tolist() in ([ids[0], ids[1]], [ids[1], ids[0]]) and f[1].tolist() == [-1, -1]
    assert np.isinf(s[1]).all()


def test_auto_compresses_past_the_threshold_and_hnsw_stays_explicit():
    from alkit.retrieval.settings import AUTO_PQ_THRESHOLD, AUTO_IVF_THRESHOLD, default_pq_m, resolve_settings

    assert default_pq_m(512) == 128 and 96 % default_pq_m(96) == 0
    assert resolve_settings(AUTO_PQ_THRESHOLD, 512, IndexSettings()).pq_m == 128
    assert resolve_settings(AUTO_PQ_THRESHOLD - 1, 512, IndexSettings()).pq_m is None
    assert resolve_settings(AUTO_IVF_THRESHOLD, 512, IndexSettings()).kind.value == "ivf"
    assert resolve_settings(AUTO_PQ_THRESHOLD, 512, IndexSettings(kind="hnsw")).kind.value == "hnsw"
    assert resolve_settings(AUTO_PQ_THRESHOLD, 512, IndexSettings(kind="ivf")).pq_m is None  # explicit IVF-flat
