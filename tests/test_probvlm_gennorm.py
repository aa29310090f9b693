"""Generalised-Gaussian maths of ProbVLM against scipy.stats.gennorm."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from alkit.posterior.gennorm import BetaGrid, gennorm_nll, gennorm_variance, quantile_table, sample_gennorm


def test_nll_matches_scipy_logpdf():
    rng = np.random.default_rng(0)
    shape = (50, 7)
    target, mu = rng.normal(size=shape), rng.normal(size=shape)
    alpha, beta = rng.uniform(0.05, 2.0, size=shape), rng.uniform(0.3, 8.0, size=shape)
    ours = gennorm_nll(*(torch.from_numpy(a) for a in (target, mu, alpha, beta))).numpy()
    reference = -stats.gennorm.logpdf(target, beta, loc=mu, scale=alpha)
    np.testing.assert_allclose(ours, reference, rtol=1e-10, atol=1e-10)


def test_nll_gradient_is_finite_at_the_mode_for_peaked_shapes():
    mu = torch.zeros(3, requires_grad=True)
    nll = gennorm_nll(torch.zeros(3), mu, torch.ones(3), torch.full((3,), 0.5)).sum()
    nll.backward()
    assert torch.isfinite(mu.grad).all()


def test_variance_formula_matches_scipy_and_samples():
    alpha = np.array([0.3, 1.0, 2.0, 0.7])
    beta = np.array([0.6, 1.0, 2.0, 6.0])
    ours = gennorm_variance(torch.from_numpy(alpha), torch.from_numpy(beta)).numpy()
    np.testing.assert_allclose(ours, stats.gennorm.var(beta, scale=alpha), rtol=1e-12)
    draws = stats.gennorm.rvs(beta, scale=alpha, size=(200_000, 4), random_state=np.random.default_rng(1))
    np.testing.assert_allclose(draws.var(axis=0), ours, rtol=0.05)  # beta = 0.6 is heavy-tailed


def test_shared_sampler_marginals_match_scipy():
    """Interpolated quantile table: each input's draws follow its own gennorm (KS test, variance)."""
    grid = BetaGrid(0.5, 8.0, 33)
    uniforms = np.random.default_rng(2).random((20_000, 3))  # S = 20000 shared draws, D = 3
    table = quantile_table(uniforms, grid)
    mu = torch.tensor([[0.5, -1.0, 0.0], [2.0, 0.0, 1.0]])  # (n = 2, D)
    alpha = torch.tensor([[0.2, 1.0, 0.5], [1.5, 0.1, 0.3]])
    beta = torch.tensor([[0.7, 1.3, 2.0], [3.1, 5.5, 0.9]])  # off-grid shapes
    draws = sample_gennorm(mu, alpha, beta, table).numpy()  # (S, n, D)
    assert draws.shape == (20_000, 2, 3)
    for i in range(2):
        for d in range(3):
            args = (float(beta[i, d]),)
            kw = {"loc": float(mu[i, d]), "scale": float(alpha[i, d])}
            assert stats.kstest(draws[:, i, d], "gennorm", args=(*args, kw["loc"], kw["scale"])).pvalue > 1e-3
            np.testing.assert_allclose(draws[:, i, d].var(), stats.gennorm.var(*args, **kw), rtol=0.1)
    exact = stats.gennorm.ppf(uniforms[:, 1], 1.3, loc=-1.0, scale=1.0)
    np.testing.assert_allclose(draws[:, 0, 1], exact, rtol=2e-3, atol=2e-3)


def test_draws_are_shared_across_calls_and_inputs():
    """Same uniforms for every input: identical (mu, alpha, beta) rows give identical draws."""
    table = quantile_table(np.random.default_rng(3).random((16, 4)), BetaGrid(0.5, 8.0, 17))
    mu, alpha, beta = torch.zeros(1, 4), torch.ones(1, 4), torch.full((1, 4), 2.0)
    together = sample_gennorm(mu.repeat(3, 1), alpha.repeat(3, 1), beta.repeat(3, 1), table)
    alone = sample_gennorm(mu, alpha, beta, table)
    assert torch.equal(together[:, 0], alone[:, 0]) and torch.equal(together[:, 2], alone[:, 0])


@pytest.mark.parametrize("beta", [0.5, 8.0, 20.0])
def test_shapes_at_or_beyond_the_grid_ends_stay_finite(beta):
    table = quantile_table(np.random.default_rng(4).random((8, 2)), BetaGrid(0.5, 8.0, 9))
    draws = sample_gennorm(torch.zeros(1, 2), torch.ones(1, 2), torch.full((1, 2), beta), table)
    assert torch.isfinite(draws).all()
