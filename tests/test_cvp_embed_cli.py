"""`alkit embed --cvp-blocks k` end to end on a tiny open_clip CLIP, and `alkit fit --posterior
bayesvlm` reading the stored phi variance; a project embedded without CVP is unaffected."""

from __future__ import annotations

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

FAST = ("--workers", "0", "--batch-size", "4", "--no-progress")


@pytest.fixture
def checkpoint(tmp_path):
    from alkit.demo.tiny_clip import create_tiny_clip

    model, _, _ = create_tiny_clip(None, seed=0)
    path = tmp_path / "weights" / "tiny-clip.pt"
    path.parent.mkdir()
    torch.save(model.state_dict(), path)
    return path


def _spec_rows(project):
    import sqlalchemy as sa

    from alkit.storage.schema import embedding_specs

    with project.engine.connect() as connection:
        return {row.id: row for row in connection.execute(sa.select(embedding_specs))}


def _labelled_project(cli, make_images, checkpoint, tmp_path):
    paths = make_images(24, size=(28, 28))
    for step in (("init",), ("add", str(paths[0].parent)), ("classes", "set", "a", "b", "c")):
        assert cli(*step).exit_code == 0, step
    plain = cli("embed", "--model", "alkit-tiny-clip", "--pretrained", str(checkpoint), *FAST, "--json")
    assert plain.exit_code == 0, plain.output
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{'abc'[i % 3]}\n" for i, p in enumerate(paths[:12])))
    assert cli("labels", "import", str(csv)).exit_code == 0
    return paths, json.loads(plain.stdout)


def _reference_arrays(project, spec_row, paths):
    """`cvp_encode_batch` run directly on the images, with the posterior the spec stored."""
    from PIL import Image

    from alkit.storage.specs import spec_directory
    from alkit.workflows.cvp_embed import cvp_encode_batch
    from alkit.workflows.cvp_posterior import cvp_path, load_cvp_posterior
    from alkit.workflows.embed_model import encoder_for_spec

    posterior, calibration, _ = load_cvp_posterior(cvp_path(spec_directory(project, spec_row.key)))
    encoder = encoder_for_spec(project, spec_row)
    pixels = torch.stack([encoder.preprocess(Image.open(p).convert("RGB")) for p in paths])
    return cvp_encode_batch(encoder.model, pixels, posterior, calibration)


