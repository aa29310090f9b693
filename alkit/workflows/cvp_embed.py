"""Use case: embed images with CVP, returning each embedding's variance beside it.

`cvp_encode_batch(model, pixels, posterior)` gives the arrays `alkit embed` stores for a batch
(unit-norm `embedding`, `phi`, as `embedding.encode.encode_batch`) plus `embedding_var` (the
delta-method diagonal variance of the unit-norm embedding) and `phi_var` (the diagonal
variance of phi, the input of `visual.proj`: what a BayesVLM posterior over the projection
composes with, Cov g = P diag(phi_var) P^T + its own term). The deterministic blocks run once
(`prefix_tokens`); only the last `posterior.num_blocks` blocks are propagated.
"""

from __future__ import annotations

import numpy as np

from alkit.arrays import l2_normalise
from alkit.cvp.calibration import Calibration
from alkit.cvp.weights import WeightPosterior

FLOAT16_MAX = 65504.0  # the largest finite float16, the dtype of the stored shards


def cvp_encode_batch(model, pixels, posterior: WeightPosterior, calibration: Calibration | None = None) -> dict[str, np.ndarray]:
    """Arrays for one preprocessed batch `pixels (B, 3, H, W)` of an open_clip CLIP model."""
    import torch

    from alkit.cvp.blocks import prefix_tokens, propagate_tail
    from alkit.cvp.predictive import unit_embedding_moments

    visual = model.visual
    if calibration is not None:
        posterior = calibration.apply(posterior)
    with torch.no_grad():
        tokens = prefix_tokens(visual, pixels, posterior.num_blocks)
        moments = propagate_tail(visual, tokens, posterior)
    unit, unit_var = unit_embedding_moments(moments.pooled_mean, moments.pooled_var, visual.proj)
    return {
        "embedding": l2_normalise(unit.astype(np.float32)),
        "embedding_var": unit_var.astype(np.float32),
        "phi": moments.pooled_mean.float().cpu().numpy(),
        "phi_var": moments.pooled_var.float().cpu().numpy(),
    }


def cvp_batch_encoder(posterior: WeightPosterior, calibration: Calibration | None):
    """`encode(encoder, pixels)` for `alkit.embedding.encode.run_local_embed`: a batch's arrays
    with their variances (the calibration applied once, here, not per batch)."""
    calibrated = posterior if calibration is None else calibration.apply(posterior)

    def encode(encoder, pixels) -> dict[str, np.ndarray]:
        arrays = cvp_encode_batch(encoder.model, pixels.to(encoder.device), calibrated)
        for kind in ("embedding_var", "phi_var"):  # float16 shards: beyond its range a variance would be stored as inf
            np.clip(arrays[kind], 0.0, FLOAT16_MAX, out=arrays[kind])
        return arrays

    return encode
