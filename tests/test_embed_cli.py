"""`alkit embed` end to end through the CLI with a tiny random open_clip model."""

import json

import numpy as np
import pytest
import sqlalchemy as sa

from alkit.embedding.tiny import TINY_VIT, register_config

TINY_ARGS = ("--model", TINY_VIT, "--pretrained", "none", "--workers", "0", "--batch-size", "4", "--no-progress")


@pytest.fixture(autouse=True)
def tiny_config():
    register_config()


def _open(cli):
    from alkit.project import open_project

    return open_project(cli.project_dir)


def _embed_json(cli, *args):
    result = cli("embed", *TINY_ARGS, "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_embed_all_then_nothing_left_and_loud_random_warning(cli, make_images):
    images = make_images(9, size=(40, 30))
    assert cli("init").exit_code == 0
    assert cli("add", str(images[0].parent)).exit_code == 0
    assert cli("classes", "set", "cat", "dog", "bird").exit_code == 0
    result = cli("embed", *TINY_ARGS, "--shard-rows", "4")
    assert result.exit_code == 0, result.output
    assert "embedded 9 images" in result.stdout and "RANDOM weights" in result.stderr
    again = _embed_json(cli)
    assert again["embedded"] == 0 and again["pending"] == 0

    from alkit.storage.specs import current_spec
    from alkit.storage.vectors import load_vectors
    from alkit.workflows.text_features import load_text_features

    project = _open(cli)
    with project.engine.connect() as connection:
        spec = current_spec(connection)
    assert spec.kind == "open_clip" and spec.dim == 32 and spec.phi_dim == 64
    assert spec.spec["weights"]["kind"] == "random" and spec.spec["open_clip_version"]
    ids, vectors = load_vectors(project, spec.id)
    assert ids.tolist() == list(range(1, 10))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=2e-3)
    text_emb, psi, P, Q, logit_scale = load_text_features(project)
    assert text_emb.shape == (3, 32) and psi.shape == (3, 48) and P.shape == (64, 32) and Q.shape == (48, 32)
    assert logit_scale == pytest.approx(np.log(1 / 0.07), rel=1e-5)
    status = json.loads(cli("status", "--json").stdout)
    assert status["images_by_status"] == {"embedded": 9}
    assert status["embedding_specs"][0]["embedded"] == 9


