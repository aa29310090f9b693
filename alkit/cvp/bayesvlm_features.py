"""BayesVLM's predictive when CVP makes its input phi uncertain too.

BayesVLM puts a Kronecker Laplace posterior on the projection P (D x p) and treats phi as
exact; with CVP over the last vision blocks, phi ~ N(phi_bar, diag v) (`alkit embed
--cvp-blocks` would store v as `phi_var`), independent of P. By the law of total covariance
  Cov(P phi) = E_phi[Cov_P(P phi | phi)] + P_bar diag(v) P_bar^T,
and for the damped Kronecker posterior Cov_P(P phi | phi) = U_B diag(c(phi)) U_B^T with
c_j(phi) = sum_i (a_i . phi)^2 / E_ij (a_i the input eigenvectors, E the damped precision
eigenvalues), whose expectation is exact: c_j(phi_bar) + sum_i (sum_k v_k a_ik^2) / E_ij.
Both terms are one `probcosine.GaussianEmbeddings` (the two bases side by side: ProbCosine's
delta variant only projects onto basis columns), so the cosine moments, centring and probit
are BayesVLM's own. (E[g] = P_bar phi_bar exactly.) `posterior` is an
`alkit.posterior.bayesvlm.BayesVLMPosterior`, not imported here: that module calls this one
when its inputs carry phi's variance (no import cycle).
"""

from __future__ import annotations

import numpy as np

from alkit.cvp.predictive import projected_embeddings
from alkit.posterior.kfac import with_bias_column
from alkit.posterior.probcosine import GaussianEmbeddings, cosine_moments, embedding_moments, fixed_embeddings


def image_embeddings(posterior, phi_mean, phi_var) -> GaussianEmbeddings:
    """Moments of g = P phi under the BayesVLM posterior of P and phi ~ N(phi_mean, diag phi_var) `(N, d)`."""
    bias = posterior.factors.bias
    phi = with_bias_column(phi_mean, bias)
    var = with_bias_column(np.clip(np.asarray(phi_var, dtype=np.float64), 0.0, None), False)
    if bias:
        var = np.concatenate([var, np.zeros((var.shape[0], 1))], axis=1)
    if phi.shape != var.shape or phi.shape[1] != posterior.projection.shape[1]:
        raise ValueError(f"phi {phi.shape} and phi_var {var.shape} do not fit the projection {posterior.projection.shape}")
    eigen = posterior.eigen
    weight_part = embedding_moments(phi, posterior.projection, eigen, posterior.pseudo_data,
                                    posterior.prior_precision, posterior.damping)
    inverse = 1.0 / eigen.precision_eigvals(posterior.pseudo_data, posterior.prior_precision, posterior.damping)  # (p, q)
    expected_coef = weight_part.coef + (var @ eigen.a_vecs**2) @ inverse  # (N, q)
    feature_part = projected_embeddings(phi, var, posterior.projection.T)
    return GaussianEmbeddings(
        weight_part.mean,
        np.concatenate([expected_coef, feature_part.coef], axis=1),
        np.concatenate([weight_part.basis, feature_part.basis], axis=1),
    )


def logit_moments(posterior, phi_mean, phi_var, centred: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Logit mean and variance `(N, K)` against the class prompts, as `BayesVLMPosterior.logit_moments`
    (centred by default: what the probit needs) with phi's variance included."""
    if posterior.text_side is None:
        text = fixed_embeddings(posterior.class_text)
    else:
        text = posterior.text_side.embeddings()
    mean_cos, var_cos = cosine_moments(image_embeddings(posterior, phi_mean, phi_var), text, "delta", centred)
    return posterior.logit_scale * mean_cos, posterior.logit_scale**2 * var_cos
