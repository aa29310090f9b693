"""End to end through the CLI on imported embeddings: add, import, classes, labels, fit, select."""

import json

import numpy as np
import pytest
import sqlalchemy as sa


@pytest.fixture
def imported_pool(imported_project):
    """60 images in 3 clusters with imported embeddings and class text embeddings; 6 labels."""
    data = imported_project(count=60, dim=16, noise=0.8, seed=0, labelled_pool=6)
    return data.pool, data.class_index


def round_rows(project_dir):
    engine = sa.create_engine(f"sqlite:///{project_dir / 'alkit.db'}")
    with engine.connect() as connection:
        rounds = connection.execute(sa.text("SELECT id, strategy, seed, posterior_version, embedding_spec_id, settings FROM rounds")).all()
        items = connection.execute(sa.text("SELECT round_id, image_id, rank, score FROM round_items ORDER BY round_id, rank")).all()
        labelled = set(connection.execute(sa.text("SELECT image_id FROM labels")).scalars())
    engine.dispose()
    return rounds, items, labelled


@pytest.mark.parametrize("strategy", ["bald", "bald_analytic", "entropy", "epig", "margin", "random"])
def test_fit_then_select_records_round_and_skips_labelled(cli, imported_pool, strategy):
    fit = cli("fit", "--json")
    assert fit.exit_code == 0, fit.output
    assert json.loads(fit.stdout)["kind"] == "laplace_head"
    result = cli("select", "--budget", "8", "--strategy", strategy, "--seed", "3", "--json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 8 and len({line["id"] for line in lines}) == 8
    assert all(line["path"].startswith("/") for line in lines)
    rounds, items, labelled = round_rows(cli.project_dir)
    assert len(rounds) == 1 and rounds[0].strategy == strategy and rounds[0].seed == 3
    assert [item.rank for item in items] == list(range(1, 9))
    assert not labelled & {item.image_id for item in items}
    second = [json.loads(line) for line in cli("select", "--budget", "8", "--strategy", strategy, "--json").stdout.splitlines()]
    assert not {line["id"] for line in second} & ({line["id"] for line in lines} | labelled)


def test_same_seed_same_state_same_batch(cli, imported_pool, tmp_path):
    import shutil

    cli("fit")
    snapshot = tmp_path / "snapshot"
    shutil.copytree(cli.project_dir, snapshot)
    first = cli("select", "--budget", "5", "--seed", "11", "--json").stdout
    shutil.rmtree(cli.project_dir)
    shutil.copytree(snapshot, cli.project_dir)
    second = cli("select", "--budget", "5", "--seed", "11", "--json").stdout
    assert [json.loads(l)["id"] for l in first.splitlines()] == [json.loads(l)["id"] for l in second.splitlines()]


def test_budget_larger_than_pool_is_a_clear_error(cli, imported_pool):
    result = cli("select", "--budget", "500")
    assert result.exit_code == 5
    assert "budget 500 > 54 unlabelled images" in result.stderr


def test_unknown_strategy_lists_valid_ones(cli, imported_pool):
    result = cli("select", "--budget", "2", "--strategy", "nope")
    assert result.exit_code == 4 and "valid: bald, bald_analytic, entropy, epig" in result.stderr


def test_select_without_posterior_fits_zero_shot_from_text_embeddings(cli, imported_pool):
    result = cli("select", "--budget", "4")
    assert result.exit_code == 0, result.output
    assert "fitted" in result.stderr and "posterior v1" in result.stderr


def test_select_before_embedding_says_what_to_do(cli, make_images):
    paths = make_images(3)
    cli("init")
    cli("add", str(paths[0].parent))
    cli("classes", "set", "a", "b")
    result = cli("select", "--budget", "1")
    assert result.exit_code == 5 and "alkit embed" in result.stderr


def test_predict_json_lines(cli, imported_pool):
    cli("fit")
    lines = [json.loads(l) for l in cli("predict", "--json").stdout.splitlines()]
    assert len(lines) == 60
    for line in lines:
        assert abs(sum(line["probs"].values()) - 1) < 1e-6
        assert line["predicted_class"] == max(line["probs"], key=line["probs"].get)
        assert 0 <= line["entropy"] <= np.log(3) + 1e-9


def test_cold_start_without_prompts_or_labels_covers_the_clusters(cli, make_images, tmp_path):
    """Imported embeddings with no text embeddings and no labels: a representativeness
    selector, not random, picks one image per well-separated cluster."""
    rng = np.random.default_rng(5)
    centres = np.eye(6)[:, :6] * 10
    truth = np.repeat(np.arange(6), 8)
    vectors = centres[truth] + 0.1 * rng.normal(size=(48, 6))
    paths = make_images(48)
    npz = tmp_path / "e.npz"
    np.savez(npz, paths=np.array([str(p) for p in paths]), embeddings=vectors.astype(np.float32))
    cli("init")
    cli("add", str(paths[0].parent))
    cli("classes", "set", "a", "b")
    cli("embed", "--from", str(npz), "--name", "plain")
    result = cli("select", "--budget", "6", "--json")
    assert result.exit_code == 0, result.output
    assert "cold-start" in result.stderr
    chosen = [json.loads(l)["id"] for l in result.stdout.splitlines()]
    position = {str(p): i for i, p in enumerate(paths)}
    rows = [json.loads(l) for l in result.stdout.splitlines()]
    clusters = {int(truth[position[row["path"]]]) for row in rows}
    assert len(chosen) == 6 and clusters == set(range(6))


def test_batchbald_batch_mode_is_opt_in_and_recorded(cli, imported_pool):
    cli("fit")
    result = cli("select", "--budget", "3", "--batch-mode", "batchbald", "--samples", "16", "--json")
    assert result.exit_code == 0, result.output
    assert "BatchBALD chose 3" in result.stderr
    assert len({json.loads(l)["id"] for l in result.stdout.splitlines()}) == 3
    rounds, _, _ = round_rows(cli.project_dir)
    assert json.loads(rounds[0].settings)["batch_mode"] == "batchbald"
    bad = cli("select", "--budget", "3", "--batch-mode", "nope")
    assert bad.exit_code == 4 and "batchbald" in bad.stderr


@pytest.fixture
def planted_pool(cli, make_images, tmp_path):
    """Three tight clusters of confident items plus one planted item halfway between the
    clusters of classes a and b (its embedding is equidistant from both centres); 4 labels
    per class. Returns the planted item's path."""
    rng = np.random.default_rng(1)
    num_classes, dim, per_class = 3, 16, 15
    centres = np.linalg.qr(rng.normal(size=(dim, num_classes)))[0].T  # orthonormal class centres
    truth = np.repeat(np.arange(num_classes), per_class)
    vectors = centres[truth] + 0.05 * rng.normal(size=(len(truth), dim))
    planted = (centres[0] + centres[1]) / np.sqrt(2.0)  # cosine 0.707 to a and to b, 0 to c
    vectors = np.vstack([vectors, planted])
    paths = make_images(len(vectors))
    npz = tmp_path / "emb.npz"
    np.savez(npz, paths=np.array([str(p) for p in paths]), embeddings=vectors.astype(np.float32),
             text_embeddings=centres.astype(np.float32))
    names = ["a", "b", "c"]
    labelled = [i for k in range(num_classes) for i in range(k * per_class, k * per_class + 4)]
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("path,label\n" + "".join(f"{paths[i]},{names[truth[i]]}\n" for i in labelled))
    for args in (("init",), ("add", str(paths[0].parent)), ("classes", "set", *names),
                 ("embed", "--from", str(npz), "--name", "synthetic"), ("labels", "import", str(labels_csv))):
        assert cli(*args).exit_code == 0
    assert cli("fit").exit_code == 0
    return str(paths[-1].resolve())


def _first_pick(cli, *flags):
    result = cli("select", "--budget", "1", "--seed", "3", "--json", *flags)
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(line) for line in result.stdout.splitlines()]
    return line["path"]


