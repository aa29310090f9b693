"""From CVP embedding moments to class logits and the probit predictive, as BayesVLM does.

The embedding g (unnormalised, phi @ visual.proj) is Gaussian with a DIAGONAL covariance
diag(var): `probcosine.GaussianEmbeddings` with the identity as basis and `var` as the
coefficients, so the analytic cosine moments, the centring and the probit are BayesVLM's own
(`alkit.posterior.probcosine`), not a copy. The class prompts are fixed (unit-norm h_k).
"""

from __future__ import annotations

import numpy as np

from alkit.posterior.probcosine import GaussianEmbeddings, cosine_moments, fixed_embeddings, probit_softmax


def diagonal_embeddings(mean, var) -> GaussianEmbeddings:
    """`mean (N, D)`, `var (N, D)` (numpy or torch) -> Gaussian embeddings with diagonal covariance."""
    mean = np.asarray(_numpy(mean), dtype=np.float64)
    var = np.clip(np.asarray(_numpy(var), dtype=np.float64), 0.0, None)
    return GaussianEmbeddings(mean, var, np.eye(mean.shape[1]))


def logit_moments(mean, var, class_text, logit_scale: float, centred: bool = True,
                  output_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Logit mean s E[cos] and variance output_scale s^2 Var[cos] `(N, K)` (delta method;
    `centred` as in BayesVLM's `logit_moments`: what the probit predictive needs)."""
    text = fixed_embeddings(_numpy(class_text))
    mean_cos, var_cos = cosine_moments(diagonal_embeddings(mean, var), text, "delta", centred)
    return logit_scale * mean_cos, output_scale * logit_scale**2 * var_cos


def probit_predictive(mean, var, class_text, logit_scale: float, output_scale: float = 1.0) -> np.ndarray:
    """Class probabilities softmax(m / sqrt(1 + pi/8 v)) from the embedding moments `(N, K)`."""
    return probit_softmax(*logit_moments(mean, var, class_text, logit_scale, True, output_scale))


def _numpy(value):
    if hasattr(value, "detach"):
        return value.detach().cpu().double().numpy()
    return np.asarray(value)
