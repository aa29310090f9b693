"""CVP end to end on the tiny CLIP: Laplace on pool images, calibration on held-out labels,
then the calibrated posterior's propagation against Monte Carlo over that same posterior."""

from __future__ import annotations

import numpy as np
import torch

from alkit.cvp.blocks import prefix_tokens, propagate_tail
from alkit.cvp.calibration import fit_calibration
from alkit.cvp.laplace import fit_diagonal_laplace
from alkit.cvp.montecarlo import monte_carlo_tail
from alkit.posterior.threads import one_thread


def test_calibrated_laplace_posterior_propagates_like_monte_carlo():
    from alkit.demo.tiny_clip import create_tiny_clip

    model, _, _ = create_tiny_clip(seed=0)
    visual = model.visual
    generator = torch.Generator().manual_seed(1)
    pool, held_out, test = (torch.randn(n, 3, 28, 28, generator=generator) for n in (40, 80, 4))
    text = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    text = text / text.norm(dim=1, keepdim=True)
    scale, k, samples = 30.0, 2, 2000
    with one_thread():
        posterior = fit_diagonal_laplace(visual, prefix_tokens(visual, pool, k), text, scale, k)
        with torch.no_grad():
            g = visual(held_out)
        labels = ((g / g.norm(dim=1, keepdim=True)) @ text.T).argmax(1).numpy()
        rng = np.random.default_rng(0)
        flipped = rng.random(labels.size) < 0.2  # the MAP is overconfident on these labels
        labels[flipped] = rng.integers(0, 4, flipped.sum())
        calibration = fit_calibration(visual, prefix_tokens(visual, held_out, k), labels, posterior, text, scale)
        calibrated = calibration.apply(posterior)
        tokens = prefix_tokens(visual, test, k)
        with torch.no_grad():
            cvp = propagate_tail(visual, tokens, calibrated)
        mc = monte_carlo_tail(visual, tokens, calibrated, samples, seed=3)
    assert calibration.nll_after < calibration.nll_before
    pairs = [(c, (m_mean[:, : c[0].shape[1]], m_var[:, : c[0].shape[1]])) for c, (m_mean, m_var) in zip(cvp.blocks, mc.blocks)]
    pairs.append(((cvp.embedding_mean, cvp.embedding_var), (mc.embedding_mean, mc.embedding_var)))
    for (c_mean, c_var), (m_mean, m_var) in pairs:
        mean_error = float((c_mean.double() - m_mean).norm() / m_mean.norm())
        mc_noise = float((m_var.sum() / samples).sqrt() / m_mean.norm())  # Monte Carlo's own error of the mean
        var_error = float((c_var.double() - m_var).norm() / m_var.norm())
        print(f"mean error {mean_error:.4f} (MC noise {mc_noise:.4f}), variance error {var_error:.4f}")
        assert mean_error < 0.02 + 2 * mc_noise  # this posterior is wide: the MC mean itself is ~3% off
        assert var_error < 0.2
