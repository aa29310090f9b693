"""LaplaceHeadPosterior against references: dense covariance, Monte Carlo, scikit-learn, laplace-torch, a dense lam grid."""

from __future__ import annotations

import numpy as np
import pytest

from alkit.errors import StateError
from alkit.posterior.base import Posterior
from alkit.posterior.laplace_head import LaplaceHeadSettings, fit_laplace_head
from alkit.posterior.laplace_head_fit import fit_map_head, head_log_evidence


def _data(seed=0, N=120, D=6, K=3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(K, D))
    labels = rng.integers(0, K, size=N)
    x = centres[labels] + 0.8 * rng.normal(size=(N, D))
    return x, labels, centres


@pytest.mark.parametrize("damping", ["eigen", "ritter"])
def test_logit_moments_match_dense_kronecker_covariance(damping):
    x, labels, centres = _data()
    settings = LaplaceHeadSettings(damping=damping, calibrate=False)
    post = fit_laplace_head(x, labels, 3, class_text=centres, logit_scale=5.0, settings=settings)
    assert isinstance(post, Posterior)
    lam = post.prior_precision
    if damping == "eigen":  # n (A (x) B) + lam I, inverted densely
        precision = np.kron(post.factors.A, post.factors.B) + lam * np.eye(21)
        cov = np.linalg.inv(precision)
    else:
        a_damped = post.factors.A + np.sqrt(lam) * np.eye(7)
        b_damped = post.factors.B + np.sqrt(lam) * np.eye(3)
        cov = np.kron(np.linalg.inv(a_damped), np.linalg.inv(b_damped))  # vec(W), column-major
    np.testing.assert_allclose(post.eigen.covariance(1.0, lam, damping), cov, rtol=1e-6, atol=1e-10)
    xa = post._augment(x[:10])
    mean, var = post.logit_moments(x[:10])
    centre = np.eye(3) - 1.0 / 3.0  # softmax-invariant: the moments are those of the centred logits
    for i in range(10):
        jac = centre @ np.kron(xa[i][None, :], np.eye(3))  # f = (x^T (x) I_K) vec(W), then centred
        np.testing.assert_allclose(var[i], np.diag(jac @ cov @ jac.T), rtol=2e-4)
        np.testing.assert_allclose(mean[i], post.weights @ xa[i], rtol=1e-4, atol=1e-4)


def test_samples_have_the_posterior_covariance():
    x, labels, _ = _data(seed=4, N=40, D=3, K=3)
    post = fit_laplace_head(x, labels, 3)
    draws = post.sample_weights(100_000, seed=2).weights.astype(np.float64)  # (S, K, D+1)
    vec = draws.transpose(0, 2, 1).reshape(draws.shape[0], -1)  # column-major vec(W)
    expected = post.eigen.covariance(1.0, post.prior_precision)
    np.testing.assert_allclose(np.cov(vec.T), expected, atol=0.03 * np.abs(expected).max())
    np.testing.assert_allclose(vec.mean(0), post.weights.T.reshape(-1), atol=0.02 * np.sqrt(np.diag(expected)).max())


def test_map_equals_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, labels, _ = _data(seed=5, N=200, D=8, K=4)
    lam = 0.7
    post = fit_laplace_head(x, labels, 4, settings=LaplaceHeadSettings(fixed_prior_precision=lam, gradient_tolerance=1e-10))
    xa = post._augment(x)
    reference = LogisticRegression(C=1.0 / lam, fit_intercept=False, tol=1e-10, max_iter=10_000).fit(xa, labels)
    np.testing.assert_allclose(post.weights, reference.coef_, atol=2e-5)


