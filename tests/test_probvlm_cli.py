"""`alkit fit --posterior probvlm`, then select / predict through the CLI on imported embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def imported(imported_project, with_text: bool = True):
    """30 images in 3 clusters with imported embeddings (and class text embeddings); 6 labels."""
    data = imported_project(count=30, dim=8, noise=0.5, seed=0, labelled_pool=6, text_embeddings=with_text,
                            unit_centres=False)
    return data.pool


def test_fit_probvlm_then_select_and_predict(cli, imported_project):
    imported(imported_project)
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


def test_probvlm_without_text_embeddings_is_a_state_error(cli, imported_project):
    imported(imported_project, with_text=False)
    result = cli("fit", "--posterior", "probvlm", "--epochs", "1")
    assert result.exit_code == 5 and "class-prompt text embeddings" in result.stderr


def test_probvlm_refuses_caption_pairs(cli, imported_project, tmp_path):
    imported(imported_project)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image_path,caption\nx.png,a cat\n")
    result = cli("fit", "--posterior", "probvlm", "--pairs", str(pairs))
    assert result.exit_code == 4 and "does not train on captions" in result.stderr
