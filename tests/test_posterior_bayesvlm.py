"""BayesVLMPosterior: sampler orientation, shared samples vs probit, pure refit, digits check."""

from __future__ import annotations

import numpy as np
import pytest

from alkit.posterior.base import Posterior
from alkit.posterior.bayesvlm import BayesVLMPosterior
from alkit.posterior.bayesvlm_refit import RefitSettings, refit, refit_choosing_pseudo_data
from alkit.posterior.kronecker import eigendecompose


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def ece(probs, labels, bins=15):
    """Expected calibration error, 15 equal-width confidence bins."""
    conf, correct = probs.max(1), probs.argmax(1) == labels
    total = 0.0
    edges = np.linspace(0.0, 1.0, bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        member = (conf > lo) & (conf <= hi)
        if member.any():
            total += member.mean() * abs(correct[member].mean() - conf[member].mean())
    return total


def nll(probs, labels):
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-300, None))))


def _toy(seed=0, N=40, d=5, D=8, K=4):
    rng = np.random.default_rng(seed)
    proj = rng.normal(size=(D, d))
    phi = rng.normal(size=(N, d))
    text = _unit(rng.normal(size=(K, D)))
    return phi, proj, text


@pytest.mark.parametrize("damping", ["eigen", "ritter"])
def test_sampler_covariance_is_the_inverse_damped_precision_in_column_major_vec(damping):
    rng = np.random.default_rng(0)
    xa, xb = rng.normal(size=(4, 2)), rng.normal(size=(5, 3))
    a, b = xa.T @ xa, xb.T @ xb
    eig = eigendecompose(a, b)  # p = 2, q = 3 (W is q x p)
    n, lam = 2.0, 0.3
    mean = rng.normal(size=(3, 2))
    draws = eig.sample(mean, 200_000, 1, n, lam, damping, np.float64)
    vec = draws.transpose(0, 2, 1).reshape(len(draws), -1)  # column-major vec: stack columns
    if damping == "eigen":  # dense references built from A and B, not from the eigendecompositions
        expected = np.linalg.inv(n * np.kron(a, b) + lam * np.eye(6))
        swapped = np.linalg.inv(n * np.kron(b, a) + lam * np.eye(6))
    else:
        a_damped = np.sqrt(n) * a + np.sqrt(lam) * np.eye(2)
        b_damped = np.sqrt(n) * b + np.sqrt(lam) * np.eye(3)
        expected = np.kron(np.linalg.inv(a_damped), np.linalg.inv(b_damped))
        swapped = np.kron(np.linalg.inv(b_damped), np.linalg.inv(a_damped))
    empirical = np.cov(vec, rowvar=False)
    scale = np.abs(expected).max()
    assert np.abs(empirical - expected).max() < 0.02 * scale
    assert np.abs(empirical - swapped).max() > 0.1 * scale  # the test can tell the orientations apart
    np.testing.assert_allclose(draws.mean(0), mean, atol=0.02 * np.sqrt(scale))


def test_posterior_satisfies_protocol_and_shared_samples_are_reused_across_chunks():
    phi, proj, text = _toy()
    post = BayesVLMPosterior.from_pool_curvature(phi, proj, text, 20.0, pseudo_data=4.0)
    assert isinstance(post, Posterior)
    weights = post.sample_weights(8, seed=3)
    whole = post.sample_probs(weights, phi)
    assert whole.shape == (8, 40, 4)
    np.testing.assert_allclose(np.concatenate([post.sample_probs(weights, phi[:15]), post.sample_probs(weights, phi[15:])], 1), whole, rtol=1e-5)
    np.testing.assert_array_equal(post.sample_weights(8, seed=3).projections, weights.projections)
    mean, var = post.logit_moments(phi)
    assert mean.shape == var.shape == (40, 4) and (var >= 0).all()


def test_mean_of_shared_sample_probs_agrees_with_probit_predictive():
    """Tolerance: mean total variation <= 0.02 against S = 20,000 shared samples.

    Error sources: Monte Carlo noise of the reference (per-probability standard error
    < 0.5/sqrt(S) = 0.004) and the probit approximation of the centred logits (it still
    treats the centred logits as independent). Sensitivity: the same predictive with 4x the
    logit variance (e.g. a log-det/evidence bug halving lam twice) must agree worse.
    """
    from alkit.posterior.probcosine import probit_softmax

    phi, proj, text = _toy(seed=1, N=60, D=24)
    post = BayesVLMPosterior.from_pool_curvature(phi, proj, text, 20.0, pseudo_data=4.0)
    mc = post.sample_probs(post.sample_weights(20_000, seed=0), phi).mean(0)
    mean, var = post.logit_moments(phi)

    def tv(probs):
        return 0.5 * np.abs(mc - probs).sum(1).mean()

    assert tv(post.analytic_predict(phi)) <= 0.02
    assert tv(probit_softmax(mean, 4 * var)) > tv(post.analytic_predict(phi))
    assert tv(post.predict(phi)) <= 0.01  # the product's predictive: Monte Carlo over 256 shared draws


