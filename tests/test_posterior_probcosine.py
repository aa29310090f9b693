"""ProbCosine moments against Monte Carlo over projection weights."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from alkit.posterior.kronecker import eigendecompose
from alkit.posterior.probcosine import cosine_moments, embedding_moments, fixed_embeddings, probit_softmax
from alkit.posterior.sampling import sample_matrix_normal

NUM_SAMPLES = 100_000


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _side(rng, rows, d, D, rank_a=20, rank_b=40):
    proj = rng.normal(size=(D, d))
    feats = rng.normal(size=(rows, d))
    xa, xb = rng.normal(size=(rank_a, d)), rng.normal(size=(rank_b, D))
    return proj, feats, eigendecompose(xa.T @ xa, xb.T @ xb)


def _mc_cosines(proj, feats, eig, n, lam, seed, other):
    draws = sample_matrix_normal(proj, eig.inverse_sqrt_b(n, lam), eig.inverse_sqrt_a(n, lam), NUM_SAMPLES, seed, np.float64)
    emb = _unit(np.einsum("nd,sDd->snD", feats, draws))  # (S, rows, D)
    return emb if other is None else emb @ other.T


@pytest.mark.parametrize("n, lam", [(1.0, 1.0), (4.0, 0.1)])
def test_delta_moments_match_monte_carlo_with_fixed_text(n, lam):
    """Tolerances (science.md): mean within 1% of the mean |cos| scale, variance within 10%."""
    rng = np.random.default_rng(0)
    proj, phi, eig = _side(rng, 5, 4, 24)
    text = _unit(rng.normal(size=(4, 24)))
    image = embedding_moments(phi, proj, eig.inverse_sqrt_a(n, lam), eig.inverse_b(n, lam))
    mean, var = cosine_moments(image, fixed_embeddings(text), "delta")
    cos = _mc_cosines(proj, phi, eig, n, lam, 1, text)  # (S, N, K)
    scale = np.abs(cos.mean(0)).mean()
    assert np.abs(mean - cos.mean(0)).max() < 0.01 * scale
    np.testing.assert_allclose(var, cos.var(0), rtol=0.10)


def test_delta_moments_match_monte_carlo_with_random_text():
    rng = np.random.default_rng(1)
    n, lam = 2.0, 0.5
    proj, phi, eig = _side(rng, 4, 4, 24)
    q, psi, eig_t = _side(rng, 3, 5, 24)
    image = embedding_moments(phi, proj, eig.inverse_sqrt_a(n, lam), eig.inverse_b(n, lam))
    text = embedding_moments(psi, q, eig_t.inverse_sqrt_a(n, lam), eig_t.inverse_b(n, lam))
    mean, var = cosine_moments(image, text, "delta")
    g = _mc_cosines(proj, phi, eig, n, lam, 2, None)  # (S, N, D)
    h = _mc_cosines(q, psi, eig_t, n, lam, 3, None)  # (S, K, D)
    cos = np.einsum("snd,skd->snk", g, h)
    scale = np.abs(cos.mean(0)).mean()
    assert np.abs(mean - cos.mean(0)).max() < 0.01 * scale
    np.testing.assert_allclose(var, cos.var(0), rtol=0.10)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_full_and_diagonal_variants_agree_when_b_is_diagonal(seed):
    rng = np.random.default_rng(seed)
    D = 6
    proj, phi = rng.normal(size=(D, 3)), rng.normal(size=(4, 3))
    b_inv = np.diag(rng.uniform(0.1, 2.0, size=D))
    image = embedding_moments(phi, proj, np.eye(3) * 0.3, b_inv)
    text = embedding_moments(rng.normal(size=(5, 2)), rng.normal(size=(D, 2)), np.eye(2) * 0.2, np.diag(rng.uniform(0.1, 1, D)))
    m_full, v_full = cosine_moments(image, text, "full")
    m_diag, v_diag = cosine_moments(image, text, "diagonal")
    np.testing.assert_allclose(m_full, m_diag, rtol=1e-12)
    np.testing.assert_allclose(v_full, v_diag, rtol=1e-10)


def test_zero_variance_gives_the_map_cosine_and_probit_reduces_to_softmax():
    rng = np.random.default_rng(4)
    g, h = rng.normal(size=(3, 5)), rng.normal(size=(4, 5))
    mean, var = cosine_moments(fixed_embeddings(g), fixed_embeddings(h), "delta")
    np.testing.assert_allclose(mean, _unit(g) @ _unit(h).T, atol=1e-12)
    np.testing.assert_array_equal(var, 0.0)
    logits = 10 * mean
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(probit_softmax(logits, var), softmax, atol=1e-12)
    # more variance flattens the predictive towards uniform
    assert (probit_softmax(logits, var + 50.0).max(1) < softmax.max(1)).all()
