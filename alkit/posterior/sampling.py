"""Class probabilities under shared projection draws (BayesVLM's Monte Carlo path).

The draws themselves come from `kronecker.EigenFactors.sample` (W_s = W_MAP + U_B (Z / sqrt(E^T))
U_A^T, its covariance checked against the dense precision in the tests). Because the S draws are
applied to every chunk of inputs, probabilities from different calls are jointly distributed,
which EPIG needs.
"""

from __future__ import annotations

import numpy as np


def cosine_logits(features: np.ndarray, projections: np.ndarray, text: np.ndarray, logit_scale: float):
    """s cos(P_s phi, h_k) under each projection sample: a torch `(S, N, K)` tensor.

    `features (N, p)` (bias column included), `projections (S, D, p)`, `text (K, D)` fixed or
    `(S, K, D)` one text embedding set per sample.
    """
    import torch

    dtype = torch.float64 if projections.dtype == np.float64 else torch.float32
    phi = torch.as_tensor(np.asarray(features), dtype=dtype)
    proj = torch.as_tensor(projections, dtype=dtype)
    txt = torch.as_tensor(np.asarray(text), dtype=dtype)
    g = torch.einsum("np,sdp->snd", phi, proj)  # (S, N, D)
    g = g / g.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    if txt.ndim == 2:
        cos = g @ txt.T  # (S, N, K)
    else:
        cos = g @ txt.transpose(1, 2)  # (S, N, D) @ (S, D, K) -> (S, N, K)
    return logit_scale * cos


def cosine_softmax_probs(
    features: np.ndarray, projections: np.ndarray, text: np.ndarray, logit_scale: float
) -> np.ndarray:
    """softmax_k(s cos(P_s phi, h_k)) under each projection sample: `(S, N, K)` (see `cosine_logits`)."""
    import torch

    return torch.softmax(cosine_logits(features, projections, text, logit_scale), dim=-1).numpy()
