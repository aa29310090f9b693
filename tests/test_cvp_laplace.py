"""Diagonal Laplace for CVP: GGN diagonal against brute force; evidence-chosen prior precision."""

from __future__ import annotations

import math

import numpy as np
import torch

from alkit.cvp.blocks import prefix_tokens
from alkit.cvp.laplace import diagonal_ggn, fit_diagonal_laplace, role_prior_precision
from alkit.cvp.weights import ROLES, block_means, module_parameters


def _brute_force_ggn(visual, tokens, text, scale, num_blocks):
    """Per image, per logit: autograd through open_clip's own modules; sum_lm J_l Lambda_lm J_m."""
    from torch.func import functional_call

    blocks = visual.transformer.resblocks[len(visual.transformer.resblocks) - num_blocks :]
    roles = [{n: t.clone().requires_grad_(True) for n, t in block_means(b).items()} for b in blocks]
    flat = [t for r in roles for t in (r[n] for n in ROLES)]
    total = [torch.zeros_like(t) for t in flat]
    for i in range(tokens.shape[0]):
        x = tokens[i : i + 1]
        for block, r in zip(blocks, roles):
            x = functional_call(block, module_parameters(block, r), (x,))
        pooled, _ = visual._pool(x)
        g = pooled @ visual.proj
        logits = scale * (g / g.norm(dim=-1, keepdim=True)) @ text.T
        logits = logits[0]
        p = torch.softmax(logits, -1).detach()
        hessian = torch.diag(p) - torch.outer(p, p)
        jac = [torch.autograd.grad(logits[k], flat, retain_graph=True) for k in range(len(p))]
        for j, _ in enumerate(flat):
            rows = torch.stack([jac[k][j] for k in range(len(p))])  # (K, *shape)
            total[j] += torch.einsum("k...,kl,l...->...", rows, hessian, rows)
    return total


def _tiny():
    from alkit.demo.tiny_clip import create_tiny_clip

    model, _, _ = create_tiny_clip(seed=0)
    images = torch.randn(5, 3, 28, 28, generator=torch.Generator().manual_seed(4))
    text = torch.randn(4, 64, generator=torch.Generator().manual_seed(5))
    return model.visual, images, text / text.norm(dim=1, keepdim=True)


def test_diagonal_ggn_matches_a_brute_force_autograd_loop_on_the_tiny_clip():
    visual, images, text = _tiny()
    tokens = prefix_tokens(visual, images, 2)
    fast = diagonal_ggn(visual, tokens, text, 10.0, 2)
    reference = _brute_force_ggn(visual, tokens, text, 10.0, 2)
    flat = [t for block in fast for t in (block[n] for n in ROLES)]
    for got, expected in zip(flat, reference):
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()) + 1e-12)
    assert all(float(t.sum()) > 0 for t in flat)


def test_prior_precision_maximises_the_evidence_and_variances_shrink_with_curvature():
    g = torch.Generator().manual_seed(6)
    curvature = torch.rand(500, generator=g, dtype=torch.float64) * 10.0
    weight = torch.randn(500, generator=g, dtype=torch.float64) * 0.3
    lam = role_prior_precision(curvature, weight, 2.0)

    def log_z(value):
        return -0.5 * value * float((weight**2).sum()) + 250 * math.log(value) - 0.5 * float(torch.log(2.0 * curvature + value).sum())

    grid = np.exp(np.linspace(math.log(lam) - 3, math.log(lam) + 3, 601))
    best = grid[int(np.argmax([log_z(v) for v in grid]))]
    assert abs(math.log(best / lam)) < 0.02
    visual, images, text = _tiny()
    posterior = fit_diagonal_laplace(visual, prefix_tokens(visual, images, 1), text, 10.0, 1)
    block = posterior.blocks[0]
    lam_fc = posterior.prior_precision[0]["fc_weight"]
    assert float(block.fc_weight.max()) <= (1.0 + 1e-5) / lam_fc  # never above the prior variance (float32)
    assert float(block.fc_weight.min()) < 0.99 / lam_fc  # the data shrank some
