"""BayesVLMPosterior with `phi_variance` (a CVP spec's [phi, phi_var] inputs): its shared draws
against an independent sampler, its moments against `alkit.cvp.bayesvlm_features`, its state."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from alkit.cvp.bayesvlm_features import logit_moments
from alkit.errors import InputError
from alkit.posterior.bayesvlm import BayesVLMPosterior


def _posterior(bias: bool):
    rng = np.random.default_rng(0)
    n, d, dim, k = 6, 5, 8, 4
    projection = rng.normal(size=(dim, d + int(bias)))
    phi = rng.normal(size=(n, d)) + 1.0
    text = rng.normal(size=(k, dim))
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    plain = BayesVLMPosterior.from_pool_curvature(phi, projection, text, 5.0, pseudo_data=30.0, bias=bias)
    phi_var = 0.3 * rng.random(size=(n, d))
    return plain, replace(plain, phi_variance_scale=1.0), phi, phi_var


@pytest.mark.parametrize("bias", [False, True])
def test_shared_draws_have_the_distribution_of_independent_projection_and_phi_draws(bias):
    """The sampler's P_s (phi + sqrt(v) eps_s) (one eps_s per shared draw) against a loop that draws
    P and phi independently per input: logit mean and variance agree within Monte Carlo error."""
    plain, cvp, phi, phi_var = _posterior(bias)
    samples = 20_000
    x = np.concatenate([phi, phi_var], axis=1)
    shared = cvp.sample_logits(cvp.sample_weights(samples, seed=3), x).astype(np.float64)  # (S, N, K)
    rng = np.random.default_rng(11)
    draws = plain.sample_weights(samples, seed=5).projections.astype(np.float64)
    noisy = phi[None] + np.sqrt(phi_var)[None] * rng.standard_normal((samples,) + phi.shape)
    if bias:
        noisy = np.concatenate([noisy, np.ones((samples, phi.shape[0], 1))], axis=2)
    g = np.einsum("snp,sdp->snd", noisy, draws)
    reference = plain.logit_scale * (g / np.linalg.norm(g, axis=2, keepdims=True)) @ plain.class_text.T
    spread = reference.std(axis=0)
    assert np.abs(shared.mean(0) - reference.mean(0)).max() < 0.05 * spread.max()
    np.testing.assert_allclose(shared.var(0), reference.var(0), rtol=0.06)
    without = plain.sample_logits(plain.sample_weights(samples, seed=3), phi).var(0)
    print("logit variance with / without phi's variance:", float(shared.var(0).mean() / without.mean()))
    assert shared.var(0).mean() > 1.1 * without.mean()  # the phi noise is there


def test_moments_and_predictions_read_the_variance_columns():
    plain, cvp, phi, phi_var = _posterior(False)
    x = np.concatenate([phi, phi_var], axis=1)
    mean, var = cvp.logit_moments(x)
    ref_mean, ref_var = logit_moments(plain, phi, phi_var)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-10)
    np.testing.assert_allclose(var, ref_var, rtol=1e-10)
    # phi alone (the labelled phi of a refit): no variance, as the plain posterior
    np.testing.assert_allclose(cvp.logit_moments(phi)[1], plain.logit_moments(phi)[1], rtol=1e-10)
    np.testing.assert_allclose(cvp.map_predict(x), plain.map_predict(phi), rtol=1e-10)
    assert cvp.feature_kind == "phi+phi_var" and plain.feature_kind == "phi" and BayesVLMPosterior.feature_kind == "phi"
    with pytest.raises(InputError, match=r"\(N, 5\) or \(N, 10\)"):
        cvp.logit_moments(x[:, :7])


def test_state_round_trip_keeps_the_flag_and_old_files_load_without_it():
    _, cvp, phi, phi_var = _posterior(True)
    arrays, header = cvp.to_state()
    loaded = BayesVLMPosterior.from_state(arrays, header, cvp.provenance, cvp.classes, cvp.embedding_spec_key)
    assert loaded.phi_variance and loaded.feature_kind == "phi+phi_var"
    x = np.concatenate([phi, phi_var], axis=1)
    np.testing.assert_allclose(loaded.logit_moments(x)[1], cvp.logit_moments(x)[1])
    half = replace(cvp, phi_variance_scale=0.5)  # the scale multiplies the stored variance
    np.testing.assert_allclose(half.logit_moments(x)[1], logit_moments(half, phi, 0.5 * phi_var)[1], rtol=1e-10)
    assert replace(cvp, phi_variance_scale=0.0).feature_kind == "phi"
    header.pop("phi_variance_scale")
    old = BayesVLMPosterior.from_state(arrays, header, cvp.provenance, cvp.classes, cvp.embedding_spec_key)
    assert not old.phi_variance and old.feature_kind == "phi"
