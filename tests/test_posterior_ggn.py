"""Closed-form contrastive GGN and KFAC factors against autograd and brute-force sums."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings, strategies as st

from alkit.posterior.ggn import per_input_ggn, summed_ggn
from alkit.posterior.kfac import add_inputs, kfac_factors, kfac_sums


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _autograd_ggn(g, v, scale, likelihood, bias=0.0, targets=None):
    """J_z^T H_z J_z with J_z = d logits / d g (jacrev) and H_z = Hessian of the loss in z."""
    g_t = torch.tensor(g, dtype=torch.float64)
    v_t = torch.tensor(v, dtype=torch.float64)

    def logits(x):
        return scale * v_t @ (x / x.norm())

    def loss(z):
        if likelihood == "infonce":
            return torch.nn.functional.cross_entropy(z[None], torch.tensor([0]))
        t = torch.tensor(targets, dtype=torch.float64)
        return torch.nn.functional.binary_cross_entropy_with_logits(z + bias, t, reduction="sum")

    jac = torch.func.jacrev(logits)(g_t)  # (C, D)
    hess = torch.func.hessian(loss)(logits(g_t))  # (C, C)
    return (jac.T @ hess @ jac).numpy()


def test_infonce_ggn_matches_autograd():
    rng = np.random.default_rng(0)
    g = rng.normal(size=(3, 4)) * 2.0
    v = _unit(rng.normal(size=(5, 4)))
    closed = per_input_ggn(g, v, logit_scale=7.0, likelihood="infonce")
    for i in range(3):
        np.testing.assert_allclose(closed[i], _autograd_ggn(g[i], v, 7.0, "infonce"), atol=1e-10)


def test_siglip_ggn_matches_autograd():
    rng = np.random.default_rng(1)
    g = rng.normal(size=(3, 4))
    v = _unit(rng.normal(size=(6, 4)))
    closed = per_input_ggn(g, v, logit_scale=5.0, likelihood="siglip", logit_bias=-1.5)
    for i in range(3):
        targets = (rng.random(6) < 0.5).astype(float)  # the GGN must not depend on them
        reference = _autograd_ggn(g[i], v, 5.0, "siglip", bias=-1.5, targets=targets)
        np.testing.assert_allclose(closed[i], reference, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    likelihood=st.sampled_from(["infonce", "siglip"]),
    batch=st.sampled_from([None, 1, 2, 3, 7]),
)
def test_summed_ggn_equals_loop_over_inputs_and_candidate_batches(seed, likelihood, batch):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(6, 5))
    v = _unit(rng.normal(size=(7, 5)))
    size = 7 if batch is None else batch
    per_batch = [
        per_input_ggn(g, v[s : s + size], 4.0, likelihood, logit_bias=0.3).sum(axis=0) for s in range(0, 7, size)
    ]
    np.testing.assert_allclose(summed_ggn(g, v, 4.0, likelihood, batch, logit_bias=0.3), np.mean(per_batch, axis=0), atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), likelihood=st.sampled_from(["infonce", "siglip"]))
def test_ggn_is_psd_and_blind_to_the_embedding_norm(seed, likelihood):
    """The cosine does not change along g itself, so G g = 0; G is symmetric PSD."""
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(4, 5))
    v = _unit(rng.normal(size=(6, 5)))
    stack = per_input_ggn(g, v, 3.0, likelihood)
    for i in range(4):
        np.testing.assert_allclose(stack[i], stack[i].T, atol=1e-12)
        assert np.linalg.eigvalsh(stack[i]).min() > -1e-10
        np.testing.assert_allclose(stack[i] @ g[i], 0.0, atol=1e-10)


def test_kfac_factors_are_normalised_sums_with_bias_column():
    rng = np.random.default_rng(2)
    phi = rng.normal(size=(9, 3))
    proj = rng.normal(size=(5, 4))  # D=5, d=3 + bias
    v = _unit(rng.normal(size=(4, 5)))
    factors = kfac_factors(phi, proj, v, 6.0, candidate_batch_size=2, bias=True)
    phi1 = np.concatenate([phi, np.ones((9, 1))], axis=1)
    np.testing.assert_allclose(factors.A, phi1.T @ phi1 / 3.0, atol=1e-12)
    np.testing.assert_allclose(factors.B, summed_ggn(phi1 @ proj.T, v, 6.0, "infonce", 2) / 3.0, atol=1e-12)
    assert factors.candidate_batch_size == 2 and factors.num_inputs == 9


def test_add_inputs_equals_factors_of_the_union_and_leaves_input_untouched():
    rng = np.random.default_rng(3)
    phi = rng.normal(size=(10, 3))
    proj = rng.normal(size=(4, 3))
    v = _unit(rng.normal(size=(5, 4)))
    first = kfac_factors(phi[:6], proj, v, 5.0)
    before = first.A.copy(), first.B.copy()
    a_sum, b_sum = kfac_sums(phi[6:], proj, v, 5.0)
    merged = add_inputs(first, a_sum, b_sum, 4)
    union = kfac_factors(phi, proj, v, 5.0)
    np.testing.assert_allclose(merged.A, union.A, atol=1e-12)
    np.testing.assert_allclose(merged.B, union.B, atol=1e-12)
    np.testing.assert_array_equal(first.A, before[0])
    np.testing.assert_array_equal(first.B, before[1])
