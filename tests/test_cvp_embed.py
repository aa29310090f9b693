"""CVP embedding use case: the stored arrays, and the unit-norm embedding variance against Monte Carlo."""

from __future__ import annotations

import numpy as np
import torch

from alkit.cvp.blocks import prefix_tokens
from alkit.cvp.montecarlo import RunningMoments, sample_tail
from alkit.cvp.weights import isotropic_posterior, sample_block_parameters
from alkit.posterior.threads import one_thread
from alkit.workflows.cvp_embed import cvp_encode_batch


def test_cvp_batch_matches_plain_embedding_and_monte_carlo_of_the_unit_norm_embedding():
    from alkit.demo.tiny_clip import create_tiny_clip, image_features_and_phi

    model, _, _ = create_tiny_clip(seed=0)
    pixels = torch.randn(4, 3, 28, 28, generator=torch.Generator().manual_seed(8))
    posterior = isotropic_posterior(model.visual, 2, 0.1)
    with one_thread():
        arrays = cvp_encode_batch(model, pixels, posterior)
        plain, phi = image_features_and_phi(model, pixels)
        tokens = prefix_tokens(model.visual, pixels, 2)
        generator = torch.Generator().manual_seed(9)
        blocks = model.visual.transformer.resblocks[-2:]
        unit = RunningMoments()
        for _ in range(1500):  # MC variance error ~3.7% per element
            params = [sample_block_parameters(b, v, generator) for b, v in zip(blocks, posterior.blocks)]
            _, g = sample_tail(model.visual, tokens, params)
            unit.add(g / g.norm(dim=1, keepdim=True))
    assert set(arrays) == {"embedding", "embedding_var", "phi", "phi_var"}
    assert all(a.dtype == np.float32 and a.shape[0] == 4 for a in arrays.values())
    # the CVP mean is E[phi], not phi at the mean weights: close to, not equal to, the forward
    assert np.linalg.norm(arrays["phi"] - phi.numpy()) < 0.02 * np.linalg.norm(phi.numpy())
    np.testing.assert_allclose(np.linalg.norm(arrays["embedding"], axis=1), 1.0, rtol=1e-5)
    assert np.abs(arrays["embedding"] - unit.mean.numpy()).max() < 0.02 * np.abs(unit.mean.numpy()).max()
    var_error = np.linalg.norm(arrays["embedding_var"] - unit.var.numpy()) / np.linalg.norm(unit.var.numpy())
    print("unit-norm embedding variance, relative error vs Monte Carlo:", round(float(var_error), 4))
    assert var_error < 0.2
    assert np.linalg.norm(arrays["embedding"] - plain.numpy()) < 0.05 * np.linalg.norm(plain.numpy())