def test_cvp_embed_stores_variances_resumes_without_mixing_and_bayesvlm_uses_them(cli, make_images, checkpoint, tmp_path,
                                                                                  monkeypatch):
    from alkit.cvp.bayesvlm_features import logit_moments
    from alkit.errors import StateError
    from alkit.project import open_project
    from alkit.storage.specs import spec_directory
    from alkit.storage.vectors import load_vectors
    from alkit.workflows import cvp_embed
    from alkit.workflows.current_posterior import current_posterior

    paths, plain = _labelled_project(cli, make_images, checkpoint, tmp_path)
    project = open_project(cli.project_dir)

    # a run killed after its first shard (8 images): the shards written keep all four kinds
    real, calls = cvp_embed.cvp_encode_batch, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(cvp_embed, "cvp_encode_batch", dying)
    killed = cli("embed", "--cvp-blocks", "1", "--shard-rows", "8", *FAST)
    assert killed.exit_code != 0
    monkeypatch.setattr(cvp_embed, "cvp_encode_batch", real)
    cvp_spec = next(r for r in _spec_rows(project).values() if r.id != plain["spec_id"])
    directory = spec_directory(project, cvp_spec.key)
    fitted = (directory / "cvp.safetensors").read_bytes()
    assert sorted(os.listdir(directory)).count("00000001.phi_var.npy") == 1

    resumed = cli("embed", "--cvp-blocks", "1", "--shard-rows", "8", *FAST, "--json")
    assert resumed.exit_code == 0, resumed.output
    done = json.loads(resumed.stdout)
    assert done["spec_id"] == cvp_spec.id and done["embedded"] == 16 and done["cvp_blocks"] == 1
    assert done["key"] != plain["key"] and done["spec"].endswith("+cvp1")
    assert (directory / "cvp.safetensors").read_bytes() == fitted  # resumed with the stored posterior, not a refit
    shards = [n for n in os.listdir(directory) if n.endswith(".npy")]
    for kind in ("embedding", "phi", "embedding_var", "phi_var"):
        assert sorted(n for n in shards if n.endswith(f".{kind}.npy")) == [f"0000000{i}.{kind}.npy" for i in (1, 2, 3)]
    assert not any(n.endswith("_var.npy") for n in os.listdir(spec_directory(project, plain["key"])))

    ids, phi_var = load_vectors(project, cvp_spec.id, kind="phi_var")
    _, embedding_var = load_vectors(project, cvp_spec.id, kind="embedding_var")
    _, phi = load_vectors(project, cvp_spec.id, kind="phi")
    _, embedding = load_vectors(project, cvp_spec.id, kind="embedding")
    assert len(ids) == 24 and phi_var.shape == phi.shape and embedding_var.shape == embedding.shape
    assert (phi_var > 0).all() and (embedding_var > 0).all()
    reference = _reference_arrays(project, cvp_spec, paths)  # ids follow the paths' order (added in order)
    for name, stored in (("phi", phi), ("phi_var", phi_var), ("embedding", embedding), ("embedding_var", embedding_var)):
        expected = reference[name].astype(np.float16).astype(np.float32)
        np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=1e-6 * np.abs(expected).max(), err_msg=name)
    with pytest.raises(StateError, match="not embedded with CVP"):
        load_vectors(project, plain["spec_id"], kind="phi_var")

    chosen = cli("fit", "--posterior", "bayesvlm", "--json")  # the scale of phi's variance chosen by the labels
    assert chosen.exit_code == 0, chosen.output
    _, _, posterior = current_posterior(open_project(cli.project_dir))
    record = posterior.provenance.settings["phi_variance"]
    assert record["scale"] in (0.0, 0.01, 0.03, 0.1, 0.3, 1.0) and len(record["cross_validated_nll"]) == 6
    assert record["scale"] == float(min(record["cross_validated_nll"], key=record["cross_validated_nll"].get))
    fit = cli("fit", "--posterior", "bayesvlm", "--phi-variance-scale", "0.5", "--force", "--json")
    assert fit.exit_code == 0, fit.output
    assert "phi variance from CVP over the last 1 blocks x 0.5" in json.loads(fit.stdout)["curvature_source"]
    _, _, posterior = current_posterior(open_project(cli.project_dir))  # saved and loaded back
    assert posterior.phi_variance_scale == 0.5 and posterior.feature_kind == "phi+phi_var"
    assert posterior.provenance.settings["phi_variance"] == {"source": "cvp", "blocks": 1, "scale": 0.5,
                                                             "cross_validated_nll": {}}
    predicted = cli("predict", "--json")
    assert predicted.exit_code == 0, predicted.output
    logit_var = {row["image_id"]: row["logit_variance"] for row in map(json.loads, predicted.stdout.splitlines())}
    _, expected_var = logit_moments(posterior, phi, 0.5 * phi_var)
    _, without_var = replace(posterior, phi_variance_scale=0.0).logit_moments(phi)
    got = np.array([logit_var[int(i)] for i in ids])
    np.testing.assert_allclose(got, expected_var.mean(axis=1), rtol=1e-4)
    assert (expected_var.mean(axis=1) > without_var.mean(axis=1) * 1.0001).all()
    probs = posterior.predict(np.concatenate([phi, phi_var], axis=1))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    for strategy in ("bald", "entropy"):  # selection reads [phi, phi_var] through the posterior's feature kind
        selected = cli("select", "--budget", "3", "--strategy", strategy, "--dedup-threshold", "1", "--json")
        assert selected.exit_code == 0, selected.output
        assert len(selected.stdout.splitlines()) == 3, selected.output

    # back to the plain spec: a bare embed uses it, unaffected by the CVP spec
    bare = cli("embed", *FAST, "--json")
    assert bare.exit_code == 0, bare.output
    again = json.loads(bare.stdout)
    assert again["spec_id"] == plain["spec_id"] and again["embedded"] == 0 and "cvp_blocks" not in again
    assert cli("embed", "--recalibrate", *FAST).exit_code == 4  # only with --cvp-blocks

    # a labelling round later: 4 new labelled images, and 6 of the curvature images labelled too
    _recalibration_after_a_round(cli, make_images, tmp_path, project, cvp_spec, paths, fitted)


def _recalibration_after_a_round(cli, make_images, tmp_path, project, cvp_spec, paths, fitted):
    from alkit.storage.specs import spec_directory
    from alkit.storage.vectors import load_vectors
    from alkit.workflows.cvp_posterior import cvp_path, load_cvp_posterior

    directory = spec_directory(project, cvp_spec.key)
    _, _, record = load_cvp_posterior(cvp_path(directory))
    assert len(record["curvature_ids"]) == 12  # the unlabelled pool images
    new = make_images(4, folder="round2", start_seed=100, size=(28, 28))
    assert cli("add", str(new[0].parent)).exit_code == 0
    csv = tmp_path / "round2.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{'abc'[i % 3]}\n" for i, p in enumerate(new + paths[12:18])))
    assert cli("labels", "import", str(csv)).exit_code == 0
    result = cli("embed", "--cvp-blocks", "1", "--recalibrate", *FAST, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["embedded"] == 28  # every image again, under the new calibration
    assert (directory / "cvp.safetensors").read_bytes() != fitted
    posterior, calibration, after = load_cvp_posterior(cvp_path(directory))
    assert after["curvature_ids"] == record["curvature_ids"]  # the Laplace posterior is kept
    assert calibration.num_images == 16  # 12 + 4 new labels; the 6 labelled curvature images stay held out
    ids, phi_var = load_vectors(project, cvp_spec.id, kind="phi_var")
    # the old shards 1-3 were collected before the re-embed wrote its one shard (28 rows < --shard-rows)
    assert len(ids) == 28 and sorted(n for n in os.listdir(directory) if n.endswith(".npy")) == [
        f"00000001.{kind}.npy" for kind in ("embedding", "embedding_var", "phi", "phi_var")]
    reference = _reference_arrays(project, cvp_spec, paths + new)
    expected = reference["phi_var"].astype(np.float16).astype(np.float32)
    np.testing.assert_allclose(phi_var, expected, rtol=2e-3, atol=1e-6 * np.abs(expected).max())
