"""`alkit fit --posterior probvlm`, then select / predict through the CLI on imported embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def imported(cli, make_images, tmp_path, with_text: bool = True):
    """30 images in 3 clusters with imported embeddings (and class text embeddings); 6 labels."""
    rng = np.random.default_rng(0)
    num_classes, dim, count = 3, 8, 30
    centres = rng.normal(size=(num_classes, dim))
    truth = np.arange(count) % num_classes
    vectors = centres[truth] + 0.5 * rng.normal(size=(count, dim))
    paths = make_images(count)
    npz = tmp_path / "emb.npz"
    extra = {"text_embeddings": centres.astype(np.float32)} if with_text else {}
    np.savez(npz, paths=np.array([str(p) for p in paths]), embeddings=vectors.astype(np.float32), **extra)
    names = ["a", "b", "c"]
    labels_csv = tmp_path / "labels.csv"
    labels_csv.write_text("path,label\n" + "".join(f"{paths[i]},{names[truth[i]]}\n" for i in range(6)))
    assert cli("init").exit_code == 0
    assert cli("add", str(paths[0].parent)).exit_code == 0
    assert cli("classes", "set", *names).exit_code == 0
    assert cli("embed", "--from", str(npz), "--name", "synthetic").exit_code == 0
    assert cli("labels", "import", str(labels_csv)).exit_code == 0
    return paths


def test_fit_probvlm_then_select_and_predict(cli, make_images, tmp_path):
    imported(cli, make_images, tmp_path)
    fit = cli("fit", "--posterior", "probvlm", "--epochs", "2", "--learning-rate", "1e-3", "--json")
    assert fit.exit_code == 0, fit.output
    result = json.loads(fit.stdout)
    assert result["kind"] == "probvlm" and result["labels_used"] == 6 and result["prior_precision"] is None
    assert "6 labelled image / class-prompt pairs" in result["curvature_source"]
    header = json.loads((Path(result["path"]) / "header.json").read_text())
    assert header["provenance"]["settings"]["epochs"] == 2 and header["kind"] == "probvlm"
    for strategy in ("bald", "epig", "entropy"):
        chosen = cli("select", "--budget", "3", "--strategy", strategy, "--json")
        assert chosen.exit_code == 0, chosen.output
        lines = [json.loads(line) for line in chosen.stdout.splitlines()]
        assert len(lines) == 3 and len({line["id"] for line in lines}) == 3
    predictions = [json.loads(line) for line in cli("predict", "--json").stdout.splitlines()]
    assert len(predictions) == 30
    for line in predictions:
        assert abs(sum(line["probs"].values()) - 1) < 1e-6
        assert line["predicted_class"] == max(line["probs"], key=line["probs"].get)
    text = cli("fit", "--posterior", "probvlm", "--epochs", "1")
    assert text.exit_code == 0 and "posterior v2 (probvlm)" in text.stdout and "prior precision" not in text.stdout


def test_probvlm_without_text_embeddings_is_a_state_error(cli, make_images, tmp_path):
    imported(cli, make_images, tmp_path, with_text=False)
    result = cli("fit", "--posterior", "probvlm", "--epochs", "1")
    assert result.exit_code == 5 and "class-prompt text embeddings" in result.stderr


def test_probvlm_refuses_caption_pairs(cli, make_images, tmp_path):
    imported(cli, make_images, tmp_path)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_path,caption\nx.png,a cat\n")
    result = cli("fit", "--posterior", "probvlm", "--pairs", str(pairs))
    assert result.exit_code == 4 and "does not train on captions" in result.stderr
