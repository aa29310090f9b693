"""ProbVLM's adapter: a residual MLP `x (D) -> H -> H` with dropout and three heads that give a
generalised Gaussian per dimension (see `probvlm.py` for the model, `gennorm.py` for the law).

Why a functional adapter (a dict of tensors + `adapter_forward`) rather than an nn.Module:
the parameters ARE the saved state (safetensors, no pickle), and every random number (init,
shuffles, dropout masks) comes from one seeded `torch.Generator`, so training is
reproducible without touching torch's global RNG.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from alkit.errors import InputError
from alkit.posterior.gennorm import BetaGrid, gennorm_nll

ALPHA_FLOOR = 1e-5  # keeps the NLL bounded below when mu hits the target exactly
LOG_ALPHA_MAX = 3.0
MEAN_HEAD_SCALE = 0.1  # the mean head starts at a tenth of nn.Linear's init (small, not zero)
INITIAL_ALPHA_FRACTION = 0.1  # alpha starts at this fraction of a unit vector's per-dim spread 1/sqrt(D)
INITIAL_BETA = 2.0  # the shape starts Gaussian ...
BETA_START_RANGE = (0.05, 0.95)  # ... as a sigmoid position kept off the saturated ends
PARAM_NAMES = ("W1", "b1", "W2", "b2", "W_mu", "b_mu", "W_alpha", "b_alpha", "W_beta", "b_beta")


@dataclass(frozen=True)
class ProbVLMSettings:
    """Training and prediction choices for `fit_probvlm`."""

    epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-4
    hidden: int = 256
    dropout: float = 0.1
    input_noise: float = 0.5  # norm of the noise on intra-modal inputs (a denoising target; 0: identity, degenerate)
    cross_weight: float = 1.0  # lam_cross
    holdout_fraction: float = 0.1  # images held out for early stopping
    patience: int = 10  # epochs without a better held-out loss before stopping
    epistemic_passes: int = 10  # M dropout passes for the epistemic variance
    beta_min: float = 0.5
    beta_max: float = 8.0
    beta_grid_size: int = 33  # shape grid of the shared-sample quantile table

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.hidden < 1 or self.epistemic_passes < 2:
            raise InputError(
                f"epochs {self.epochs}, batch size {self.batch_size}, hidden {self.hidden} must be >= 1 and "
                f"epistemic passes {self.epistemic_passes} >= 2"
            )
        if not 0.0 <= self.dropout < 1.0 or self.learning_rate <= 0:
            raise InputError(f"dropout {self.dropout} must lie in [0, 1) and learning rate {self.learning_rate} be > 0")
        if not 0 < self.beta_min < self.beta_max:
            raise InputError(f"need 0 < beta_min < beta_max, got {self.beta_min}, {self.beta_max}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def beta_grid(self) -> BetaGrid:
        return BetaGrid(self.beta_min, self.beta_max, self.beta_grid_size)


def unit_rows(x, name: str = "embeddings"):
    """Rows divided by their norm (torch float32 `(N, D)`); zero rows are an InputError."""
    import torch

    tensor = torch.as_tensor(np.asarray(x, dtype=np.float32))
    norms = tensor.norm(dim=1, keepdim=True)
    if tensor.numel() and bool((norms == 0).any()):
        raise InputError(f"{int((norms == 0).sum())} {name} rows are all zero; remove them before fitting")
    return tensor / norms


def init_adapter(dim: int, settings: ProbVLMSettings, generator) -> dict:
    """Parameters of one adapter (torch float32). The mean head starts small but not zero (a zero
    head gave exactly zero epistemic variance: every dropout mask then maps x to x); alpha and
    beta heads start constant.

    Hidden layers use nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)); alpha starts at
    0.1/sqrt(D) (a tenth of a unit vector's per-dim spread), beta at 2 (Gaussian).
    """
    import torch

    hidden = settings.hidden

    def uniform(shape: tuple[int, ...], fan_in: int):
        return (torch.rand(shape, generator=generator) * 2 - 1) / np.sqrt(fan_in)

    beta_start = (INITIAL_BETA - settings.beta_min) / (settings.beta_max - settings.beta_min)
    beta_start = float(np.clip(beta_start, *BETA_START_RANGE))
    params = {
        "W1": uniform((hidden, dim), dim), "b1": uniform((hidden,), dim),
        "W2": uniform((hidden, hidden), hidden), "b2": uniform((hidden,), hidden),
        "W_mu": MEAN_HEAD_SCALE * uniform((dim, hidden), hidden), "b_mu": torch.zeros(dim),
        "W_alpha": torch.zeros(dim, hidden), "b_alpha": torch.full((dim,), float(np.log(INITIAL_ALPHA_FRACTION / np.sqrt(dim)))),
        "W_beta": torch.zeros(dim, hidden), "b_beta": torch.full((dim,), float(np.log(beta_start / (1 - beta_start)))),
    }
    return {name: value.contiguous() for name, value in params.items()}


def _dropout(hidden, rate: float, masks):
    """Inverted dropout with given keep-masks `(n or 1, H)`, or none."""
    return hidden if masks is None else hidden * masks / (1.0 - rate)


def adapter_forward(params: dict, x, settings: ProbVLMSettings, masks=None):
    """(mu, alpha, beta) `(n, D)` each for unit inputs `x (n, D)`; `masks` = (layer-1, layer-2) keep-masks or None."""
    import torch
    from torch.nn.functional import linear, relu

    first, second = (None, None) if masks is None else masks
    h = _dropout(relu(linear(x, params["W1"], params["b1"])), settings.dropout, first)  # (n, H)
    h = _dropout(relu(linear(h, params["W2"], params["b2"])), settings.dropout, second)  # (n, H)
    mu = x + linear(h, params["W_mu"], params["b_mu"])
    alpha = ALPHA_FLOOR + torch.exp(linear(h, params["W_alpha"], params["b_alpha"]).clamp(max=LOG_ALPHA_MAX))
    beta = settings.beta_min + (settings.beta_max - settings.beta_min) * torch.sigmoid(
        linear(h, params["W_beta"], params["b_beta"])
    )
    return mu, alpha, beta


def dropout_masks(rows: int, settings: ProbVLMSettings, generator):
    """Keep-masks for both hidden layers `(rows, H)` each (float32 0/1)."""
    import torch

    keep = 1.0 - settings.dropout
    return tuple((torch.rand((rows, settings.hidden), generator=generator) < keep).float() for _ in range(2))


def adapter_nll(params: dict, inputs, targets, settings: ProbVLMSettings, masks=None):
    """Mean over items of the per-item NLL summed over dims (scalar tensor)."""
    mu, alpha, beta = adapter_forward(params, inputs, settings, masks)
    return gennorm_nll(targets, mu, alpha, beta).sum(dim=1).mean()
