"""ProbCosine: analytic moments of the cosine similarity between two Gaussian embeddings.

Each side is a linear projection with a Kronecker posterior, so for an input with features
phi the embedding g = P phi is Gaussian with mean `mu_g = P_MAP phi` and covariance
`a * B'^-1`, where `a = phi^T A'^-1 phi` (one d x d quadratic form per input). The same holds
for the text side with its own factors (or zero variance when the class prompts are fixed).

With S_g = E|g|^2 = |mu_g|^2 + a tr(B'^-1) (and S_h likewise):
  E[cos]   ~= E[g.h] / sqrt(S_g S_h) = mu_g.mu_h / sqrt(S_g S_h)
  Var[cos] ~= Var[g.h] / (S_g S_h)
Three variants of Var[cos] (g, h independent):
  "diagonal" (science.md section 2 / the BayesVLM paper): Var[g.h] / (S_g S_h) with only the
      diagonal of B'^-1 kept: sum_d var_g var_h + mu_g^2 var_h + var_g mu_h^2 -- three
      (N x D)(D x K) matmuls.
  "full": Var[g.h] / (S_g S_h) with the exact bilinear-form variance
      a c tr(Bg'^-1 Bh'^-1) + c mu_g^T Bh'^-1 mu_g + a mu_h^T Bg'^-1 mu_h
      (c the text-side scale); per-class terms are precomputed once.
  "delta" (default): first-order delta method of cos itself. With u = mu_g/|mu_g|,
      w = mu_h/|mu_h|, r = u.w, the gradient w.r.t. g is (w - r u)/|mu_g|, so
        Var[cos] ~= a (w - r u)^T Bg'^-1 (w - r u) / |mu_g|^2 + (text term, roles swapped)
      = a/|mu_g|^2 (w^T Bg'^-1 w - 2 r u^T Bg'^-1 w + r^2 u^T Bg'^-1 u) + ...
      The two variants above ignore that moving g along itself does not change the cosine;
      measured against Monte Carlo over weights (tests/test_posterior_probcosine.py) they
      overstate Var[cos] by 30-150% at D = 24, while "delta" is within a few per cent. Cost:
      one (N x D)(D x D) and one (N x D)(D x K) matmul per side with uncertainty.
The mean uses the ratio E[g.h] / sqrt(S_g S_h) in all variants (it matches Monte Carlo to
~1e-4 absolute in the tests).

Logits: m = s E[cos], v = s^2 Var[cos]; probit predictive p = softmax(m / sqrt(1 + pi/8 v)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from alkit.errors import InputError

Covariance = Literal["delta", "full", "diagonal"]
COVARIANCES = ("delta", "full", "diagonal")


@dataclass(frozen=True)
class GaussianEmbeddings:
    """Embeddings `mean (M, D)` with covariance `scale[m] * row_covariance` each."""

    mean: np.ndarray  # (M, D)
    scale: np.ndarray  # (M,)
    row_covariance: np.ndarray | None  # (D, D) = B'^-1, None when the embeddings are fixed


def embedding_moments(
    features: np.ndarray, projection: np.ndarray, inverse_sqrt_a: np.ndarray, inverse_b: np.ndarray
) -> GaussianEmbeddings:
    """Moments of g = P phi under vec(P) ~ N(vec(P_MAP), A'^-1 (x) B'^-1).

    `features (N, p)` already carry the bias column when the layer has one;
    `inverse_sqrt_a (p, p)` is L_A with L_A L_A^T = A'^-1.
    """
    phi = np.asarray(features, dtype=np.float64)
    mean = phi @ np.asarray(projection, dtype=np.float64).T  # (N, p) @ (p, D) -> (N, D)
    root = phi @ inverse_sqrt_a  # (N, p)
    scale = np.einsum("np,np->n", root, root)  # phi^T A'^-1 phi
    return GaussianEmbeddings(mean, scale, inverse_b)


def fixed_embeddings(mean: np.ndarray) -> GaussianEmbeddings:
    """Point-mass embeddings (class prompts treated as fixed)."""
    mean = np.asarray(mean, dtype=np.float64)
    return GaussianEmbeddings(mean, np.zeros(mean.shape[0]), None)


def _trace(cov: np.ndarray | None) -> float:
    return 0.0 if cov is None else float(np.trace(cov))


def _diag(cov: np.ndarray | None, dim: int) -> np.ndarray:
    return np.zeros(dim) if cov is None else np.diag(cov).copy()


def _quad_rows(mean: np.ndarray, cov: np.ndarray | None) -> np.ndarray:
    """mu^T C mu per row `(M,)`; zero when C is None."""
    if cov is None:
        return np.zeros(mean.shape[0])
    return np.einsum("md,md->m", mean @ cov, mean)


def _delta_term(
    unit_own: np.ndarray, norm_own: np.ndarray, scale_own: np.ndarray, cov_own: np.ndarray | None,
    unit_other: np.ndarray, cosine: np.ndarray,
) -> np.ndarray:
    """a/|mu|^2 (w^T C w - 2 r u^T C w + r^2 u^T C u) for own side rows u, other side rows w.

    Returned with own rows first: `(rows_own, rows_other)`.
    """
    if cov_own is None:
        return np.zeros_like(cosine)
    uc = unit_own @ cov_own  # (M, D)
    u_c_u = np.einsum("md,md->m", uc, unit_own)  # (M,)
    w_c_w = np.einsum("kd,kd->k", unit_other @ cov_own, unit_other)  # (K,)
    u_c_w = uc @ unit_other.T  # (M, K)
    quad = w_c_w[None, :] - 2.0 * cosine * u_c_w + cosine**2 * u_c_u[:, None]
    return (scale_own / norm_own**2)[:, None] * np.clip(quad, 0.0, None)


def cosine_moments(
    image: GaussianEmbeddings, text: GaussianEmbeddings, covariance: Covariance = "delta"
) -> tuple[np.ndarray, np.ndarray]:
    """E[cos] and Var[cos] `(N, K)` for every image/text pair."""
    if covariance not in COVARIANCES:
        raise InputError(f"unknown covariance {covariance!r}; valid: {', '.join(COVARIANCES)}")
    mu_g, mu_h = image.mean, text.mean
    dim = mu_g.shape[1]
    s_g = np.einsum("nd,nd->n", mu_g, mu_g) + image.scale * _trace(image.row_covariance)  # (N,)
    s_h = np.einsum("kd,kd->k", mu_h, mu_h) + text.scale * _trace(text.row_covariance)  # (K,)
    norm = np.sqrt(np.outer(s_g, s_h))  # (N, K)
    mean_cos = (mu_g @ mu_h.T) / norm
    if covariance == "delta":
        norm_g, norm_h = np.linalg.norm(mu_g, axis=1), np.linalg.norm(mu_h, axis=1)
        unit_g, unit_h = mu_g / norm_g[:, None], mu_h / norm_h[:, None]
        cosine = unit_g @ unit_h.T  # (N, K)
        var = _delta_term(unit_g, norm_g, image.scale, image.row_covariance, unit_h, cosine)
        var += _delta_term(unit_h, norm_h, text.scale, text.row_covariance, unit_g, cosine.T).T
        return mean_cos, var
    if covariance == "diagonal":
        var_g = image.scale[:, None] * _diag(image.row_covariance, dim)  # (N, D)
        var_h = text.scale[:, None] * _diag(text.row_covariance, dim)  # (K, D)
        dot_var = var_g @ var_h.T + (mu_g**2) @ var_h.T + var_g @ (mu_h**2).T
    else:
        cross = 0.0
        if image.row_covariance is not None and text.row_covariance is not None:
            cross = float(np.sum(image.row_covariance * text.row_covariance))  # tr(Bg^-1 Bh^-1)
        dot_var = (
            np.outer(image.scale, text.scale) * cross
            + np.outer(_quad_rows(mu_g, text.row_covariance), text.scale)
            + np.outer(image.scale, _quad_rows(mu_h, image.row_covariance))
        )
    return mean_cos, dot_var / norm**2


def probit_softmax(logit_mean: np.ndarray, logit_var: np.ndarray) -> np.ndarray:
    """softmax(m / sqrt(1 + pi/8 v)) over the last axis `(N, K)`."""
    scaled = logit_mean / np.sqrt(1.0 + (np.pi / 8.0) * logit_var)
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    weights = np.exp(scaled)
    return weights / weights.sum(axis=-1, keepdims=True)
