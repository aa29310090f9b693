"""ProbCosine: analytic moments of the cosine similarity between two Gaussian embeddings.

Each side is a linear projection with a Kronecker-factored Laplace posterior, so for an input
with features phi the embedding g = P phi is Gaussian with mean `mu_g = P_MAP phi` and
covariance `V diag(c) V^T`: V = U_B (the output-factor eigenvectors) and c `(D,)` per input
from the damped spectrum (`kronecker.EigenFactors.output_coefficients`; for the Ritter form
c = (phi^T A'^-1 phi) / b'_j). The text side is the same with its own factors, or fixed.

With S_g = E|g|^2 = |mu_g|^2 + sum_j c_j (and S_h likewise):
  E[cos]   ~= mu_g.mu_h / sqrt(S_g S_h)
Three variants of Var[cos] (g, h independent):
  "diagonal" (science.md section 2 / the BayesVLM paper): Var[g.h] / (S_g S_h) with only the
      diagonal of each covariance kept: sum_d var_g var_h + mu_g^2 var_h + var_g mu_h^2.
  "full": Var[g.h] / (S_g S_h) with the exact bilinear-form variance
      tr(C_g C_h) + mu_g^T C_h mu_g + mu_h^T C_g mu_h.
  "delta" (default): first-order delta method of cos itself. With u = mu_g/|mu_g|,
      w = mu_h/|mu_h|, r = u.w, the gradient w.r.t. g is (w - r u)/|mu_g|, and
        Var[cos] ~= (w - r u)^T C_g (w - r u) / S_g + (text term, roles swapped)
      The two variants above ignore that moving g along itself does not change the cosine
      (they overstate Var[cos] by 30-150% at D = 24). The normaliser is S_g, not |mu_g|^2:
      the random norm |g| is ~sqrt(S_g), and dividing by |mu_g|^2 was measured 5% off Monte
      Carlo at the median on the demo posterior, 75% at lam/100 and 835% at lam/1e4
      (science.md section 2). Cost: one (N x D)(D x D) and two (N x D)(D x K) matmuls per side.
The mean uses the ratio E[g.h] / sqrt(S_g S_h) in all variants.

Logits: m = s E[cos], v = s^2 Var[cos]; probit predictive p = softmax(m / sqrt(1 + pi/8 v)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from alkit.arrays import l2_normalise
from alkit.errors import InputError

Covariance = Literal["delta", "full", "diagonal"]
COVARIANCES = ("delta", "full", "diagonal")


@dataclass(frozen=True)
class GaussianEmbeddings:
    """Embeddings `mean (M, D)` with covariance `basis diag(coef[m]) basis^T` each."""

    mean: np.ndarray  # (M, D)
    coef: np.ndarray  # (M, q) variances along the basis directions; zeros when fixed
    basis: np.ndarray | None  # (D, q) orthonormal columns, None when the embeddings are fixed

    @property
    def trace(self) -> np.ndarray:
        """tr Cov per row `(M,)`."""
        return self.coef.sum(axis=1)


def embedding_moments(features: np.ndarray, projection: np.ndarray, eigen, pseudo_data: float,
                      prior_precision: float, damping: str = "eigen") -> GaussianEmbeddings:
    """Moments of g = P phi under the damped Kronecker posterior of P `(D, p)` (`eigen` holds
    the factors' eigendecompositions; `features (N, p)` already carry a bias column if any)."""
    phi = np.asarray(features, dtype=np.float64)
    mean = phi @ np.asarray(projection, dtype=np.float64).T  # (N, p) @ (p, D) -> (N, D)
    coef = eigen.output_coefficients(phi, pseudo_data, prior_precision, damping)  # (N, D)
    return GaussianEmbeddings(mean, coef, eigen.b_vecs)


def fixed_embeddings(mean: np.ndarray) -> GaussianEmbeddings:
    """Point-mass embeddings (class prompts treated as fixed)."""
    mean = np.asarray(mean, dtype=np.float64)
    return GaussianEmbeddings(mean, np.zeros((mean.shape[0], 1)), None)


def _diagonal(side: GaussianEmbeddings) -> np.ndarray:
    """Per-dimension variances `(M, D)`."""
    if side.basis is None:
        return np.zeros_like(side.mean)
    return side.coef @ (side.basis**2).T


def _quadratic(rows: np.ndarray, side: GaussianEmbeddings) -> np.ndarray:
    """rows_n^T C_m rows_n for every (row n, embedding m) pair: `(N, M)`."""
    if side.basis is None:
        return np.zeros((rows.shape[0], side.mean.shape[0]))
    return ((rows @ side.basis) ** 2) @ side.coef.T


def _delta_term(own: GaussianEmbeddings, unit_own: np.ndarray, unit_other: np.ndarray, cosine: np.ndarray,
                second_moment: np.ndarray) -> np.ndarray:
    """(w - r u)^T C (w - r u) / S for own rows u, other rows w: `(rows_own, rows_other)`."""
    if own.basis is None:
        return np.zeros_like(cosine)
    t_other = unit_other @ own.basis  # (K, q)
    t_own = unit_own @ own.basis  # (M, q)
    weighted = own.coef * t_own  # (M, q)
    quad = (
        own.coef @ (t_other**2).T  # w^T C w
        - 2.0 * cosine * (weighted @ t_other.T)  # r u^T C w
        + cosine**2 * (weighted * t_own).sum(axis=1)[:, None]  # r^2 u^T C u
    )
    return np.clip(quad, 0.0, None) / second_moment[:, None]


def cosine_moments(
    image: GaussianEmbeddings, text: GaussianEmbeddings, covariance: Covariance = "delta", centred: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """E[cos] and Var[cos] `(N, K)` for every image/text pair.

    `centred` (delta only): the image-side variance is that of cos_k - mean_l cos_l, whose
    softmax is the same. All K cosines move together with g, and a probit predictive fed the
    marginal variances flattens that shared motion it should ignore: on a toy posterior the
    probit was 0.12 (TV) from Monte Carlo with marginal variances and ~0.02 centred."""
    if covariance not in COVARIANCES:
        raise InputError(f"unknown covariance {covariance!r}; valid: {', '.join(COVARIANCES)}")
    mu_g, mu_h = image.mean, text.mean
    s_g = np.einsum("nd,nd->n", mu_g, mu_g) + image.trace  # (N,)
    s_h = np.einsum("kd,kd->k", mu_h, mu_h) + text.trace  # (K,)
    norm = np.sqrt(np.outer(s_g, s_h))  # (N, K)
    mean_cos = (mu_g @ mu_h.T) / norm
    if covariance == "delta":
        unit_g, unit_h = l2_normalise(mu_g), l2_normalise(mu_h)
        cosine = unit_g @ unit_h.T  # (N, K)
        if centred:  # w_k -> w_k - mean w, r_k -> r_k - mean r (u . (w_k - mean w) = r_k - mean r)
            var = _delta_term(image, unit_g, unit_h - unit_h.mean(0), cosine - cosine.mean(1, keepdims=True), s_g)
        else:
            var = _delta_term(image, unit_g, unit_h, cosine, s_g)
        var += _delta_term(text, unit_h, unit_g, cosine.T, s_h).T
        return mean_cos, var
    if covariance == "diagonal":
        var_g, var_h = _diagonal(image), _diagonal(text)  # (N, D), (K, D)
        dot_var = var_g @ var_h.T + (mu_g**2) @ var_h.T + var_g @ (mu_h**2).T
    else:
        cross = 0.0
        if image.basis is not None and text.basis is not None:
            overlap = (image.basis.T @ text.basis) ** 2  # (q_g, q_h)
            cross = image.coef @ overlap @ text.coef.T  # tr(C_g C_h), (N, K)
        dot_var = cross + _quadratic(mu_g, text) + _quadratic(mu_h, image).T
    return mean_cos, dot_var / norm**2


def probit_softmax(logit_mean: np.ndarray, logit_var: np.ndarray) -> np.ndarray:
    """softmax(m / sqrt(1 + pi/8 v)) over the last axis `(N, K)`."""
    scaled = logit_mean / np.sqrt(1.0 + (np.pi / 8.0) * logit_var)
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    weights = np.exp(scaled)
    return weights / weights.sum(axis=-1, keepdims=True)
