"""`alkit embed --precision int8`: dynamic int8 quantisation of the Linear layers (CPU), its
agreement with fp32 on the demo's trained tiny CLIP, and its own embedding spec."""

import numpy as np
import pytest

from alkit.embedding.tiny import TINY_VIT, register_config
from alkit.errors import ConfigError


@pytest.fixture(scope="module")
def demo_encoders():
    """The demo's trained tiny CLIP (`ensure_demo_model`: cached, trained once if missing) at fp32 and int8."""
    from alkit.demo.tiny_clip import TINY_CLIP_NAME, register_tiny_clip_config
    from alkit.demo.train_clip import ensure_demo_model
    from alkit.embedding.model import load_open_clip
    from alkit.embedding.spec import WeightsSource

    register_tiny_clip_config()
    weights = WeightsSource("checkpoint", str(ensure_demo_model()))
    return {precision: load_open_clip(TINY_CLIP_NAME, weights, "cpu", precision) for precision in ("fp32", "int8")}


def _unit(rows):
    rows = rows.numpy() if hasattr(rows, "numpy") else rows
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_int8_agrees_with_fp32_on_the_trained_tiny_clip(demo_encoders, one_torch_thread):
    """Measured on the demo's 2500 test + pool images (benchmarks/int8_agreement.py): cosine
    min 0.9984, mean 0.9998; zero-shot top-1 agreement 0.982. Asserted with a margin on 300."""
    import torch

    from alkit.demo.data import class_prompts, images_to_tensor, make_demo_split

    split = make_demo_split(seed=0)
    pixels = images_to_tensor(split.test_images[:300], demo_encoders["fp32"].preprocess)
    out = {}
    for precision, encoder in demo_encoders.items():
        emb, phi = encoder.encode_pixels(pixels)
        text, _ = encoder.encode_texts(class_prompts())
        out[precision] = (emb, phi, (_unit(emb) @ _unit(text).T).argmax(axis=1))
    int8 = demo_encoders["int8"]
    quantised = [m for m in int8.model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert len(quantised) == 10  # the MLPs of 3 image + 2 text blocks: int8 really ran
    for index in (0, 1):  # embedding, phi
        cosine = np.sum(_unit(out["fp32"][index]) * _unit(out["int8"][index]), axis=1)
        assert cosine.min() >= 0.995 and cosine.mean() >= 0.999, (index, cosine.min(), cosine.mean())
    assert np.mean(out["fp32"][2] == out["int8"][2]) >= 0.95
    emb, phi = out["int8"][:2]  # the projection stays float32: phi @ P is still the int8 embedding
    torch.testing.assert_close(phi @ int8.image_proj.matrix(), emb, rtol=1e-4, atol=1e-5)


def test_int8_is_refused_on_cuda(monkeypatch):
    import alkit.embedding.model as model
    from alkit.embedding.spec import WeightsSource

    register_config()
    monkeypatch.setattr(model, "resolve_device", lambda device: "cuda")
    with pytest.raises(ConfigError, match="int8 .dynamic quantisation. runs on CPU only.*--device cpu"):
        model.load_open_clip(TINY_VIT, WeightsSource("random", None, random_seed=0), "cuda", "int8")


def test_int8_is_its_own_spec_and_fp32_comes_back_to_its_own(cli, make_images):
    """fp32, then int8, then fp32 again: two specs whose vectors never mix; the last run embeds nothing."""
    import json

    register_config()
    images = make_images(5, size=(40, 30))
    assert cli("init").exit_code == 0 and cli("add", images[0].parent).exit_code == 0
    base = ["embed", "--model", TINY_VIT, "--pretrained", "none", "--workers", "0", "--no-progress", "--json"]
    runs = [json.loads(cli(*base, "--precision", precision).stdout.splitlines()[-1]) for precision in ("fp32", "int8", "fp32")]
    fp32, int8, again = runs
    assert int8["key"] != fp32["key"] and again["key"] == fp32["key"]
    assert int8["spec"] == fp32["spec"] + "+int8-dynamic-linear"
    assert fp32["embedded"] == int8["embedded"] == 5 and again["embedded"] == 0
    from alkit.embedding.spec import PlannedSpec, WeightsSource, for_precision

    planned = PlannedSpec(TINY_VIT, WeightsSource("random", None, random_seed=0), {}, fp32["key"])
    assert for_precision(planned, "fp16").key == for_precision(planned, "bf16").key == planned.key  # recorded, not keyed
    assert for_precision(for_precision(planned, "int8"), "fp32") == planned
