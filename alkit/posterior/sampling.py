"""Weight samples from a matrix-normal posterior, drawn ONCE and shared across all inputs.

vec(W) ~ N(vec(W_MAP), A'^-1 (x) B'^-1) with W `(q, p)` (column-major vec) is the matrix
normal MN(W_MAP, U = B'^-1 (rows), V = A'^-1 (columns)). With L_B L_B^T = B'^-1 and
L_A L_A^T = A'^-1 and Z `(q, p)` standard normal,

  W_s = W_MAP + L_B Z L_A^T,   since vec(L_B Z L_A^T) = (L_A (x) L_B) vec(Z)

has covariance (L_A (x) L_B)(L_A (x) L_B)^T = A'^-1 (x) B'^-1 (checked empirically in
tests/test_posterior_bayesvlm.py). Because the S draws are applied to every chunk of inputs,
probabilities from different calls are jointly distributed, which EPIG needs.
"""

from __future__ import annotations

import numpy as np


def sample_matrix_normal(
    mean: np.ndarray,
    inverse_sqrt_b: np.ndarray,
    inverse_sqrt_a: np.ndarray,
    num_samples: int,
    seed: int,
    dtype=np.float32,
) -> np.ndarray:
    """S draws `(S, q, p)` of W = mean + L_B Z L_A^T."""
    rng = np.random.default_rng(seed)
    q, p = mean.shape
    noise = rng.standard_normal((num_samples, q, p))  # Z, (S, q, p)
    # Two plain GEMMs over all S draws at once: `inverse_sqrt_b[None] @ noise` broadcast a
    # stride-0 operand, which numpy multiplies without BLAS (~50x slower for S = 64, D = 512).
    left = inverse_sqrt_b @ noise.transpose(1, 0, 2).reshape(q, num_samples * p)  # L_B Z, (q, S*p)
    left = left.reshape(q, num_samples, p).transpose(1, 0, 2).reshape(num_samples * q, p)
    draws = (left @ inverse_sqrt_a.T).reshape(num_samples, q, p)  # L_B Z L_A^T
    draws += mean[None]
    return draws.astype(dtype, copy=False)


def cosine_softmax_probs(
    features: np.ndarray, projections: np.ndarray, text: np.ndarray, logit_scale: float
) -> np.ndarray:
    """softmax_k(s cos(P_s phi, h_k)) under each projection sample: `(S, N, K)`.

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
    return torch.softmax(logit_scale * cos, dim=-1).numpy()