def test_evidence_optimum_beats_every_point_of_a_dense_grid():
    """Each grid lam gets its own MAP: the full Laplace evidence, not a fixed-MAP proxy."""
    x, labels, _ = _data(seed=6, N=60)
    post = fit_laplace_head(x, labels, 3)
    xa = post._augment(x)
    chosen = post.provenance.settings["log_evidence"]
    grid = np.logspace(-4, 4, 33)
    values = []
    for lam in grid:
        weights = fit_map_head(xa, labels, post.prior_weights, lam).weights
        values.append(head_log_evidence(xa, labels, post.prior_weights, lam, weights)[0])
    assert chosen >= max(values) - 1e-6
    assert not post.provenance.settings["prior_precision_on_bound"]
    assert 1e-4 < post.prior_precision < 1e4


def test_matches_laplace_torch_kron_last_layer():
    """laplace-torch's KronLLLaplace on nn.Linear(D+1, K, bias=False) over [x; 1] at our MAP:
    same log marginal likelihood, same lam at a fixed MAP, same logit mean and covariance
    (ours is reported for the centred logits, so laplace-torch's is centred here)."""
    torch = pytest.importorskip("torch")
    laplace = pytest.importorskip("laplace", reason="laplace-torch is in the test extra")
    from alkit.posterior.evidence import optimise_prior_precision

    x, labels, _ = _data(seed=0, N=80, D=5, K=3)
    post = fit_laplace_head(x, labels, 3, settings=LaplaceHeadSettings(calibrate=False))
    lam = post.prior_precision
    xa = post._augment(x)
    model = torch.nn.Linear(6, 3, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(post.weights))
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(xa), torch.from_numpy(labels)), batch_size=80)
    reference = laplace.Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron", prior_precision=lam)
    reference.fit(data)
    ours = head_log_evidence(xa, labels, post.prior_weights, lam, post.weights)[0]
    assert ours == pytest.approx(reference.log_marginal_likelihood(prior_precision=torch.tensor(lam)).item(), rel=1e-7)
    f_mean, f_var = reference._glm_predictive_distribution(torch.from_numpy(xa[:20]))
    centre = torch.eye(3, dtype=torch.float64) - 1.0 / 3.0
    centred_var = torch.diagonal(centre @ f_var @ centre, dim1=-2, dim2=-1).numpy()
    mean, var = post.logit_moments(x[:20])
    np.testing.assert_allclose(mean, f_mean.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(var, centred_var, rtol=1e-5)
    theta_sq = float(np.sum((post.weights - post.prior_weights) ** 2))
    fixed_map_lam = optimise_prior_precision(post.eigen.a_vals, post.eigen.b_vals, 1.0, theta_sq, (1e-6, 1e6))
    reference.optimize_prior_precision(method="marglik", n_steps=1000, lr=0.1, init_prior_prec=1.0)
    assert fixed_map_lam == pytest.approx(reference.prior_precision.item(), rel=1e-4)


def test_zero_labels_give_the_prompt_prior_predictive():
    _, _, centres = _data()
    settings = LaplaceHeadSettings(initial_prior_precision=2.0)
    post = fit_laplace_head(np.zeros((0, 6)), np.zeros(0, dtype=int), 3, class_text=centres, logit_scale=5.0, settings=settings)
    x, _, _ = _data(seed=1, N=20)
    mean, var = post.logit_moments(x)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(mean, 5.0 * unit @ (centres / np.linalg.norm(centres, axis=1, keepdims=True)).T, atol=1e-5)
    np.testing.assert_allclose(var, (1.0 + 1.0) / 2.0 * (1 - 1 / 3), rtol=1e-5)  # |[x; 1]|^2 / lam, centred over K = 3
    with pytest.raises(StateError, match="no labels and no class prompts"):
        fit_laplace_head(np.zeros((0, 6)), np.zeros(0, dtype=int), 3)


def test_shared_sample_mean_agrees_with_probit_and_samples_are_shared():
    """Tolerance mean TV <= 0.03: MC noise of S = 20,000 (< 0.004 per probability) plus the
    probit approximation of the centred logits (logit variance ~1 here, K = 3, 12 labels: its
    error measured 0.025); the probit must also be closer to the MC mean than the MAP is.
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
    assert tv <= 0.03
    assert tv < map_tv
    np.testing.assert_allclose(mc.sum(1), 1.0, rtol=1e-5)
