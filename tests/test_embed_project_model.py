"""The project remembers its model: the first `embed --model M --pretrained P` records it, a
bare `embed` reuses it for new images, and random weights come only from `--pretrained none`."""

from __future__ import annotations

import json

import pytest
import torch

from alkit.embedding.tiny import TINY_VIT, register_config

FAST = ("--workers", "0", "--batch-size", "4", "--no-progress")


@pytest.fixture(autouse=True)
def tiny_config():
    register_config()


@pytest.fixture
def checkpoint(tmp_path):
    import open_clip

    torch.manual_seed(7)
    model, _, _ = open_clip.create_model_and_transforms(TINY_VIT, pretrained=None)
    path = tmp_path / "weights" / "tiny.pt"
    path.parent.mkdir()
    torch.save(model.state_dict(), path)
    return path


def _specs(project_dir):
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{project_dir / 'alkit.db'}")
    with engine.connect() as connection:
        rows = connection.execute(sa.text("SELECT id, name, is_current FROM embedding_specs ORDER BY id")).all()
        per_spec = dict(connection.execute(sa.text("SELECT spec_id, count(*) FROM embeddings GROUP BY spec_id")).all())
    engine.dispose()
    return rows, per_spec


def test_bare_embed_reuses_the_recorded_checkpoint_for_new_images(cli, make_images, checkpoint):
    first = make_images(5, folder="first", size=(40, 30))
    assert cli("init").exit_code == 0
    assert cli("add", str(first[0].parent)).exit_code == 0
    result = cli("embed", "--model", TINY_VIT, "--pretrained", str(checkpoint), *FAST, "--json")
    assert result.exit_code == 0, result.output
    recorded = json.loads(result.stdout)
    assert recorded["embedded"] == 5 and not recorded["random_weights"] and "RANDOM" not in result.stderr

    second = make_images(3, folder="second", start_seed=50, size=(40, 30))
    assert cli("add", str(second[0].parent)).exit_code == 0
    bare = cli("embed", *FAST, "--json")
    assert bare.exit_code == 0, bare.output
    again = json.loads(bare.stdout)
    assert again["spec_id"] == recorded["spec_id"] and again["embedded"] == 3 and not again["random_weights"]
    rows, per_spec = _specs(cli.project_dir)
    assert [(spec_id, bool(current)) for spec_id, _, current in rows] == [(recorded["spec_id"], True)]
    assert per_spec == {recorded["spec_id"]: 8}
    # naming the same architecture without --pretrained still means the recorded weights
    assert json.loads(cli("embed", "--model", TINY_VIT, *FAST, "--json").stdout)["spec_id"] == recorded["spec_id"]
    # new weights alone keep the project's architecture (not the ViT-B-32 default)
    other = json.loads(cli("embed", "--pretrained", "none", *FAST, "--json").stdout)
    assert other["spec"].startswith(f"{TINY_VIT}/RANDOM") and other["embedded"] == 8


def test_changed_checkpoint_is_an_integrity_error_not_a_new_spec(cli, make_images, checkpoint):
    images = make_images(2, size=(40, 30))
    cli("init")
    cli("add", str(images[0].parent))
    assert cli("embed", "--model", TINY_VIT, "--pretrained", str(checkpoint), *FAST).exit_code == 0
    checkpoint.write_bytes(checkpoint.read_bytes() + b"changed")
    result = cli("embed", *FAST)
    assert result.exit_code == 7 and "changed since the project's model" in result.stderr


def test_bare_embed_in_a_new_project_names_the_flags(cli, make_images):
    images = make_images(2, size=(40, 30))
    cli("init")
    cli("add", str(images[0].parent))
    result = cli("embed", *FAST)
    assert result.exit_code == 4
    assert "--model" in result.stderr and "--pretrained" in result.stderr and result.stderr.count("\n") == 1
    assert _specs(cli.project_dir) == ([], {})  # nothing embedded, no spec made current


def test_model_without_pretrained_is_never_random(cli, make_images):
    images = make_images(2, size=(40, 30))
    cli("init")
    cli("add", str(images[0].parent))
    result = cli("embed", "--model", TINY_VIT, *FAST)
    assert result.exit_code == 4 and "without --pretrained" in result.stderr
    explicit = cli("embed", "--model", TINY_VIT, "--pretrained", "none", *FAST, "--json")
    assert explicit.exit_code == 0 and json.loads(explicit.stdout)["random_weights"]
    assert "RANDOM weights" in explicit.stderr


def test_bare_embed_after_an_import_says_the_space_was_imported(cli, make_images, tmp_path):
    import numpy as np

    images = make_images(2, size=(40, 30))
    cli("init")
    npz = tmp_path / "v.npz"
    np.savez(npz, paths=np.array([str(p) for p in images]), embeddings=np.eye(2, 4))
    assert cli("embed", "--from", str(npz)).exit_code == 0
    result = cli("embed", *FAST)
    assert result.exit_code == 4 and "imported from a file" in result.stderr and "--pretrained" in result.stderr
