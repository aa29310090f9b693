"""`alkit fit --pairs` (curvature from image-caption pairs through a tiny open_clip model) and
`--factors` (precomputed factors as plain arrays)."""

import json

import numpy as np
import pytest

from alkit.embedding.tiny import TINY_VIT, register_config


@pytest.fixture
def embedded(cli, make_images):
    register_config()
    paths = make_images(8, size=(40, 30))
    cli("init")
    cli("add", str(paths[0].parent))
    cli("classes", "set", "cat", "dog", "bird")
    assert cli("embed", "--model", TINY_VIT, "--pretrained", "none", "--workers", "0", "--batch-size", "4", "--no-progress").exit_code == 0
    return paths


def test_fit_from_pairs_builds_both_projections_and_differs_from_zero_shot(cli, embedded, tmp_path):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_path,caption\n" + "".join(
        f"{p},a photo of a {'cat' if i % 2 else 'dog'}\n" for i, p in enumerate(embedded[:6])))
    result = cli("fit", "--pairs", str(pairs), "--json")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["kind"] == "bayesvlm"
    assert "6 image-caption pairs from pairs.csv (image and text projections)" == payload["curvature_source"]
    zero_shot = json.loads(cli("fit", "--posterior", "bayesvlm", "--json").stdout)
    assert zero_shot["curvature_source"].startswith("pool images vs 3 class prompts")

    from alkit.posterior.io import load_posterior

    with_pairs = load_posterior(payload["path"])
    pool = load_posterior(zero_shot["path"])
    assert with_pairs.text_side is not None and pool.text_side is None
    assert not np.allclose(with_pairs.factors.B, pool.factors.B)
    status = json.loads(cli("status", "--json").stdout)
    assert status["posterior"]["curvature_source"].startswith("pool images")  # newest version


def test_pairs_errors_say_what_to_fix(cli, embedded, tmp_path):
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text("path,text\nx,y\n")
    result = cli("fit", "--pairs", str(bad_header))
    assert result.exit_code == 4 and "image_path,caption" in result.stderr
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(f"image_path,caption\n{tmp_path / 'nope.png'},a cat\n")
    result = cli("fit", "--pairs", str(unknown))
    assert result.exit_code == 4 and "alkit add" in result.stderr


def test_fit_from_factor_files_uses_the_given_n_and_lambda(cli, embedded, tmp_path):
    from alkit.posterior.io import load_posterior

    zero_shot = load_posterior(json.loads(cli("fit", "--posterior", "bayesvlm", "--json").stdout)["path"])
    factors = tmp_path / "factors"
    factors.mkdir()
    np.save(factors / "A_img.npy", zero_shot.factors.A)
    np.save(factors / "B_img.npy", zero_shot.factors.B)
    np.save(factors / "n.npy", np.array(4.0))
    np.save(factors / "lam.npy", np.array(2.5))
    payload = json.loads(cli("fit", "--factors", str(factors), "--json").stdout)
    loaded = load_posterior(payload["path"])
    assert loaded.pseudo_data == 4.0 and loaded.prior_precision == 2.5
    np.testing.assert_allclose(loaded.factors.A, zero_shot.factors.A)
    missing = tmp_path / "empty"
    missing.mkdir()
    result = cli("fit", "--factors", str(missing))
    assert result.exit_code == 4 and "A_img" in result.stderr
