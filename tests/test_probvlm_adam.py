"""ProbVLM's hand-written Adam against torch.optim.Adam: same parameters, same losses, same steps."""

from __future__ import annotations

import numpy as np
import pytest

from alkit.posterior.probvlm_train import Adam

STEPS = 25


def _loss(params, data):
    """A non-quadratic loss, so every step sees a different gradient."""
    import torch

    hidden = torch.tanh(data @ params[0] + params[1])  # (n, H)
    return (hidden @ params[2]).pow(2).mean() + 0.1 * params[0].abs().sum()


@pytest.mark.parametrize("learning_rate", [1e-3, 3e-2])
def test_matches_torch_adam_over_several_steps(learning_rate):
    import torch

    generator = torch.Generator().manual_seed(0)
    start = [torch.randn(5, 7, generator=generator), torch.randn(7, generator=generator), torch.randn(7, 2, generator=generator)]
    data = torch.randn(11, 5, generator=generator)
    ours = [t.clone().requires_grad_(True) for t in start]
    reference = [t.clone().requires_grad_(True) for t in start]
    optimiser = Adam(ours, learning_rate)
    torch_optimiser = torch.optim.Adam(reference, lr=learning_rate, foreach=False)
    for _ in range(STEPS):
        _loss(ours, data).backward()
        optimiser.step()
        torch_optimiser.zero_grad()
        _loss(reference, data).backward()
        torch_optimiser.step()
        assert all(t.grad is None for t in ours)  # our step clears the gradients
    for mine, theirs, initial in zip(ours, reference, start):
        assert not torch.equal(mine.detach(), initial)  # the parameters moved
        np.testing.assert_allclose(mine.detach().numpy(), theirs.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_a_tensor_without_gradient_is_left_alone():
    import torch

    used, unused = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    optimiser = Adam([used, unused], 0.1)
    (used * torch.arange(3.0)).sum().backward()
    optimiser.step()
    np.testing.assert_array_equal(unused.detach().numpy(), np.ones(3))
    # First Adam step moves each coordinate with a nonzero gradient by lr * sign(gradient).
    np.testing.assert_allclose(used.detach().numpy(), [1.0, 0.9, 0.9], atol=1e-6)