@pytest.mark.parametrize("strategy", ["bald", "entropy", "margin"])
def test_uncertainty_strategies_pick_the_planted_ambiguous_item(cli, planted_pool, strategy):
    """The strategy is not ignored: among 41 confident unlabelled items, the one the posterior
    cannot place (between the a and b clusters) is the first pick of every uncertainty score."""
    assert _first_pick(cli, "--strategy", strategy) == planted_pool


def test_random_with_the_same_seed_is_not_drawn_to_the_planted_item(cli, planted_pool):
    assert _first_pick(cli, "--strategy", "random") != planted_pool


def test_epig_against_a_target_split_selects_pool_images_only(cli, make_images, tmp_path):
    rng = np.random.default_rng(2)
    centres = np.linalg.qr(rng.normal(size=(8, 2)))[0].T
    pool, targets = make_images(24), make_images(6, folder="targets", start_seed=100)
    truth = np.arange(30) % 2
    vectors = centres[truth] + 0.3 * rng.normal(size=(30, 8))
    npz = tmp_path / "emb.npz"
    np.savez(npz, paths=np.array([str(p) for p in pool + targets]), embeddings=vectors.astype(np.float32),
             text_embeddings=centres.astype(np.float32))
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("path,label\n" + "".join(f"{pool[i]},{'ab'[truth[i]]}\n" for i in range(4)))
    for args in (("init",), ("add", str(pool[0].parent)), ("add", str(targets[0].parent), "--split", "target"),
                 ("classes", "set", "a", "b"), ("embed", "--from", str(npz), "--name", "synthetic"),
                 ("labels", "import", str(labels_csv)), ("fit",)):
        assert cli(*args).exit_code == 0, args
    result = cli("select", "--budget", "3", "--strategy", "epig", "--target", "target", "--samples", "16", "--json")
    assert result.exit_code == 0, result.output
    chosen = {json.loads(line)["path"] for line in result.stdout.splitlines()}
    assert len(chosen) == 3 and chosen <= {str(p.resolve()) for p in pool[4:]}
    missing = cli("select", "--budget", "3", "--strategy", "epig", "--target", "test")
    assert missing.exit_code == 5 and "split 'test' has no embedded images" in missing.stderr


def test_batchbald_with_a_strategy_that_uses_no_posterior_is_refused_before_any_work(cli, imported_pool):
    result = cli("select", "--budget", "2", "--strategy", "random", "--batch-mode", "batchbald")
    assert result.exit_code == 4 and "uses no posterior" in result.stderr
    assert round_rows(cli.project_dir)[0] == []
