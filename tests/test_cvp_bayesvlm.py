"""BayesVLM logits with CVP's feature variance, against Monte Carlo over P and phi together."""

from __future__ import annotations

import numpy as np
import pytest

from alkit.cvp.bayesvlm_features import logit_moments
from alkit.posterior.bayesvlm import BayesVLMPosterior


def _case(pseudo_data: float, feature_var: float, bias: bool, samples: int = 40_000):
    rng = np.random.default_rng(0)
    n, d, dim, k = 40, 5, 8, 4
    projection = rng.normal(size=(dim, d + int(bias)))
    phi = rng.normal(size=(n, d)) + 1.0
    text = rng.normal(size=(k, dim))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    posterior = BayesVLMPosterior.from_pool_curvature(phi, projection, text, 5.0, pseudo_data=pseudo_data, bias=bias)
    phi_var = feature_var * rng.random(size=(n, d))
    draws = posterior.sample_weights(samples, seed=1).projections.astype(np.float64)  # (S, D, p)
    x = phi[None] + np.sqrt(phi_var)[None] * rng.standard_normal((samples, n, d))
    if bias:
        x = np.concatenate([x, np.ones((samples, n, 1))], axis=2)
    g = np.einsum("snp,sdp->snd", x, draws)
    cos = (g / np.linalg.norm(g, axis=2, keepdims=True)) @ text.T  # (S, N, K)
    mc_mean = posterior.logit_scale * cos.mean(0)
    mc_var = (posterior.logit_scale * (cos - cos.mean(axis=2, keepdims=True))).var(0)  # centred, as the probit uses
    return posterior, phi, phi_var, mc_mean, mc_var


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("bias", [False, True])
def test_feature_variance_alone_matches_monte_carlo(bias):
    """P pinned (pseudo-data 1e6): only phi varies; MC variance error ~0.7% (S = 40,000)."""
    posterior, phi, phi_var, mc_mean, mc_var = _case(1e6, 0.005, bias)
    mean, var = logit_moments(posterior, phi, phi_var)
    assert _rel(mean, mc_mean) < 0.01
    assert _rel(var, mc_var) < 0.03
    _, exact_phi = posterior.logit_moments(phi)
    assert _rel(exact_phi, mc_var) > 0.9  # BayesVLM alone sees (almost) none of it


def test_feature_and_projection_variances_add_like_monte_carlo():
    """A wide projection posterior (pseudo-data 20) and phi noise together. The mean's error is
    ProbCosine's E[cos] ratio at this width (3.1% with phi exact as well), not the feature part."""
    posterior, phi, phi_var, mc_mean, mc_var = _case(20.0, 0.05, False)
    mean, var = logit_moments(posterior, phi, phi_var)
    _, exact_phi = posterior.logit_moments(phi)
    error, error_without = _rel(var, mc_var), _rel(exact_phi, mc_var)
    print(f"centred logit variance error {error:.4f} with phi's variance, {error_without:.4f} without")
    assert _rel(mean, mc_mean) < 0.05
    assert error < 0.2
    assert error_without > 2 * error
    _, zero = logit_moments(posterior, phi, np.zeros_like(phi_var))
    np.testing.assert_allclose(zero, exact_phi, rtol=1e-9, atol=1e-12)  # v = 0 is BayesVLM's own
