"""Analytic BALD from logit moments against Monte Carlo BALD of the same Gaussian logits."""

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from alkit.acquisition.analytic_bald import analytic_bald
from alkit.acquisition.logits import bald_from_logits
from alkit.errors import InputError


def _case(num_items, num_classes, seed, mean_scale, log_variance):
    """Logit means with per-item scale, per-class variances spread over ~2 orders of magnitude."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(num_items, num_classes)) * mean_scale * rng.uniform(0.2, 1.5, size=(num_items, 1))
    variance = np.exp(rng.normal(log_variance, 1.0, size=(num_items, 1)) + 0.5 * rng.normal(size=(num_items, num_classes)))
    return mean, variance


def _monte_carlo_bald(mean, variance, num_samples, seed, chunk=50):
    """BALD of softmax(z), z ~ N(mean, diag variance), from S independent draws (float32 kernel)."""
    generator = torch.Generator().manual_seed(seed)
    out = np.empty(len(mean))
    for start in range(0, len(mean), chunk):
        m = torch.from_numpy(mean[start : start + chunk]).float()
        s = torch.from_numpy(np.sqrt(variance[start : start + chunk])).float()
        logits = m + s * torch.randn((num_samples, *m.shape), generator=generator)
        out[start : start + chunk] = bald_from_logits(logits)
    return out


@pytest.mark.parametrize(
    "num_classes, mean_scale, log_variance",
    [(10, 3.0, -1.0), (30, 5.0, -2.0), (3, 2.0, 0.0), (30, 1.0, 1.0)],
)
def test_ranks_like_a_10k_sample_reference_at_least_as_well_as_64_samples(num_classes, mean_scale, log_variance):
    mean, variance = _case(200, num_classes, 0, mean_scale, log_variance)
    reference = _monte_carlo_bald(mean, variance, 10_000, seed=1)
    sampled = [spearmanr(_monte_carlo_bald(mean, variance, 64, seed=s), reference)[0] for s in (2, 3, 4)]
    analytic = spearmanr(analytic_bald(mean, variance), reference)[0]
    assert analytic >= np.mean(sampled), (analytic, sampled)


def test_edge_cases_zero_variance_certain_class_and_dtypes():
    mean, variance = _case(50, 7, 5, 3.0, 0.0)
    assert np.array_equal(analytic_bald(mean, np.zeros_like(variance)), np.zeros(50))  # no noise, no information
    certain = mean.copy()
    certain[:, 0] += 400.0  # class 0 beyond float64's exp range relative to the others
    values = analytic_bald(certain, variance)
    assert np.isfinite(values).all() and (values >= 0).all() and values.max() < 1e-6
    single = analytic_bald(mean, variance)
    assert single.dtype == np.float64 and single.shape == (50,)
    np.testing.assert_allclose(analytic_bald(mean.astype(np.float32), variance.astype(np.float32)), single, atol=1e-4)
    two = _case(500, 2, 6, 2.0, 0.0)  # K = 2: Houlsby's binary approximation, within ~8% of Monte Carlo
    reference = _monte_carlo_bald(*two, 10_000, seed=7)
    assert np.abs(analytic_bald(*two) - reference).mean() < 0.1 * reference.mean()


def test_bad_shapes_are_refused():
    with pytest.raises(InputError, match="K >= 2"):
        analytic_bald(np.zeros((3, 1)), np.zeros((3, 1)))
    with pytest.raises(InputError, match="shape"):
        analytic_bald(np.zeros((3, 4)), np.zeros((3, 5)))
