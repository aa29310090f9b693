"""The demo's tiny open_clip model (config, phi/psi, training, checkpoint round trip) and data."""

from __future__ import annotations

import csv
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest

from alkit.demo.data import (
    CLASS_NAMES,
    ShiftSettings,
    class_prompts,
    images_to_tensor,
    make_demo_split,
    shift_style,
    stratified_split_indices,
    write_pngs,
)
from alkit.demo.tiny_clip import (
    TINY_CLIP_NAME,
    create_tiny_clip,
    image_features_and_phi,
    image_projection_matrix,
    register_tiny_clip_config,
    text_features_and_psi,
)
from alkit.demo.train_clip import (
    TinyClipTrainSettings,
    ensure_demo_model,
    multi_positive_info_nce,
    settings_hash,
    train_tiny_clip,
)

QUICK = TinyClipTrainSettings(max_steps=3, batch_size=20, warmup_steps=1)


@pytest.fixture(scope="module")
def split():
    return make_demo_split(seed=0)


@pytest.fixture(scope="module")
def random_clip():
    return create_tiny_clip(None, seed=0)


def test_config_registers_and_builds_through_open_clip():
    import open_clip

    name = register_tiny_clip_config()
    assert name in open_clip.list_models()
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
    assert tuple(model.visual.proj.shape) == (64, 64)  # (d, D)
    assert tuple(model.text_projection.shape) == (64, 64)  # (d_text, D)
    assert model.visual.image_size == (28, 28)
    assert open_clip.get_tokenizer(name)(["a photo of the digit one"]).shape == (1, 16)


def test_phi_times_proj_reproduces_image_embedding(random_clip):
    import torch

    model, _, _ = random_clip
    images = torch.randn(5, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    embedding, phi = image_features_and_phi(model, images)
    with torch.no_grad():
        unnormalised = model.encode_image(images)
    assert phi.shape == (5, 64) and embedding.shape == (5, 64)
    torch.testing.assert_close(phi @ image_projection_matrix(model).T, unnormalised)
    torch.testing.assert_close(embedding, unnormalised / unnormalised.norm(dim=1, keepdim=True))
    assert model.visual.proj is not None  # restored after reading phi


def test_psi_times_text_projection_reproduces_text_embedding(random_clip):
    import torch

    model, _, tokenizer = random_clip
    tokens = tokenizer(class_prompts())
    embedding, psi = text_features_and_psi(model, tokens)
    with torch.no_grad():
        unnormalised = model.encode_text(tokens)
    assert psi.shape == (10, 64)
    torch.testing.assert_close(psi @ model.text_projection, unnormalised)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(10))
    assert model.text_projection is not None


def test_multi_positive_info_nce_matches_a_loop():
    import torch

    generator = torch.Generator().manual_seed(0)
    image = torch.nn.functional.normalize(torch.randn(4, 3, generator=generator), dim=1)
    text = torch.nn.functional.normalize(torch.randn(4, 3, generator=generator), dim=1)
    labels = torch.tensor([0, 1, 0, 2])
    scale = torch.tensor(np.log(10.0))
    logits = (10.0 * image @ text.T).numpy().astype(np.float64)

    def direction(matrix):
        total = 0.0
        for i in range(4):
            positives = [j for j in range(4) if labels[j] == labels[i]]
            log_norm = np.log(np.sum(np.exp(matrix[i])))
            total += -np.mean([matrix[i, j] - log_norm for j in positives])
        return total / 4

    expected = (direction(logits) + direction(logits.T)) / 2
    assert float(multi_positive_info_nce(image, text, labels, scale)) == pytest.approx(expected, rel=1e-5)


def test_short_training_round_trips_through_open_clip_pretrained_path(tmp_path, split):
    import open_clip
    import torch
    from safetensors.torch import load_file

    images, labels = split.train_images[:40], split.train_labels[:40]
    report = train_tiny_clip(images, labels, tmp_path / "a.safetensors", QUICK)
    again = train_tiny_clip(images, labels, tmp_path / "b.safetensors", QUICK)
    assert report.steps == 3 and np.isfinite(report.final_loss)
    assert report.checkpoint.read_bytes() == again.checkpoint.read_bytes()  # deterministic for a seed

    register_tiny_clip_config()
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_CLIP_NAME, pretrained=str(report.checkpoint))
    model.eval()
    saved = load_file(str(report.checkpoint))
    loaded = model.state_dict()
    assert set(saved) == set(loaded)
    for key, tensor in saved.items():
        assert torch.equal(tensor, loaded[key]), key

    random_model, _, _ = create_tiny_clip(None, seed=0)
    assert not torch.equal(random_model.visual.proj, model.visual.proj)  # training moved the weights
    pixels = images_to_tensor(images[:8], preprocess)
    reloaded, _, _ = create_tiny_clip(report.checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(pixels), reloaded.encode_image(pixels), rtol=0, atol=0)


def test_ensure_demo_model_trains_once_then_reuses(tmp_path, monkeypatch):
    import alkit.demo.train_clip as train_module

    calls = []
    original = train_module.train_tiny_clip

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_tiny_clip", counting)
    first = ensure_demo_model(tmp_path, QUICK)
    second = ensure_demo_model(tmp_path, QUICK)
    assert first == second and first.is_file() and first.with_suffix(".json").is_file()
    assert len(calls) == 1
    assert settings_hash(QUICK, 0) in first.name
    assert settings_hash(QUICK, 0) != settings_hash(TinyClipTrainSettings(max_steps=4), 0)


