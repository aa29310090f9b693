"""LaplaceHeadPosterior: exact logit moments, zero-label prior, evidence, shared samples."""

from __future__ import annotations

import numpy as np
import pytest

from alkit.errors import StateError
from alkit.posterior.base import Posterior
from alkit.posterior.evidence import optimise_prior_precision
from alkit.posterior.laplace_head import LaplaceHeadSettings, augment, fit_laplace_head


def _data(seed=0, N=120, D=6, K=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, D))
    labels = rng.integers(0, K, size=N)
    x = centres[labels] + 0.8 * rng.normal(size=(N, D))
    return x, labels, centres


def test_logit_moments_match_dense_kronecker_covariance():
    x, labels, centres = _data()
    post = fit_laplace_head(x, labels, 3, class_text=centres, logit_scale=5.0)
    assert isinstance(post, Posterior)
    lam = post.prior_precision
    a_damped = post.factors.A + np.sqrt(lam) * np.eye(7)
    b_damped = post.factors.B + np.sqrt(lam) * np.eye(3)
    cov = np.kron(np.linalg.inv(a_damped), np.linalg.inv(b_damped))  # vec(W), column-major
    xa = augment(x[:10])
    mean, var = post.logit_moments(x[:10])
    for i in range(10):
        jac = np.kron(xa[i][None, :], np.eye(3))  # f = (x^T (x) I_K) vec(W)
        np.testing.assert_allclose(var[i], np.diag(jac @ cov @ jac.T), rtol=2e-4)
        np.testing.assert_allclose(mean[i], post.weights @ xa[i], rtol=1e-4, atol=1e-4)


def test_zero_labels_give_the_prompt_prior_predictive():
    _, _, centres = _data()
    settings = LaplaceHeadSettings(initial_prior_precision=2.0)
    post = fit_laplace_head(np.zeros((0, 6)), np.zeros(0, dtype=int), 3, class_text=centres, logit_scale=5.0, settings=settings)
    x, _, _ = _data(seed=1, N=20)
    mean, var = post.logit_moments(x)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(mean, 5.0 * unit @ (centres / np.linalg.norm(centres, axis=1, keepdims=True)).T, atol=1e-5)
    np.testing.assert_allclose(var, (1.0 + 1.0) / 2.0, rtol=1e-5)  # |[x; 1]|^2 / lam
    with pytest.raises(StateError, match="no labels and no class prompts"):
        fit_laplace_head(np.zeros((0, 6)), np.zeros(0, dtype=int), 3)


def test_fitted_prior_precision_maximises_the_evidence_at_the_map():
    x, labels, _ = _data(seed=2)
    post = fit_laplace_head(x, labels, 3)
    theta_sq = float(np.sum((post.weights - post.prior_weights) ** 2))
    again = optimise_prior_precision(post.eigen.a_vals, post.eigen.b_vals, 1.0, theta_sq, (1e-4, 1e6))
    assert abs(np.log(again / post.prior_precision)) < 0.1  # MacKay alternation converged


def test_shared_sample_mean_agrees_with_probit_and_samples_are_shared():
    """Tolerance mean TV <= 0.01: MC noise of S = 20,000 (< 0.004 per probability) plus the
    probit approximation (logit variance ~0.1 here, where its error is a few 1e-3); the
    probit must also be closer to the MC mean than the MAP is (the variance is informative).
    """
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(3, 6))
    labels = rng.integers(0, 3, size=60)
    x = centres[labels] + 3.0 * rng.normal(size=(60, 6))
    post = fit_laplace_head(x[:12], labels[:12], 3, class_text=centres, logit_scale=5.0)
    weights = post.sample_weights(20_000, seed=1)
    probs = post.sample_probs(weights, x)
    assert probs.shape == (20_000, 60, 3)
    np.testing.assert_allclose(post.sample_probs(weights, x[:7]), probs[:, :7], rtol=1e-4, atol=1e-6)
    mc = probs.mean(0)
    tv = 0.5 * np.abs(mc - post.predict(x)).sum(1).mean()
    map_tv = 0.5 * np.abs(mc - post.map_predict(x)).sum(1).mean()
    assert tv <= 0.01
    assert tv < map_tv
    np.testing.assert_allclose(mc.sum(1), 1.0, rtol=1e-5)
