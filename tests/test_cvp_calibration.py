"""CVP calibration: scales fitted by NLL move a too-narrow / too-wide posterior the right way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from alkit.cvp.blocks import prefix_tokens
from alkit.cvp.calibration import fit_calibration, predictive_nll
from alkit.cvp.weights import isotropic_posterior
from alkit.posterior.threads import one_thread

SCALE = 30.0  # CLIP-like logit scale: the MAP predictive is confident


@pytest.fixture(scope="module")
def tiny():
    """Tiny CLIP, 150 images, its MAP's zero-shot predictions, 4 random class prompts."""
    from alkit.demo.tiny_clip import create_tiny_clip

    model, _, _ = create_tiny_clip(seed=0)
    visual = model.visual
    images = torch.randn(150, 3, 28, 28, generator=torch.Generator().manual_seed(1))
    text = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    text = text / text.norm(dim=1, keepdim=True)
    with one_thread(), torch.no_grad():
        tokens = prefix_tokens(visual, images, 1)
        g = visual(images)
    predicted = ((g / g.norm(dim=1, keepdim=True)) @ text.T).argmax(1).numpy()
    return visual, tokens, predicted, text


@pytest.mark.parametrize("start, flip, direction", [(0.01, 0.3, "up"), (1.0, 0.0, "down")])
def test_block_scale_moves_the_way_the_labels_ask(tiny, start, flip, direction):
    """Labels = the MAP's predictions with a fraction `flip` replaced by random classes: with
    30% flipped the MAP is overconfident, so a too-narrow posterior must widen; with none, a
    too-wide posterior must narrow."""
    visual, tokens, predicted, text = tiny
    rng = np.random.default_rng(7)
    labels = predicted.copy()
    flipped = rng.random(labels.size) < flip
    labels[flipped] = rng.integers(0, text.shape[0], flipped.sum())
    posterior = isotropic_posterior(visual, 1, start)
    with one_thread():
        fitted = fit_calibration(visual, tokens, labels, posterior, text, SCALE)
        recomputed = predictive_nll(visual, tokens, labels, fitted.apply(posterior), text, SCALE, fitted.output_scale)
    assert fitted.nll_after < fitted.nll_before
    assert abs(recomputed - fitted.nll_after) < 1e-9
    (scale,) = fitted.block_scales
    print(f"start {start}, flip {flip}:", fitted)
    if direction == "up":
        assert scale > 3.0
    else:
        assert scale < 1 / 3.0
    assert fitted.as_json()["num_images"] == 150
