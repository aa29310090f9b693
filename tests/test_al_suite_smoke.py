"""The active-learning suite end to end at smoke size (issue 15): 1 seed, 2 rounds of 5, tiny data.

Runs `benchmarks.al_suite --smoke` in process on the `digits` data set (its small variant,
built in a temp dir; `mnist_lt` takes the same imported-embeddings path), through the product's select/labels-import/fit/eval use cases,
and checks the bookkeeping the tables rest on: each round adds exactly B distinct labels read
from the answer key, the oracle's labels are the truth, peers pick new items, and the
results files, tables and plots are written. (The `clip` data set needs the demo's trained
model, so the smoke run leaves it to the full run.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import al_suite
from benchmarks.al_suite_data import hog_features, load_dataset, long_tail_counts, split_long_tail


def test_hog_matches_a_loop_reference():
    rng = np.random.default_rng(0)
    images = rng.random((2, 14, 14))
    features = hog_features(images, cell=7, bins=9)
    assert features.shape == (2, 1 * 1 * 4 * 9)
    # reference: a plain loop over pixels for the first image's histogram, then the block norm
    image = images[0]
    gy, gx = np.gradient(image)
    hist = np.zeros((2, 2, 9))
    for y in range(14):
        for x in range(14):
            angle = np.mod(np.arctan2(gy[y, x], gx[y, x]), np.pi)
            position = angle / np.pi * 9 - 0.5
            low = int(np.floor(position))
            frac = position - low
            magnitude = np.hypot(gx[y, x], gy[y, x])
            hist[y // 7, x // 7, low % 9] += magnitude * (1 - frac)
            hist[y // 7, x // 7, (low + 1) % 9] += magnitude * frac
    block = hist.reshape(-1)
    block = block / np.sqrt((block**2).sum() + 1e-6)
    block = np.minimum(block, 0.2)
    block = block / np.sqrt((block**2).sum() + 1e-6)
    np.testing.assert_allclose(features[0], block, rtol=1e-10, atol=1e-12)


def test_long_tailed_split_is_disjoint_balanced_where_it_should_be():
    labels = np.repeat(np.arange(10), 50)
    pool, test, target = split_long_tail(labels, 10, 5, 10.0, seed=3)
    assert not (set(pool) & set(test)) and not (set(pool) & set(target)) and not (set(test) & set(target))
    assert np.all(np.bincount(labels[test], minlength=10) == 10)
    assert np.all(np.bincount(labels[target], minlength=10) == 5)
    counts = np.bincount(labels[pool], minlength=10)
    assert counts.max() == 35 and counts.min() == round(35 / 10)
    assert sorted(long_tail_counts(35, 10, 10.0, np.random.default_rng(3))) == sorted(counts)


def test_smoke_run_writes_tables_and_paired_curves(tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    code = al_suite.main(["--smoke", "--out", str(out), "--cache", str(cache), "--datasets", "digits",
                          "--methods", "random,margin-top,epig-top",
                          "--peers", "lr-random,skactiveml-margin,modal-qbc"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "FAILED" not in printed
    for name in ("digits",):
        text = (out / f"results_al_suite_{name}.md").read_text()
        for method in ("random", "margin-top", "epig-top", "skactiveml-margin", "modal-qbc"):
            assert f"| {method} |" in text
        assert "Cold start" in text and "| typiclust |" in text
        assert (out / f"al_suite_{name}_B5.png").stat().st_size > 1000

    runs = [json.loads(line) for line in (cache / "smoke-runs-digits.jsonl").read_text().splitlines()]
    assert runs
    data = {"digits": load_dataset("digits", root=cache, small=True)}
    for run in runs:
        name = run["key"].split("|")[0]
        points = [p for p in run["points"] if p["round"] > 0]
        assert [p["labels"] for p in points] == [5 * (i + 1) for i in range(len(points))]
        for p in points:
            assert len(p["chosen_classes"]) == 5
            assert set(p["chosen_classes"]) <= set(range(10))
            assert 0.0 <= p["accuracy"] <= 1.0 and np.isfinite(p["nll"])
        # the chosen classes are drawn from the pool's label distribution, never more than it holds
        chosen = np.bincount(np.concatenate([p["chosen_classes"] for p in points]).astype(int), minlength=10)
        assert np.all(chosen <= data[name].pool_counts())


def test_oracle_labels_are_the_truth_and_rounds_do_not_overlap(tmp_path):
    import sqlalchemy as sa

    from alkit.project import open_project
    from alkit.storage.labels import resolved_labels
    from alkit.storage.schema import classes, images

    data = load_dataset("digits", root=tmp_path, small=True)
    kept = tmp_path / "kept"
    points = al_suite.run_alkit(data, "margin-top", seed=1, rounds=2, budget=4, workdir=tmp_path, keep=kept)
    assert [p["labels"] for p in points] == [4, 8]
    project = open_project(kept)
    with project.engine.connect() as connection:
        rows = connection.execute(sa.select(images.c.id, images.c.path).where(images.c.split == "pool")).all()
        names = dict(connection.execute(sa.select(classes.c.id, classes.c.name)).all())
        resolved = resolved_labels(connection, [r.id for r in rows])
    assert len(resolved) == 8  # two rounds of 4 distinct images
    path_of = {r.id: r.path for r in rows}
    for image_id, class_id in resolved.items():
        assert names[class_id] == data.answers[path_of[image_id]]
    project.engine.dispose()


@pytest.mark.parametrize("budget,rounds", [(20, 10)])
def test_area_and_labels_to_reach_against_hand_computation(budget, rounds):
    labels = np.arange(1, rounds + 1) * budget
    accuracy = np.linspace(0.5, 0.9, rounds)[None]
    # trapezoid of a straight line over [20, 200] divided by its width = its mean value
    assert al_suite.area_under_curve(labels, accuracy)[0] == pytest.approx(0.7)
    assert al_suite.labels_to_reach(labels, accuracy[0], 0.7) == 120  # first round at or above 0.7
    assert al_suite.labels_to_reach(labels, accuracy[0], 0.95) is None
