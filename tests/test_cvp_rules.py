"""CVP propagation rules, each alone against Monte Carlo over the same Gaussians (float64).

Tolerances: means within 2% and variances within 5% (rules that are exact for their
assumptions) of Monte Carlo whose own error is well below that (stated per test)."""

from __future__ import annotations

import math

import pytest
import torch

from alkit.cvp import rules
from alkit.cvp.activations import gelu_moments, quick_gelu_moments


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_linear_with_gaussian_weights_matches_monte_carlo():
    g = _gen(0)
    mean, var = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.rand(3, 6, generator=g, dtype=torch.float64)
    weight = torch.randn(4, 6, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    weight_var = 0.3 * torch.rand(4, 6, generator=g, dtype=torch.float64)
    bias_var = 0.2 * torch.rand(4, generator=g, dtype=torch.float64)
    draws = 200_000  # per-element MC error of the variance ~ sqrt(2/200k) = 0.3%
    x = mean + var.sqrt() * torch.randn(draws, 3, 6, generator=g, dtype=torch.float64)
    w = weight + weight_var.sqrt() * torch.randn(draws, 4, 6, generator=g, dtype=torch.float64)
    b = bias + bias_var.sqrt() * torch.randn(draws, 4, generator=g, dtype=torch.float64)
    y = torch.einsum("snj,sij->sni", x, w) + b[:, None, :]
    out_mean, out_var = rules.linear(mean, var, weight, bias, weight_var, bias_var)
    assert _rel(out_mean, y.mean(0)) < 0.02
    assert _rel(out_var, y.var(0)) < 0.02
    # deterministic weights and input: no variance at all; deterministic input: only weight noise
    assert rules.linear(mean, None, weight, bias)[1] is None
    only_weights = rules.linear(mean, None, weight, None, weight_var)[1]
    torch.testing.assert_close(only_weights, (mean**2) @ weight_var.T)


def test_layer_norm_expectation_rule_matches_monte_carlo_where_the_mean_only_rule_does_not():
    g = _gen(1)
    dim = 768
    mean = torch.randn(4, dim, generator=g, dtype=torch.float64)
    var = torch.rand(4, dim, generator=g, dtype=torch.float64) * 2.0  # mean(v) = Var_d(mu): a 2x case
    gamma = 1.0 + 0.1 * torch.randn(dim, generator=g, dtype=torch.float64)
    beta = 0.1 * torch.randn(dim, generator=g, dtype=torch.float64)
    x = mean + var.sqrt() * torch.randn(20_000, 4, dim, generator=g, dtype=torch.float64)
    y = torch.nn.functional.layer_norm(x, (dim,), gamma, beta, 1e-5)
    out_mean, out_var = rules.layer_norm(mean, var, gamma, beta)
    assert _rel(out_mean, y.mean(0)) < 0.02
    assert _rel(out_var, y.var(0)) < 0.05  # MC: sqrt(2/20k) = 1% per element
    only_mean_normaliser = var * gamma**2 / (mean.var(-1, unbiased=False, keepdim=True) + 1e-5)
    assert _rel(only_mean_normaliser, y.var(0)) > 0.5  # SUQ's mean-only rule: ~2x here


GRID = [(-3.0, 0.3), (-0.75, 0.5), (-0.75, 0.05), (-0.3, 1.0), (0.0, 2.0), (0.5, 0.01), (2.0, 3.0), (5.0, 0.1)]


@pytest.mark.parametrize("name", ["gelu", "quick_gelu"])
def test_activation_moments_match_monte_carlo(name):
    m = torch.tensor([p[0] for p in GRID], dtype=torch.float64)
    s = torch.tensor([p[1] for p in GRID], dtype=torch.float64)
    x = m + s * torch.randn(1_000_000, len(GRID), generator=_gen(2), dtype=torch.float64)
    if name == "gelu":
        y, (mean, var) = torch.nn.functional.gelu(x), gelu_moments(m, s**2)
    else:
        y, (mean, var) = x * torch.sigmoid(1.702 * x), quick_gelu_moments(m, s**2)
    sd = y.std(0)
    assert ((mean - y.mean(0)).abs() <= 0.02 * (y.mean(0).abs() + sd)).all()  # MC: sd/1000
    assert ((var / y.var(0) - 1.0).abs() < 0.02).all()  # MC: sqrt(2/1M) = 0.14%


def test_gelu_moment_matching_keeps_the_variance_that_linearisation_loses_at_the_minimum():
    m, s = torch.tensor([-0.7518], dtype=torch.float64), torch.tensor([0.5], dtype=torch.float64)  # GELU'(m) ~ 0
    x = m + s * torch.randn(1_000_000, generator=_gen(3), dtype=torch.float64)
    mc_var = torch.nn.functional.gelu(x).var()
    slope = torch.autograd.functional.jacobian(torch.nn.functional.gelu, m)
    linearised = float(slope.squeeze() ** 2 * s**2)
    assert linearised < 0.01 * float(mc_var)
    assert abs(float(gelu_moments(m, s**2)[1]) / float(mc_var) - 1.0) < 0.02


def test_gelu_moments_in_float32_agree_with_float64():
    g = _gen(4)
    m = 3.0 * torch.randn(10_000, generator=g, dtype=torch.float64)
    v = torch.exp(torch.empty(10_000, dtype=torch.float64).uniform_(math.log(1e-4), math.log(4.0), generator=g))
    mean64, var64 = gelu_moments(m, v)
    mean32, var32 = gelu_moments(m.float(), v.float())
    assert var32.dtype == torch.float32
    assert ((var32.double() - var64).abs() <= 1e-4 * var64 + 1e-9).all()
    assert ((mean32.double() - mean64).abs() <= 1e-5 * (mean64.abs() + 1.0)).all()


def test_attention_value_path_mixing_before_the_random_projection_matches_monte_carlo():
    """Deterministic tokens, fixed attention weights, random value weights shared by all tokens."""
    g = _gen(5)
    tokens, dim, out = 7, 5, 3
    x = torch.randn(tokens, dim, generator=g, dtype=torch.float64) + 1.0
    mixing = torch.softmax(torch.randn(tokens, tokens, generator=g, dtype=torch.float64), -1)
    weight = torch.randn(out, dim, generator=g, dtype=torch.float64)
    weight_var = 0.2 * torch.rand(out, dim, generator=g, dtype=torch.float64)
    w = weight + weight_var.sqrt() * torch.randn(100_000, out, dim, generator=g, dtype=torch.float64)
    y = mixing @ (x @ w.transpose(1, 2))  # (S, T, out): the true value path, project then mix
    mixed_mean, mixed_var = rules.mix_tokens(x, None, mixing)
    mean, var = rules.linear(mixed_mean, mixed_var, weight, None, weight_var)
    assert _rel(mean, y.mean(0)) < 0.02
    assert _rel(var, y.var(0)) < 0.03
    _, per_token = rules.linear(x, None, weight, None, weight_var)  # project first, tokens independent
    assert _rel((mixing**2) @ per_token, y.var(0)) > 0.5  # what mixing after the projection would say


@pytest.mark.parametrize("correlation", [0.0, 1.0])
def test_token_mixing_variance_matches_monte_carlo_for_independent_and_shared_noise(correlation):
    g = _gen(6)
    mean = torch.randn(6, 4, generator=g, dtype=torch.float64)
    var = torch.rand(6, 4, generator=g, dtype=torch.float64)
    mixing = torch.softmax(torch.randn(3, 6, generator=g, dtype=torch.float64), -1)
    draws = 200_000
    if correlation == 0.0:
        noise = torch.randn(draws, 6, 4, generator=g, dtype=torch.float64)
    else:  # one standard normal per channel, shared by every token
        noise = torch.randn(draws, 1, 4, generator=g, dtype=torch.float64).expand(draws, 6, 4)
    y = mixing @ (mean + var.sqrt() * noise)
    out_mean, out_var = rules.mix_tokens(mean, var, mixing, correlation)
    assert _rel(out_mean, y.mean(0)) < 0.02
    assert _rel(out_var, y.var(0)) < 0.02


def test_residual_adds_and_layer_scale_scales_variances():
    g = _gen(7)
    ma, va, mb, vb = (torch.rand(5, generator=g, dtype=torch.float64) for _ in range(4))
    a = ma + va.sqrt() * torch.randn(200_000, 5, generator=g, dtype=torch.float64)
    b = mb + vb.sqrt() * torch.randn(200_000, 5, generator=g, dtype=torch.float64)
    mean, var = rules.residual(ma, va, mb, vb)
    assert _rel(mean, (a + b).mean(0)) < 0.02 and _rel(var, (a + b).var(0)) < 0.02
    assert rules.residual(ma, None, mb, vb)[1] is vb
    gamma = torch.tensor([0.5, -2.0, 1.0, 3.0, 0.1], dtype=torch.float64)
    s_mean, s_var = rules.scale(ma, va, gamma)
    assert _rel(s_var, (a * gamma).var(0)) < 0.02 and _rel(s_mean, (a * gamma).mean(0)) < 0.02
