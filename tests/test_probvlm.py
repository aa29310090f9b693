"""ProbVLMPosterior: aleatoric ranking, reproducibility, round trip, logit moments, shared samples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from alkit.errors import StateError
from alkit.posterior.base import Posterior
from alkit.posterior.probvlm import fit_probvlm
from alkit.posterior.probvlm_adapter import ProbVLMSettings
from alkit.posterior.probvlm_train import train_adapters

K, D = 4, 16
TINY = ProbVLMSettings(epochs=3, learning_rate=1e-2, hidden=16, batch_size=32)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def noisy_clusters(rng, count: int, centres: np.ndarray):
    """Images = class centre + per-item isotropic noise of scale sigma (log-uniform 0.01..0.4)."""
    labels = rng.integers(0, len(centres), count)
    sigma = np.exp(rng.uniform(np.log(0.01), np.log(0.4), count))
    return centres[labels] + sigma[:, None] * rng.normal(size=(count, centres.shape[1])), labels, sigma


def unit_centres(seed: int = 0) -> np.ndarray:
    centres = np.random.default_rng(seed).normal(size=(K, D))
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def small_posterior():
    rng = np.random.default_rng(1)
    centres = unit_centres()
    x, labels, _ = noisy_clusters(rng, 60, centres)
    return fit_probvlm(x, x[:20], labels[:20], centres, logit_scale=20.0, settings=TINY, seed=0, classes=list("abcd"), progress=False), x


def test_aleatoric_uncertainty_ranks_unseen_items_by_injected_noise():
    """Pairs (image, its class prompt) teach alpha ~ distance to the prompt; on fresh items the
    summed aleatoric variance must rank them by their noise scale (an oracle using the true
    centre reaches ~0.9 here)."""
    rng = np.random.default_rng(0)
    centres = unit_centres()
    x, labels, _ = noisy_clusters(rng, 400, centres)
    settings = ProbVLMSettings(epochs=60, learning_rate=1e-2, hidden=32, batch_size=64, patience=60)
    posterior = fit_probvlm(x, x, labels, centres, logit_scale=20.0, settings=settings, seed=0, progress=False)
    fresh, _, sigma = noisy_clusters(rng, 200, centres)
    aleatoric = posterior.aleatoric_uncertainty(fresh)
    assert spearmanr(aleatoric, sigma).statistic >= 0.8


def test_training_is_reproducible_for_a_seed_and_differs_across_seeds():
    rng = np.random.default_rng(2)
    centres = unit_centres()
    x, labels, _ = noisy_clusters(rng, 50, centres)
    first = train_adapters(x, x[:12], centres[labels[:12]], centres, TINY, seed=5)
    second = train_adapters(x, x[:12], centres[labels[:12]], centres, TINY, seed=5)
    other = train_adapters(x, x[:12], centres[labels[:12]], centres, TINY, seed=6)
    for name, value in first.image.items():
        np.testing.assert_array_equal(value, second.image[name])
        np.testing.assert_array_equal(first.text[name], second.text[name])
    assert first.history == second.history
    assert not np.array_equal(first.image["W1"], other.image["W1"])


def test_early_stopping_keeps_the_best_held_out_epoch():
    rng = np.random.default_rng(3)
    centres = unit_centres()
    x, labels, _ = noisy_clusters(rng, 80, centres)
    settings = ProbVLMSettings(epochs=40, learning_rate=3e-2, hidden=16, batch_size=16, patience=2)
    trained = train_adapters(x, x, centres[labels], centres, settings, seed=0)
    held = [h for _, _, h in trained.history]
    assert len(trained.history) < 40  # stopped early
    assert trained.best_epoch == int(np.argmin(held)) + 1
    assert len(trained.history) - trained.best_epoch == 2  # exactly `patience` epochs without improvement
    assert trained.held_out_images == 8 and trained.held_out_pairs == 8


def test_protocol_shapes_and_normalised_probabilities(small_posterior):
    posterior, x = small_posterior
    assert isinstance(posterior, Posterior) and posterior.kind == "probvlm" and posterior.num_classes == K
    assert posterior.prior_precision is None
    mean, variance = posterior.logit_moments(x[:7])
    assert mean.shape == variance.shape == (7, K) and (variance >= 0).all()
    for probs in (posterior.predict(x[:7]), posterior.map_predict(x[:7])):
        assert probs.shape == (7, K)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    samples = posterior.sample_probs(posterior.sample_weights(5, seed=1), x[:7])
    assert samples.shape == (5, 7, K)
    np.testing.assert_allclose(samples.sum(axis=-1), 1.0, rtol=1e-5)


def test_sample_probs_share_draws_across_calls(small_posterior):
    """Same weights object: an input's samples do not depend on which chunk it came in."""
    posterior, x = small_posterior
    weights = posterior.sample_weights(6, seed=3)
    whole = posterior.sample_probs(weights, x[:10])
    np.testing.assert_allclose(posterior.sample_probs(weights, x[4:6]), whole[:, 4:6], rtol=1e-5, atol=1e-7)
    again = posterior.sample_probs(posterior.sample_weights(6, seed=3), x[:10])
    np.testing.assert_array_equal(again, whole)
    assert not np.allclose(posterior.sample_probs(posterior.sample_weights(6, seed=4), x[:10]), whole)