def test_refit_is_deterministic_and_leaves_the_parent_untouched():
    phi, proj, text = _toy(seed=2, N=80)
    labels = np.random.default_rng(0).integers(0, 4, size=60)
    parent = BayesVLMPosterior.from_pool_curvature(phi, proj, text, 20.0, pseudo_data=4.0)
    before = {k: v.copy() for k, v in parent.to_state()[0].items()}
    lam_before = parent.prior_precision
    first = refit(parent, phi[:60], labels, RefitSettings(max_iterations=40), seed=5)
    second = refit(parent, phi[:60], labels, RefitSettings(max_iterations=40), seed=5)
    for name, value in parent.to_state()[0].items():
        np.testing.assert_array_equal(value, before[name])
    assert parent.prior_precision == lam_before
    for name, value in first.to_state()[0].items():
        np.testing.assert_array_equal(value, second.to_state()[0][name])
    assert first.provenance.labels_used == 60
    assert first.factors.num_inputs == 80 + 60
    assert first.prior_precision == parent.prior_precision  # the pretraining prior; labels enter as data
    assert not np.array_equal(first.projection, parent.projection)


def test_refit_rejects_labels_outside_the_class_range():
    from alkit.errors import InputError

    phi, proj, text = _toy()
    post = BayesVLMPosterior.from_pool_curvature(phi, proj, text, 20.0, pseudo_data=4.0)
    with pytest.raises(InputError, match="labels must lie"):
        refit(post, phi[:3], np.array([0, 1, 9]))


def digits_experiment(num_labels=300, logit_scale=100.0, pseudo_data=None, seed=0):
    """Frozen random-feature 'encoder' on sklearn digits; returns (map, bayes) test metrics."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    X, y = X[order] / 16.0, y[order]
    d, D = 48, 24
    phi = np.tanh(X @ (rng.normal(size=(64, d)) / np.sqrt(64 * 0.25)))  # frozen "backbone"
    proj = rng.normal(size=(D, d)) / np.sqrt(d)  # pretrained projection P
    prompts = _unit(phi[:200] @ proj.T)  # class "prompts": class means of a disjoint slice
    text = np.stack([prompts[y[:200] == k].mean(0) for k in range(10)])
    pool, labelled, test = slice(200, 1200), slice(200, 200 + num_labels), slice(1200, None)
    zero_shot = BayesVLMPosterior.from_pool_curvature(phi[pool], proj, text, logit_scale, pseudo_data or 10.0)
    grid = (0.3, 1.0, 3.0, 10.0, 30.0) if pseudo_data is None else (pseudo_data,)
    post = refit_choosing_pseudo_data(zero_shot, phi[labelled], y[labelled], grid, seed=seed)
    map_probs, bayes_probs = post.map_predict(phi[test]), post.predict(phi[test])
    metrics = {}
    for name, probs in [("map", map_probs), ("bayes", bayes_probs)]:
        metrics[name] = {
            "nll": nll(probs, y[test]), "ece": ece(probs, y[test]), "acc": float((probs.argmax(1) == y[test]).mean())
        }
    metrics["prior_precision"] = post.prior_precision
    metrics["pseudo_data"] = post.pseudo_data
    return metrics


@pytest.mark.parametrize("seed", [0, 1])
def test_refit_bayesian_predictions_are_no_worse_calibrated_than_map_on_digits(seed):
    metrics = digits_experiment(seed=seed)
    assert metrics["bayes"]["nll"] <= metrics["map"]["nll"]
    assert metrics["bayes"]["ece"] <= metrics["map"]["ece"]
    assert metrics["map"]["acc"] > 0.8  # the refit MAP learned the task
    assert metrics["pseudo_data"] < 10.0  # the labels' evidence widened the reference's n = 10


def test_refit_never_increases_the_labelled_images_predictive_variance_after_loaded_factors():
    """`fit --factors` then a refit: loaded factors carry no input count; the labelled images'
    logit variance must not rise (it rose 76x when the refit renormalised them away)."""
    phi, proj, text = _toy(seed=3, N=120, d=6, D=10, K=4)
    base_factors = BayesVLMPosterior.from_pool_curvature(phi[40:], proj, text, 20.0, pseudo_data=4.0).factors
    loaded = BayesVLMPosterior.from_factors(base_factors.A, base_factors.B, proj, text, 20.0, 4.0)
    assert loaded.factors.num_inputs == 0
    labels = np.random.default_rng(1).integers(0, 4, size=10)
    before = loaded.logit_moments(phi[:10])[1]
    after = refit(loaded, phi[:10], labels).logit_moments(phi[:10])[1]
    assert after.sum() <= before.sum() and np.median(after / before) < 1.0


def test_ece_helper_against_a_loop_over_predictions():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=200)
    labels = rng.integers(0, 3, size=200)
    conf = probs.max(1)
    bins = np.minimum((np.ceil(conf * 15) - 1).astype(int), 14)
    expected = sum(
        (bins == b).mean() * abs((probs.argmax(1) == labels)[bins == b].mean() - conf[bins == b].mean())
        for b in range(15) if (bins == b).any()
    )
    assert ece(probs, labels) == pytest.approx(expected)
