"""Kronecker log-det identity and the evidence optimum against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from alkit.posterior.evidence import kron_logdet, log_evidence, optimise_prior_precision
from alkit.posterior.kronecker import eigendecompose


def _psd(rng, dim, rank):
    x = rng.normal(size=(rank, dim))
    return x.T @ x


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), p=st.integers(1, 4), q=st.integers(1, 4))
def test_kron_logdet_identity_matches_slogdet_of_the_kronecker_product(seed, p, q):
    rng = np.random.default_rng(seed)
    a = _psd(rng, p, p + 2) + 0.1 * np.eye(p)
    b = _psd(rng, q, q + 2) + 0.1 * np.eye(q)
    expected = np.linalg.slogdet(np.kron(a, b))[1]
    got = kron_logdet(np.linalg.slogdet(a)[1], np.linalg.slogdet(b)[1], p, q)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def _dense_log_evidence(lam, a, b, n, theta_sq, damping="eigen"):
    """The formula with an explicit dense damped precision."""
    p, q = a.shape[0], b.shape[0]
    if damping == "eigen":
        precision = n * np.kron(a, b) + lam * np.eye(p * q)
    else:
        precision = np.kron(np.sqrt(n) * a + np.sqrt(lam) * np.eye(p), np.sqrt(n) * b + np.sqrt(lam) * np.eye(q))
    return -0.5 * lam * theta_sq + 0.5 * p * q * np.log(lam) - 0.5 * np.linalg.slogdet(precision)[1]


@pytest.mark.parametrize("damping", ["eigen", "ritter"])
def test_eigen_evidence_equals_dense_formula(damping):
    rng = np.random.default_rng(0)
    a, b = _psd(rng, 3, 2), _psd(rng, 4, 6)  # a is rank-deficient: damping must handle it
    eig = eigendecompose(a, b)
    for lam in [1e-3, 0.7, 50.0]:
        np.testing.assert_allclose(
            log_evidence(lam, eig.a_vals, eig.b_vals, 4.0, 2.5, damping),
            _dense_log_evidence(lam, a, b, 4.0, 2.5, damping),
            rtol=1e-9,
        )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.sampled_from([1.0, 4.0, 10.0]))
def test_optimum_matches_brute_force_grid(seed, n):
    rng = np.random.default_rng(seed)
    a, b = _psd(rng, 3, 5), _psd(rng, 4, 7)
    theta_sq = float(rng.uniform(0.5, 20.0))
    eig = eigendecompose(a, b)
    lam = optimise_prior_precision(eig.a_vals, eig.b_vals, n, theta_sq)
    grid = np.exp(np.linspace(np.log(1e-6), np.log(1e8), 20001))
    values = np.array([_dense_log_evidence(x, a, b, n, theta_sq) for x in grid[::50]])  # eigen damping
    fine = grid[max(np.argmax(values) * 50 - 100, 0) : np.argmax(values) * 50 + 100]
    fine_values = np.array([_dense_log_evidence(x, a, b, n, theta_sq) for x in fine])
    best = fine[np.argmax(fine_values)]
    assert abs(np.log(lam / best)) < 2e-3
    assert log_evidence(lam, eig.a_vals, eig.b_vals, n, theta_sq) >= fine_values.max() - 1e-9
