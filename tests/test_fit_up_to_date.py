"""`alkit fit` with no new labels and the same settings reports the newest version as up to
date instead of making another; `--force`, a new label or a changed setting refit."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture
def labelled(cli, make_images, tmp_path):
    rng = np.random.default_rng(0)
    paths = make_images(12)
    np.savez(tmp_path / "emb.npz", paths=np.array([str(p) for p in paths]), embeddings=rng.normal(size=(12, 8)),
             text_embeddings=rng.normal(size=(2, 8)))
    assert cli("init").exit_code == 0
    assert cli("classes", "set", "a", "b").exit_code == 0
    assert cli("embed", "--from", str(tmp_path / "emb.npz")).exit_code == 0
    (tmp_path / "l1.csv").write_text("path,label\n" + "".join(f"{paths[i]},{'ab'[i % 2]}\n" for i in range(4)))
    assert cli("labels", "import", str(tmp_path / "l1.csv")).exit_code == 0
    return paths


def _fit(cli, *args):
    result = cli("fit", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_second_fit_is_up_to_date_and_force_or_new_labels_refit(cli, labelled, tmp_path):
    first = _fit(cli)
    assert first["version"] == 1 and not first["up_to_date"] and first["labels_used"] == 4
    again = cli("fit")
    assert again.exit_code == 0 and "posterior v1 is up to date" in again.stdout
    assert _fit(cli)["up_to_date"] is True
    forced = _fit(cli, "--force")
    assert forced["version"] == 2 and not forced["up_to_date"]
    assert _fit(cli)["version"] == 2  # up to date with the forced one
    changed = _fit(cli, "--pseudo-data", "5")
    assert changed["version"] == 3 and not changed["up_to_date"]
    (tmp_path / "l2.csv").write_text(f"path,label\n{labelled[5]},b\n")
    assert cli("labels", "import", str(tmp_path / "l2.csv")).exit_code == 0
    refit = _fit(cli, "--pseudo-data", "5")
    assert refit["version"] == 4 and refit["labels_used"] == 5


def test_a_changed_label_is_new_information(cli, labelled, tmp_path):
    assert _fit(cli)["version"] == 1
    (tmp_path / "flip.csv").write_text(f"path,label\n{labelled[0]},b\n")  # was a
    assert cli("labels", "import", str(tmp_path / "flip.csv")).exit_code == 0
    assert _fit(cli)["version"] == 2


def test_test_split_labels_do_not_make_a_fit_stale(cli, labelled, make_images, tmp_path):
    assert _fit(cli)["version"] == 1
    [extra] = make_images(1, folder="test_images", start_seed=99)
    assert cli("add", str(extra), "--split", "test").exit_code == 0
    (tmp_path / "t.csv").write_text(f"path,label\n{extra},a\n")
    assert cli("labels", "import", str(tmp_path / "t.csv")).exit_code == 0
    assert _fit(cli)["up_to_date"] is True


def test_status_separates_pool_and_test_labels_and_shows_model_posterior_rounds(cli, labelled, make_images, tmp_path):
    test_images = make_images(3, folder="held_out", start_seed=200)
    assert cli("add", str(test_images[0].parent), "--split", "test").exit_code == 0
    (tmp_path / "t.csv").write_text("path,label\n" + "".join(f"{p},a\n" for p in test_images))
    assert cli("labels", "import", str(tmp_path / "t.csv")).exit_code == 0
    _fit(cli)
    assert cli("select", "--budget", "2", "--strategy", "random").exit_code == 0
    status = json.loads(cli("status", "--json").stdout)
    assert status["labels_per_class"] == {"a": 2, "b": 2} and status["test_labels_per_class"] == {"a": 3, "b": 0}
    assert status["labeled_images_by_split"] == {"pool": 4, "test": 3} and status["labeled_images"] == 7
    assert status["model"]["name"] == "emb" and status["model"]["kind"] == "imported"
    assert status["posterior"]["version"] == 1
    assert status["open_round_details"] == [
        {"id": 1, "status": "open", "strategy": "random", "items": 2, "created_at": status["open_round_details"][0]["created_at"]}
    ]
    text = cli("status").stdout
    assert "4 pool/target images labelled (for fit), 3 test images labelled" in text
    assert "model: emb (imported" in text and "posterior: v1" in text and "round 1 (open, random): 2 images" in text


def test_status_shows_the_posterior_of_the_current_class_list(cli, labelled):
    """The current posterior is the newest of the current spec AND class list: the one select,
    predict and eval use (status used to show the newest of any class list)."""
    assert _fit(cli)["version"] == 1
    assert cli("classes", "set", "a", "b", "--template", "a sketch of a {}").exit_code == 0  # new prompts: new class list
    status = json.loads(cli("status", "--json").stdout)
    assert status["posterior"] is None
    assert _fit(cli)["version"] == 2
    assert json.loads(cli("status", "--json").stdout)["posterior"]["version"] == 2
    assert cli("classes", "set", "a", "b", "--template", "a photo of a {}").exit_code == 0  # the first list again
    assert json.loads(cli("status", "--json").stdout)["posterior"]["version"] == 1
    assert cli("predict", "--json").exit_code == 0