def test_logit_moments_match_monte_carlo_over_embedding_draws(small_posterior):
    posterior, x = small_posterior
    draws = posterior.sample_embeddings(posterior.sample_weights(4000, seed=0), x[:5]).astype(np.float64)  # (S, n, D)
    draws /= np.linalg.norm(draws, axis=-1, keepdims=True)
    logits = posterior.logit_scale * draws @ posterior.class_text.T.astype(np.float64)  # (S, n, K)
    mean, variance = posterior.logit_moments(x[:5])
    spread = np.sqrt(logits.var(axis=0))
    assert np.all(np.abs(mean - logits.mean(axis=0)) < 0.1 * spread + 1e-3)
    # first-order variance: within ~5% except where cos is near 1 (the top class), ~25% low there
    np.testing.assert_allclose(variance, logits.var(axis=0), rtol=0.3)
    assert np.median(np.abs(variance / logits.var(axis=0) - 1)) < 0.08


def test_uncertainty_outputs(small_posterior):
    posterior, x = small_posterior
    result = posterior.uncertainty(x[:9])
    assert result.aleatoric.shape == result.epistemic.shape == (9,)
    assert (result.aleatoric > 0).all() and (result.epistemic > 0).all()
    np.testing.assert_allclose(result.total, result.aleatoric + result.epistemic)
    # epistemic is per input: the same with other inputs alongside (masks shared, not per chunk)
    np.testing.assert_allclose(posterior.epistemic_uncertainty(x[3:5]), result.epistemic[3:5], rtol=1e-5)
    from dataclasses import replace

    no_dropout = replace(posterior, settings=replace(posterior.settings, dropout=0.0))
    np.testing.assert_array_equal(no_dropout.epistemic_uncertainty(x[:4]), np.zeros(4))


def test_save_load_round_trip(small_posterior, tmp_path):
    from alkit.posterior.io import load_posterior, save_posterior

    posterior, x = small_posterior
    save_posterior(posterior, tmp_path / "p")
    loaded = load_posterior(tmp_path / "p", expected_classes=list("abcd"))
    assert loaded.kind == "probvlm" and loaded.settings == posterior.settings
    assert loaded.provenance == posterior.provenance and loaded.logit_scale == posterior.logit_scale
    np.testing.assert_array_equal(loaded.predict(x), posterior.predict(x))
    np.testing.assert_array_equal(loaded.aleatoric_uncertainty(x), posterior.aleatoric_uncertainty(x))
    np.testing.assert_array_equal(loaded.epistemic_uncertainty(x), posterior.epistemic_uncertainty(x))
    weights = posterior.sample_weights(4, 9)
    np.testing.assert_array_equal(loaded.sample_probs(weights, x), posterior.sample_probs(weights, x))


def test_without_text_uncertainty_works_but_probabilities_are_a_state_error():
    rng = np.random.default_rng(4)
    x, _, _ = noisy_clusters(rng, 30, unit_centres())
    posterior = fit_probvlm(x, settings=TINY, classes=list("abcd"), progress=False)
    assert posterior.text_params is None and posterior.aleatoric_uncertainty(x).shape == (30,)
    with pytest.raises(StateError, match="no class-prompt text embeddings"):
        posterior.predict(x)
