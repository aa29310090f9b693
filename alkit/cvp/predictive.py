"""From CVP moments to class logits and the probit predictive, as BayesVLM does.

CVP gives the pooled feature phi (the input of `visual.proj`) a diagonal Gaussian; the
embedding g = phi @ proj then has the FULL covariance proj^T diag(v) proj = sum_j v_j b_j b_j^T
(b_j the rows of proj). That is `probcosine.GaussianEmbeddings` with the unit rows b_j/|b_j|
as basis and v_j |b_j|^2 as coefficients: ProbCosine's delta variant only projects onto the
basis (it needs unit columns for the trace, not orthogonality), so BayesVLM's own cosine
moments, centring and probit are used (`alkit.posterior.probcosine`), not a copy. Keeping only
the diagonal of g's covariance was measured 14-16% off Monte Carlo in the logit variance on the
tiny CLIP even with Monte Carlo's own embedding moments. The class prompts are fixed.
"""

from __future__ import annotations

import numpy as np

from alkit.arrays import l2_normalise
from alkit.posterior.probcosine import GaussianEmbeddings, cosine_moments, fixed_embeddings, probit_softmax


def projected_embeddings(phi_mean, phi_var, projection) -> GaussianEmbeddings:
    """g = phi @ projection for phi ~ N(phi_mean, diag phi_var) `(N, d)`, projection `(d, D)`
    (open_clip's `visual.proj`; None: phi is the embedding, diagonal covariance)."""
    phi_mean = np.asarray(_numpy(phi_mean), dtype=np.float64)
    phi_var = np.clip(np.asarray(_numpy(phi_var), dtype=np.float64), 0.0, None)
    if projection is None:
        return GaussianEmbeddings(phi_mean, phi_var, np.eye(phi_mean.shape[1]))
    proj = np.asarray(_numpy(projection), dtype=np.float64)
    norms = np.linalg.norm(proj, axis=1)  # (d,)
    safe = np.where(norms > 0, norms, 1.0)
    return GaussianEmbeddings(phi_mean @ proj, phi_var * norms**2, (proj / safe[:, None]).T)


def logit_moments(phi_mean, phi_var, projection, class_text, logit_scale: float, centred: bool = True,
                  output_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Logit mean s E[cos] and variance output_scale s^2 Var[cos] `(N, K)` (delta method;
    `centred` as in BayesVLM's `logit_moments`: what the probit predictive needs)."""
    text = fixed_embeddings(_numpy(class_text))
    image = projected_embeddings(phi_mean, phi_var, projection)
    mean_cos, var_cos = cosine_moments(image, text, "delta", centred)
    return logit_scale * mean_cos, output_scale * logit_scale**2 * var_cos


def probit_predictive(phi_mean, phi_var, projection, class_text, logit_scale: float,
                      output_scale: float = 1.0) -> np.ndarray:
    """Class probabilities softmax(m / sqrt(1 + pi/8 v)) `(N, K)` from phi's moments."""
    return probit_softmax(*logit_moments(phi_mean, phi_var, projection, class_text, logit_scale, True, output_scale))


def _numpy(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().double().numpy()
    return np.asarray(value)


def unit_embedding_moments(phi_mean, phi_var, projection) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm embedding u = g / |g| (what `alkit embed` stores) and the diagonal of its
    covariance by the delta method `(N, D)` each: with J = (I - u u^T) / sqrt(S_g),
    Cov u ~ J C J^T for C = sum_j v_j b_j b_j^T, so Var u_a = sum_j v_j (J b_j)_a^2.
    S_g = |mu_g|^2 + tr C (the random norm, as ProbCosine normalises). Chunked over images."""
    image = projected_embeddings(phi_mean, phi_var, projection)
    mean = image.mean
    unit = l2_normalise(mean)
    second = np.einsum("nd,nd->n", mean, mean) + image.trace  # S_g
    basis = image.basis  # (D, q) unit columns; coef (N, q)
    variances = np.empty_like(mean)
    for n in range(mean.shape[0]):
        along = unit[n] @ basis  # (q,)
        moved = basis - np.outer(unit[n], along)  # (D, q): (I - u u^T) b_j
        variances[n] = (moved**2) @ image.coef[n] / second[n]
    return unit, variances
