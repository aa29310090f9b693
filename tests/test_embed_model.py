"""The library path: checkpoint round trip, phi @ P, worker decoding, lazy text features."""

import numpy as np
import pytest
import torch

from alkit.embedding.tiny import TINY_VIT, register_config
from alkit.project import open_project
from alkit.workflows.classes import set_classes
from alkit.storage.specs import current_spec
from alkit.storage.vectors import load_vectors
from alkit.workflows.embed import embed_images
from alkit.workflows.embed_model import encoder_for_spec
from alkit.workflows.text_features import load_projections, load_text_features
from alkit.workflows.ingest import add_images

FP16 = dict(rtol=2e-3, atol=2e-3)


@pytest.fixture(autouse=True)
def tiny_config():
    register_config()


@pytest.fixture
def tiny_model(tmp_path):
    """An in-memory tiny model with non-default weights, and its checkpoint file."""
    import open_clip

    torch.manual_seed(123)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_VIT, pretrained=None)
    model.eval()
    path = tmp_path / "tiny.pt"
    torch.save(model.state_dict(), path)
    return model, preprocess, path


def _project(project, **flags):
    return open_project(project.directory, {"model": TINY_VIT, "pretrained": "none", "workers": 0, "batch_size": 3, **flags})


def test_checkpoint_round_trip_and_phi_reproduces_embedding(project, make_images, tiny_model):
    from PIL import Image

    model, preprocess, path = tiny_model
    images = make_images(7, size=(50, 40))
    add_images(project, [str(p) for p in images], show_progress=False)
    run = _project(project, pretrained=str(path))
    result = embed_images(run, show_progress=False, shard_rows=4)
    assert result.embedded == 7 and not result.random_weights and result.spec_name.startswith(f"{TINY_VIT}/tiny.pt@")
    ids, stored = load_vectors(run, result.spec_id)
    _, phi = load_vectors(run, result.spec_id, kind="phi")
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in images])
        expected = model.encode_image(pixels, normalize=True).numpy()
    np.testing.assert_allclose(stored, expected, **FP16)
    P = load_projections(run, result.spec_id)["P"]
    np.testing.assert_allclose(P, model.visual.proj.detach().numpy())
    g = phi @ P  # (N, D) unnormalised embedding from the stored pre-projection feature
    np.testing.assert_allclose(g / np.linalg.norm(g, axis=1, keepdims=True), expected, **FP16)
    with torch.no_grad():
        unnormalised = model.encode_image(pixels).numpy()
    np.testing.assert_allclose(g, unnormalised, rtol=1e-2, atol=1e-2 * np.abs(unnormalised).max())

    # the encoder of the spec embeds new text like the in-memory model
    with run.engine.connect() as connection:
        spec = current_spec(connection)
    assert spec.spec["weights"]["checkpoint_hash"]
    encoder = encoder_for_spec(run, spec)
    text, psi = encoder.encode_texts(["a photo of a cat"])
    with torch.no_grad():
        reference = model.encode_text(encoder.tokenizer(["a photo of a cat"]))
    np.testing.assert_allclose(text.numpy(), reference.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose((psi @ model.text_projection).detach().numpy(), reference.numpy(), rtol=1e-4, atol=1e-5)


def test_changed_checkpoint_is_refused_for_the_old_spec(project, make_images, tiny_model):
    from alkit.errors import IntegrityError

    model, _, path = tiny_model
    add_images(project, [str(p) for p in make_images(2, size=(40, 30))], show_progress=False)
    run = _project(project, pretrained=str(path))
    result = embed_images(run, show_progress=False)
    with torch.no_grad():
        model.visual.proj.mul_(2)
    torch.save(model.state_dict(), path)
    with pytest.raises(IntegrityError, match="changed since"):
        encoder_for_spec(run, result.spec_id)


def test_worker_processes_give_the_same_vectors(project, make_images, tmp_path):
    from alkit.project import init_project

    add_images(project, [str(p) for p in make_images(10, size=(60, 45))], show_progress=False)
    inline = embed_images(_project(project), show_progress=False)
    other_dir = tmp_path / "other"
    init_project(other_dir)
    other = open_project(other_dir)
    add_images(other, [str(p) for p in sorted((tmp_path / "images").glob("*.png"))], show_progress=False)
    with_workers = embed_images(_project(other, workers=2, batch_size=4), show_progress=False, shard_rows=3)
    assert inline.embedded == with_workers.embedded == 10 and with_workers.shards_written == 3  # batches 4+4+2, flushed at >= 3 rows
    a = load_vectors(_project(project), inline.spec_id)
    b = load_vectors(_project(other), with_workers.spec_id)
    assert a[0].tolist() == b[0].tolist()
    np.testing.assert_allclose(a[1], b[1], **FP16)


def test_text_features_follow_the_class_list(project, make_images):
    add_images(project, [str(p) for p in make_images(2, size=(40, 30))], show_progress=False)
    run = _project(project)
    result = embed_images(run, show_progress=False)
    assert result.text_features is None  # no classes yet
    set_classes(run, ["cat", "dog"])
    first = load_text_features(run)
    assert first.text_emb.shape == (2, 32)
    set_classes(run, ["dog", "cat", "fish"])  # lazily recomputed for the new list
    second = load_text_features(run)
    assert second.text_emb.shape == (3, 32)
    np.testing.assert_allclose(second.text_emb[0], first.text_emb[1], atol=1e-6)
    files = sorted(p.name for p in (run.artefacts_dir / "vectors").glob("*/text-*.safetensors"))
    assert len(files) == 2


def test_jpeg_draft_decoding_keeps_vectors_close(project, tmp_path):
    from PIL import Image

    from alkit.embedding.decode import open_rgb_image

    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 256, size=(12, 16, 3)), np.ones((40, 40, 1))).astype(np.uint8)  # 480x640
    path = tmp_path / "photo.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    drafted = open_rgb_image(str(path), min_size=32)
    assert min(drafted.size) >= 32 and drafted.size[0] < 640  # decoded at a reduced scale
    full = open_rgb_image(str(path), min_size=10_000)
    assert full.size == (640, 480)


def test_architecture_without_linear_projection_stores_embeddings_only(project, make_images):
    from alkit.embedding.tiny import TINY_VIT_CONFIG
    from alkit.errors import StateError

    config = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
              "text_cfg": TINY_VIT_CONFIG["text_cfg"]}  # ModifiedResNet: attention pooling, no visual.proj
    name = register_config("alkit-tiny-rn", config)
    add_images(project, [str(p) for p in make_images(3, size=(40, 30))], show_progress=False)
    run = _project(project, model=name)
    result = embed_images(run, show_progress=False)
    with run.engine.connect() as connection:
        spec = current_spec(connection)
    assert result.embedded == 3 and spec.dim == 32 and spec.phi_dim is None
    assert load_vectors(run, spec.id)[1].shape == (3, 32)
    with pytest.raises(StateError, match="no phi vectors"):
        load_vectors(run, spec.id, kind="phi")
