"""Posteriors judged against outside references: a fit that learns nothing, or uncertainty
that does not rank, fails here.

Data: scikit-learn's digits (pixels, unit-normalised, with pixel noise), the imported-
embeddings case without text embeddings (the Laplace head's cold-start path), and the
frozen random-feature "CLIP" of `test_posterior_bayesvlm.digits_experiment` for BayesVLM.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.stats import spearmanr

from alkit.acquisition.scores import bald, epig
from alkit.metrics.calibration import accuracy, ece, nll
from alkit.posterior.laplace_head import fit_laplace_head
from alkit.acquisition.pipeline import promote_samples


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    x = x + 0.5 * rng.normal(size=x.shape)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(len(y))
    return x, y, order[:500], order[500:]  # features, labels, test, pool


def test_laplace_head_matches_cross_validated_logistic_regression(digits):
    """Tolerances: accuracy within 2 points of LogisticRegressionCV (C by 5-fold log-loss), NLL
    within 10% and ECE within 0.02 of it (benchmarks/head_quality.py measured -0.2 points,
    +2% NLL and +0.002 ECE at 200 labels on this data). Before the fix the head predicted
    uniformly (accuracy 0.10)."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import KFold

    x, y, test, pool = digits
    chosen = pool[:200]
    head = fit_laplace_head(x[chosen], y[chosen], 10, unlabelled=x[pool])
    ours = head.predict(x[test])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = LogisticRegressionCV(
            Cs=np.logspace(-4, 4, 17), cv=KFold(5, shuffle=True, random_state=0), scoring="neg_log_loss", max_iter=5000
        ).fit(x[chosen], y[chosen])
    theirs = reference.predict_proba(x[test])
    assert accuracy(ours, y[test]) >= accuracy(theirs, y[test]) - 0.02
    assert accuracy(ours, y[test]) > 0.8
    assert nll(ours, y[test]) <= 1.10 * nll(theirs, y[test])
    assert ece(ours, y[test])[0] <= ece(theirs, y[test])[0] + 0.02
    assert not head.provenance.settings["prior_precision_on_bound"]


@pytest.fixture(scope="module")
def small_head(digits):
    x, y, test, pool = digits
    return fit_laplace_head(x[pool[:50]], y[pool[:50]], 10, unlabelled=x[pool])


def test_bald_ranking_is_stable_across_sample_seeds(digits, small_head):
    """At `alkit select`'s default S = 128 (S = 64 gave 0.87 here)."""
    from alkit.workflows.select import SelectSettings

    x, _, _, pool = digits
    samples = SelectSettings(budget=1).samples
    first = bald(small_head.sample_probs(small_head.sample_weights(samples, 1), x[pool]))
    second = bald(small_head.sample_probs(small_head.sample_weights(samples, 2), x[pool]))
    assert spearmanr(first, second)[0] >= 0.9


def _targets(digits, classes):
    x, y, test, _ = digits
    return x[test[np.isin(y[test], classes)][:100]]


def test_epig_depends_on_the_target_set_on_imported_embeddings(digits, small_head):
    x, _, _, pool = digits
    weights = promote_samples(small_head.sample_weights(256, 0))
    probs = small_head.sample_probs(weights, x[pool[:600]])
    low = epig(probs, small_head.sample_probs(weights, _targets(digits, [0, 1, 2])))
    high = epig(probs, small_head.sample_probs(weights, _targets(digits, [7, 8, 9])))
    assert spearmanr(low, high)[0] <= 0.8


def test_epig_depends_on_the_target_set_on_bayesvlm():
    """The random-feature CLIP of the BayesVLM digits check, zero-shot posterior (n = 10): with
    the reference's Ritter damping the two rankings agreed with Spearman 0.96-0.99."""
    from sklearn.datasets import load_digits

    from alkit.posterior.bayesvlm import BayesVLMPosterior

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    x = x / 16.0
    phi = np.tanh(x @ (rng.normal(size=(64, 48)) / np.sqrt(16.0)))
    projection = rng.normal(size=(24, 48)) / np.sqrt(48)
    unit = phi[:300] @ projection.T
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    text = np.stack([unit[y[:300] == k].mean(0) for k in range(10)])
    post = BayesVLMPosterior.from_pool_curvature(phi[300:1300], projection, text, 20.0, pseudo_data=10.0)
    weights = promote_samples(post.sample_weights(256, 0))
    probs = post.sample_probs(weights, phi[300:900])
    tests = np.arange(1300, len(y))
    low = epig(probs, post.sample_probs(weights, phi[tests[np.isin(y[tests], [0, 1, 2])][:100]]))
    high = epig(probs, post.sample_probs(weights, phi[tests[np.isin(y[tests], [7, 8, 9])][:100]]))
    assert spearmanr(low, high)[0] <= 0.8
    assert spearmanr(low, bald(probs))[0] < 0.95  # EPIG is not BALD in disguise


def test_float32_and_float64_scoring_agree_on_the_top_of_the_batch(digits, small_head):
    x, _, _, pool = digits
    weights = small_head.sample_weights(128, 3)
    candidates = x[pool[:600]]
    targets = _targets(digits, [3, 4])
    single = small_head.sample_probs(weights, candidates), small_head.sample_probs(weights, targets)
    wide = promote_samples(weights)
    double = small_head.sample_probs(wide, candidates), small_head.sample_probs(wide, targets)
    assert double[0].dtype == np.float64
    for score in (lambda p, t: bald(p), epig):
        top32 = set(np.argsort(-score(*single))[:20])
        top64 = set(np.argsort(-score(*double))[:20])
        assert len(top32 & top64) >= 19  # at most one swap at the boundary