def test_truncated_image_is_rejected_at_embed_time_and_the_rest_proceed(cli, make_images):
    images = make_images(6, size=(40, 30))
    cli("init")
    cli("add", str(images[0].parent))
    data = images[2].read_bytes()
    images[2].write_bytes(data[: len(data) // 2])  # corrupted after `add` probed it
    out = _embed_json(cli)
    assert out["embedded"] == 5
    assert len(out["rejected"]) == 1 and out["rejected"][0]["path"] == str(images[2])
    from alkit.storage.schema import images as images_table

    with _open(cli).engine.connect() as connection:
        row = connection.execute(sa.select(images_table).where(images_table.c.path == str(images[2]))).one()
    assert row.status == "rejected" and "decode failed at embed time" in row.error_reason
    assert _embed_json(cli)["pending"] == 0  # rejected images are not retried


def test_second_spec_never_mixes_and_current_switches(cli, make_images, tmp_path):
    import open_clip
    import torch

    images = make_images(5, size=(40, 30))
    cli("init")
    cli("add", str(images[0].parent))
    first = _embed_json(cli)
    model = open_clip.create_model(TINY_VIT, pretrained=None)
    checkpoint = tmp_path / "other.pt"
    torch.save(model.state_dict(), checkpoint)
    second = _embed_json(cli, "--pretrained", str(checkpoint))
    assert second["spec_id"] != first["spec_id"] and second["embedded"] == 5
    status = json.loads(cli("status", "--json").stdout)
    specs = {s["id"]: s for s in status["embedding_specs"]}
    assert specs[first["spec_id"]]["embedded"] == 5 and specs[second["spec_id"]]["embedded"] == 5
    assert specs[second["spec_id"]]["current"] and not specs[first["spec_id"]]["current"]
    back = _embed_json(cli)  # same model as the first run: no work, first spec current again
    assert back["spec_id"] == first["spec_id"] and back["embedded"] == 0
    human = cli("status").stdout
    assert "* embeddings alkit-tiny-vit/RANDOM(seed=0)" in human

    from alkit.storage.vectors import load_vectors

    project = _open(cli)
    a, b = load_vectors(project, first["spec_id"])[1], load_vectors(project, second["spec_id"])[1]
    assert not np.allclose(a, b, atol=1e-2)


def _npz(path, paths, embeddings, **extra):
    np.savez(path, paths=np.array([str(p) for p in paths]), embeddings=embeddings, **extra)
    return path


def test_imported_embeddings_round_trip(cli, make_images, tmp_path):
    images = make_images(6, size=(40, 30))
    cli("init")
    cli("add", *map(str, images[:3]))  # half registered, half new
    cli("classes", "set", "a", "b")
    rng = np.random.default_rng(0)
    vectors, text = rng.normal(size=(6, 8)).astype(np.float32), rng.normal(size=(2, 8))
    file = _npz(tmp_path / "emb.npz", images, vectors, text_embeddings=text)
    result = cli("embed", "--from", str(file), "--name", "mine", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["embedded"] == 6 and out["registered"] == 3 and out["dim"] == 8

    from alkit.storage.specs import current_spec
    from alkit.storage.vectors import load_vectors
    from alkit.workflows.embed_model import encoder_for_spec
    from alkit.workflows.text_features import load_text_features
    from alkit.errors import StateError

    project = _open(cli)
    with project.engine.connect() as connection:
        spec = current_spec(connection)
        id_by_path = dict(connection.execute(sa.text("SELECT path, id FROM images")).all())
    assert spec.kind == "imported" and spec.name == "mine" and spec.phi_dim is None
    ids, stored = load_vectors(project, spec.id)
    order = [id_by_path[str(p)] for p in images]
    expected = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(stored[np.argsort(np.argsort(order))], expected, atol=2e-3)
    features = load_text_features(project)
    assert features.text_emb.shape == (2, 8) and features.psi is None and features.P is None
    with pytest.raises(StateError, match="imported from a file"):
        encoder_for_spec(project, spec)
    again = json.loads(cli("embed", "--from", str(file), "--name", "mine", "--json").stdout)
    assert again["embedded"] == 0 and again["already_embedded"] == 6
    cli("classes", "set", "a", "b", "c")  # text embeddings were for the old class list
    assert load_text_features(project).text_emb is None


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_path", "neither registered nor existing files"),
        ("dims", "holds 8-dim vectors"),
        ("text_dims", "text_embeddings` must be (K, D)"),
        ("empty_name", "--name must not be empty"),
        ("shape", "must be (N, D)"),
    ],
)
def test_import_refusals(cli, make_images, tmp_path, case, message):
    images = make_images(3, size=(40, 30))
    cli("init")
    rng = np.random.default_rng(0)
    good = _npz(tmp_path / "good.npz", images, rng.normal(size=(3, 8)))
    if case == "dims":
        assert cli("embed", "--from", str(good), "--name", "n").exit_code == 0
        file = _npz(tmp_path / "bad.npz", images, rng.normal(size=(3, 5)))
    elif case == "unknown_path":
        file = _npz(tmp_path / "bad.npz", [*images[:2], tmp_path / "nope.png"], rng.normal(size=(3, 8)))
    elif case == "text_dims":
        file = _npz(tmp_path / "bad.npz", images, rng.normal(size=(3, 8)), text_embeddings=rng.normal(size=(2, 7)))
    elif case == "shape":
        file = _npz(tmp_path / "bad.npz", images, rng.normal(size=(2, 8)))
    else:
        file = good
    args = ["embed", "--from", str(file), "--name", "" if case == "empty_name" else "n"]
    result = cli(*args)
    assert result.exit_code == 4, result.output
    assert message in result.stderr and result.stderr.count("\n") == 1


def test_unknown_model_and_tag_are_clear_errors(cli, make_images):
    cli("init")
    result = cli("embed", "--model", "No-Such-Model", "--no-progress")
    assert result.exit_code == 4 and "unknown open_clip architecture" in result.stderr
    result = cli("embed", "--model", "ViT-B-32", "--pretrained", "no_such_tag", "--no-progress")
    assert result.exit_code == 4 and "neither a checkpoint file nor a tag" in result.stderr
    assert "laion2b_s34b_b79k" in result.stderr