def test_split_is_deterministic_disjoint_stratified_and_complete():
    labels = np.repeat(np.arange(10), 50)
    first = stratified_split_indices(labels, (0.5, 0.4, 0.1), seed=7)
    second = stratified_split_indices(labels, (0.5, 0.4, 0.1), seed=7)
    other = stratified_split_indices(labels, (0.5, 0.4, 0.1), seed=8)
    for a, b in zip(first, second):
        assert np.array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    everything = np.concatenate(first)
    assert len(everything) == len(set(everything.tolist())) == 500
    for part, per_class in zip(first, (25, 20, 5)):
        assert np.bincount(labels[part], minlength=10).tolist() == [per_class] * 10


def test_demo_split_parts(split):
    assert len(split.train_images) == 2500 and len(split.pool_images) == 2000 and len(split.test_images) == 500
    assert not set(split.train_indices) & set(split.pool_indices)
    assert not set(split.pool_indices) & set(split.test_indices)
    assert split.pool_images.dtype == np.uint8 and split.pool_images.shape[1:] == (28, 28)
    assert not np.array_equal(split.test_images, split.test_clean_images)


def test_shift_style_is_deterministic_and_changes_the_images(split):
    clean = split.test_clean_images[:20]
    shifted = shift_style(clean, seed=3)
    assert np.array_equal(shifted, shift_style(clean, seed=3))
    assert not np.array_equal(shifted, shift_style(clean, seed=4))
    assert np.abs(shifted.astype(float) - clean).mean() > 20  # noise alone moves pixels ~0.2 * 255
    inverted = shift_style(clean, seed=3, settings=ShiftSettings(invert=True, max_rotation_degrees=0, noise_std=0))
    assert np.array_equal(inverted, 255 - clean)


def test_write_pngs_round_trip_and_answer_key(tmp_path, split, random_clip):
    from PIL import Image

    _, preprocess, _ = random_clip
    images, labels = split.pool_images[:5], split.pool_labels[:5]
    paths = write_pngs(images, labels, tmp_path / "pool", "pool")
    assert [p.name for p in paths] == [f"pool_{i:05d}.png" for i in range(5)]
    for path, image in zip(paths, images):
        with Image.open(path) as opened:
            assert np.array_equal(np.asarray(opened), image)
            assert tuple(preprocess(opened).shape) == (3, 28, 28)  # grey PNG -> RGB tensor
    with open(tmp_path / "pool" / "pool_labels.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["path"], r["label"]) for r in rows] == [(p.name, CLASS_NAMES[int(y)]) for p, y in zip(paths, labels)]


def test_supervised_view_contrastive_matches_a_loop():
    import torch

    from alkit.demo.train_clip import supervised_view_contrastive

    generator = torch.Generator().manual_seed(2)
    first = torch.nn.functional.normalize(torch.randn(4, 3, generator=generator), dim=1)
    second = torch.nn.functional.normalize(torch.randn(4, 3, generator=generator), dim=1)
    labels = torch.tensor([0, 1, 0, 2])
    z = torch.cat([first, second]).double().numpy()
    y = np.concatenate([labels.numpy(), labels.numpy()])
    total = 0.0
    for i in range(8):
        others = [j for j in range(8) if j != i]
        log_norm = np.log(sum(np.exp(z[i] @ z[j] / 0.5) for j in others))
        positives = [j for j in others if y[j] == y[i]]
        total += -np.mean([z[i] @ z[j] / 0.5 - log_norm for j in positives])
    assert float(supervised_view_contrastive(first, second, labels, 0.5)) == pytest.approx(total / 8, rel=1e-5)


def test_shifted_views_without_rotation_or_noise_are_the_images_or_their_inverse(split):
    import torch

    from alkit.demo.train_clip import shifted_views

    grey = torch.as_tensor(split.train_images[:6], dtype=torch.float32) / 255.0
    generator = torch.Generator().manual_seed(0)
    torch.testing.assert_close(shifted_views(grey, generator, 0.0, 0.0), grey, atol=1e-5, rtol=0)
    torch.testing.assert_close(shifted_views(grey, generator, 0.0, 0.0, invert=True), 1.0 - grey, atol=1e-5, rtol=0)
    # Rotated + noisy views differ per draw and stay in [0, 1]; noise std as set (far from the clipped ends).
    a, b = shifted_views(grey, generator, 35.0, 0.1), shifted_views(grey, generator, 35.0, 0.1)
    assert not torch.equal(a, b) and a.min() >= 0 and a.max() <= 1
    plain = shifted_views(grey, torch.Generator().manual_seed(5), 35.0, 0.0)
    noisy = shifted_views(grey, torch.Generator().manual_seed(5), 35.0, 0.1)
    middle = (plain > 0.3) & (plain < 0.7)
    assert float((noisy - plain)[middle].std()) == pytest.approx(0.1, rel=0.2)


def test_training_with_shifted_views_is_deterministic_and_keeps_the_checkpoint_format(tmp_path, split):
    from safetensors.torch import load_file

    settings = TinyClipTrainSettings(max_steps=2, batch_size=20, warmup_steps=1, view_weight=1.0, view_invert=True,
                                     caption_view_fraction=0.5)
    images, labels = split.train_images[:40], split.train_labels[:40]
    first = train_tiny_clip(images, labels, tmp_path / "a.safetensors", settings)
    second = train_tiny_clip(images, labels, tmp_path / "b.safetensors", settings)
    plain = train_tiny_clip(images, labels, tmp_path / "c.safetensors", QUICK)
    assert first.checkpoint.read_bytes() == second.checkpoint.read_bytes()
    assert set(load_file(str(first.checkpoint))) == set(load_file(str(plain.checkpoint)))  # the view head is not saved
    assert settings_hash(settings, 0) != settings_hash(QUICK, 0)
