"""Closed-form generalised Gauss-Newton (GGN) of contrastive likelihoods w.r.t. an embedding.

For an input with unnormalised embedding g (D,) scored against unit-norm candidates
V = [v_1..v_C] (C, D) with logits z = s V u, u = g/|g|, the GGN w.r.t. g is
`G = (dz/dg)^T H_z (dz/dg)`, with `dz/dg = s V J`, `J = (I - u u^T)/|g|` and H_z the Hessian
of the loss w.r.t. the logits (label-free for both likelihoods):

  InfoNCE  H_z = diag(p) - p p^T,        p = softmax(z)
  SigLIP   H_z = diag(sig (1 - sig)),     sig = sigmoid(z + bias)

No autograd is needed: features are cached and the formula is exact. `per_input_ggn` builds
the (N, D, D) stack (tests, small N); `summed_ggn` returns sum_i G_i without forming any
(D, D) per input, using

  sum_i J_i M_i J_i,  M_i = V^T diag(w_i) V,
  (I - uu^T) M (I - uu^T) = M - u r^T - r u^T + (u^T r) u u^T,  r = M u,

so the cost is O(N C D + N D^2) instead of O(N C D^2).

Candidate batches: contrastive training scores each input against the texts of ONE batch,
so the curvature depends on the batch size (the reference used 32,768). Candidates are split
into consecutive batches of `candidate_batch_size`; each input's GGN is the MEAN over batches
of the per-batch GGN (softmax over that batch only). The batch size is recorded with the
factors (see `kfac.KroneckerFactors`).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from alkit.errors import InputError

Likelihood = Literal["infonce", "siglip"]
LIKELIHOODS = ("infonce", "siglip")
# Elements of the (n, C) logit block per chunk of inputs: 4M float64 = 32 MB.
CHUNK_ELEMENTS = 1 << 22


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    weights = np.exp(shifted)
    return weights / weights.sum(axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _check(likelihood: str) -> None:
    if likelihood not in LIKELIHOODS:
        raise InputError(f"unknown likelihood {likelihood!r}; valid: {', '.join(LIKELIHOODS)}")


def _logit_curvature(
    unit: np.ndarray, candidates: np.ndarray, logit_scale: float, likelihood: str, logit_bias: float
) -> tuple[np.ndarray, bool]:
    """Diagonal weights of H_z `(n, C)` and whether H_z has the InfoNCE `- p p^T` term."""
    logits = logit_scale * unit @ candidates.T  # (n, D) @ (D, C) -> (n, C)
    if likelihood == "infonce":
        return _softmax(logits), True
    sig = _sigmoid(logits + logit_bias)
    return sig * (1.0 - sig), False


def per_input_ggn(
    embeddings: np.ndarray,
    candidates: np.ndarray,
    logit_scale: float,
    likelihood: Likelihood = "infonce",
    logit_bias: float = 0.0,
) -> np.ndarray:
    """GGN of each input w.r.t. its unnormalised embedding g: `(N, D, D)`, one candidate batch.

    Direct O(N C D^2) formula `s^2 J V^T H_z V J`; meant for tests and small N.
    """
    _check(likelihood)
    g = np.asarray(embeddings, dtype=np.float64)
    v = np.asarray(candidates, dtype=np.float64)
    norms = np.linalg.norm(g, axis=1)  # (N,)
    unit = g / norms[:, None]
    weights, has_outer = _logit_curvature(unit, v, logit_scale, likelihood, logit_bias)
    eye = np.eye(g.shape[1])
    jac = (eye[None] - unit[:, :, None] * unit[:, None, :]) / norms[:, None, None]  # (N, D, D)
    vj = np.einsum("cd,nde->nce", v, jac)  # (N, C, D): rows are dz_c/dg / s
    hess = np.einsum("nc,ncd,nce->nde", weights, vj, vj)
    if has_outer:
        pv = np.einsum("nc,ncd->nd", weights, vj)
        hess -= pv[:, :, None] * pv[:, None, :]
    return logit_scale**2 * hess


def _summed_ggn_one_batch(
    g: np.ndarray, v: np.ndarray, logit_scale: float, likelihood: str, logit_bias: float
) -> np.ndarray:
    """sum_i G_i `(D, D)` for inputs g `(n, D)` against one candidate batch v `(C, D)`."""
    norms_sq = np.einsum("nd,nd->n", g, g)
    unit = g / np.sqrt(norms_sq)[:, None]
    weights, has_outer = _logit_curvature(unit, v, logit_scale, likelihood, logit_bias)
    scaled = weights / norms_sq[:, None]  # (n, C): w_i / |g_i|^2
    total = (v.T * scaled.sum(axis=0)) @ v  # sum_i V^T diag(w_i) V / |g_i|^2
    r = (scaled * (unit @ v.T)) @ v  # (n, D): M_i u_i / |g_i|^2
    ur = np.einsum("nd,nd->n", unit, r)  # (n,)
    total -= unit.T @ r + r.T @ unit
    total += (unit * ur[:, None]).T @ unit
    if has_outer:
        w = weights @ v  # (n, D): V^T p_i
        jw = (w - unit * np.einsum("nd,nd->n", unit, w)[:, None]) / np.sqrt(norms_sq)[:, None]
        total -= jw.T @ jw
    return logit_scale**2 * total


def summed_ggn(
    embeddings: np.ndarray,
    candidates: np.ndarray,
    logit_scale: float,
    likelihood: Likelihood = "infonce",
    candidate_batch_size: int | None = None,
    logit_bias: float = 0.0,
) -> np.ndarray:
    """sum_i G_i `(D, D)` in float64, symmetrised; G_i averaged over candidate batches.

    `candidate_batch_size=None` puts all C candidates in one batch.
    """
    _check(likelihood)
    g = np.asarray(embeddings, dtype=np.float64)
    v = np.asarray(candidates, dtype=np.float64)
    num_candidates = v.shape[0]
    batch = num_candidates if candidate_batch_size is None else int(candidate_batch_size)
    if batch < 1:
        raise InputError(f"candidate_batch_size must be >= 1, got {batch}; pass a positive size")
    starts = range(0, num_candidates, batch)
    chunk = max(1, CHUNK_ELEMENTS // max(batch, g.shape[1]))
    total = np.zeros((g.shape[1], g.shape[1]))
    for start in starts:
        batch_v = v[start : start + batch]
        for lo in range(0, g.shape[0], chunk):
            total += _summed_ggn_one_batch(g[lo : lo + chunk], batch_v, logit_scale, likelihood, logit_bias)
    total /= len(starts)
    return 0.5 * (total + total.T)
