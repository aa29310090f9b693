"""Predictive temperature of the trained heads (ensemble, MIMO, HetSNGP), fitted by K-fold
cross-validated NLL through the function the Laplace head uses (`predictive_calibration`).

The toy problem makes each kind over-confident (30-d Gaussian classes, 20% flipped labels, weak
weight decay): the calibrated predictive must then have a lower NLL and ECE on fresh held-out
data than the same posterior with T = 1 (so the tests fail if T is forced to 1). The search is
checked against a brute-force grid over T on fixed held-out logits.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from alkit.metrics.calibration import ece, nll
from alkit.posterior.ensemble import EnsembleSettings, fit_ensemble
from alkit.posterior.hetsngp import HetSNGPSettings, fit_hetsngp
from alkit.posterior.io import load_posterior, save_posterior
from alkit.posterior.mimo import MimoSettings, fit_mimo
from alkit.posterior.predictive_calibration import cross_validated_calibration, fold_of_each
from alkit.posterior.trained_heads import softmax

KINDS = ["ensemble", "mimo", "hetsngp"]
OVERFIT = {  # weak weight decay: each kind fits the flipped labels and is over-confident off them
    "ensemble": lambda x, y: fit_ensemble(x, y, 3, settings=EnsembleSettings(prior_precision=0.01)),
    "mimo": lambda x, y: fit_mimo(x, y, 3, settings=MimoSettings(steps=250, hidden=32, prior_precision=0.01, learning_rate=1e-2)),
    "hetsngp": lambda x, y: fit_hetsngp(x, y, 3, settings=HetSNGPSettings(steps=300, hidden=32, features=256)),
}


def noisy_classes(count: int, seed: int, dim: int = 30, classes: int = 3, flip: float = 0.2):
    """Overlapping Gaussian classes (fixed centres) with a fraction `flip` of labels redrawn at random."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(7).normal(size=(classes, dim)) * 0.5
    labels = rng.integers(classes, size=count)
    x = centres[labels] + rng.normal(size=(count, dim)) + np.r_[4.0, np.zeros(dim - 1)]
    flipped = rng.uniform(size=count) < flip
    return x, np.where(flipped, rng.integers(classes, size=count), labels)


@pytest.fixture(scope="module")
def calibrated():
    x, y = noisy_classes(150, 0)
    return {kind: OVERFIT[kind](x, y) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_temperature_lowers_held_out_nll_and_ece_of_an_over_confident_head(calibrated, kind):
    posterior = calibrated[kind]
    xt, yt = noisy_classes(2000, 1)
    raw = replace(posterior, temperature=1.0, variance_scale=1.0).predict(xt)
    tempered = posterior.predict(xt)
    assert posterior.temperature < 0.8  # over-confident: the calibrated logits are flattened
    assert nll(tempered, yt) < nll(raw, yt) - 0.02
    assert ece(tempered, yt)[0] < ece(raw, yt)[0] - 0.02
    settings = posterior.provenance.settings
    assert settings["cv_nll_calibrated"] < settings["cv_nll_uncalibrated"]
    assert (tempered.argmax(axis=1) == raw.argmax(axis=1)).mean() > 0.97  # a temperature barely moves the argmax


@pytest.mark.parametrize("kind", KINDS)
def test_calibration_applies_to_predictive_moments_not_to_shared_samples(calibrated, kind):
    posterior = calibrated[kind]
    xt, _ = noisy_classes(50, 2)
    untempered = replace(posterior, temperature=1.0, variance_scale=1.0)
    mean, var = posterior.logit_moments(xt)
    mean1, var1 = untempered.logit_moments(xt)
    np.testing.assert_allclose(mean, posterior.temperature * mean1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, posterior.temperature**2 * posterior.variance_scale * var1, rtol=1e-5, atol=1e-8)
    draws = posterior.sample_weights(6, seed=3)
    np.testing.assert_array_equal(posterior.sample_probs(draws, xt), untempered.sample_probs(draws, xt))


@pytest.mark.parametrize("kind", KINDS)
def test_no_temperature_below_twenty_labels(kind):
    x, y = noisy_classes(19, 0)
    posterior = OVERFIT[kind](x, y)
    assert posterior.temperature == posterior.variance_scale == 1.0
    assert posterior.provenance.settings["calibration"] == "none (too few labels)"


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_keeps_the_temperature_exactly(calibrated, kind, tmp_path):
    posterior = calibrated[kind]
    save_posterior(posterior, tmp_path / kind)
    loaded = load_posterior(tmp_path / kind)
    assert loaded.temperature == posterior.temperature != 1.0
    assert loaded.variance_scale == posterior.variance_scale != 1.0
    xt, _ = noisy_classes(40, 3)
    np.testing.assert_array_equal(loaded.predict(xt), posterior.predict(xt))


def test_cross_validated_temperature_matches_a_brute_force_grid():
    rng = np.random.default_rng(0)
    count, classes = 240, 4
    labels = rng.integers(classes, size=count)
    logits = 3.0 * rng.normal(size=(count, classes))  # over-confident and only weakly informative
    logits[np.arange(count), labels] += 2.0
    seen = []

    def held_out(train, held):
        seen.append((train.copy(), held.copy()))
        return (logits[held],)

    found = cross_validated_calibration(labels, 5, 11, held_out, lambda out, p: softmax(p[0] * out[0]), [(0.1, 10.0)])
    folds = fold_of_each(count, 5, 11)
    assert len(seen) == 5 and all(np.array_equal(h, folds == f) and np.array_equal(t, ~h) for f, (t, h) in enumerate(seen))
    grid = np.linspace(0.1, 2.0, 3801)
    grid_nll = [-np.mean(np.log(softmax(t * logits)[np.arange(count), labels])) for t in grid]
    best = grid[int(np.argmin(grid_nll))]
    assert found.parameters[0] == pytest.approx(best, abs=2e-3)
    assert found.nll_calibrated == pytest.approx(min(grid_nll), abs=1e-6)
    assert found.nll_uncalibrated == pytest.approx(grid_nll[int(np.argmin(np.abs(grid - 1.0)))], abs=1e-9)
