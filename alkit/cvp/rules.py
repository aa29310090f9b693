"""Propagation rules: (mean, diagonal variance) of a layer's output from those of its input.

Every rule is a pure function over torch tensors; `var=None` means a deterministic input
(zero variance) and lets a rule skip work. Input dimensions are treated as independent
(diagonal Gaussian), weights as independent of the input.

- `linear`: y = W x + b with W_ij ~ N(W_ij, s_ij^2), b_i ~ N(b_i, t_i^2) independent:
    E y_i = sum_j W_ij mu_j + b_i
    Var y_i = sum_j s_ij^2 (mu_j^2 + v_j) + W_ij^2 v_j + t_i^2          (exact for independent x_j)
- `layer_norm`, expectation rule: the normaliser is E[Var_d(x)] = Var_d(mu) + (1 - 1/D) mean(v),
  not Var_d(mu) alone (SUQ's mean-only rule overstates the output variance by the factor
  1 + mean(v) / Var_d(mu)); the centring x_j - mean(x) has variance v_j (1 - 2/D) + sum(v)/D^2.
- `mix_tokens`: attention as a token mixing with weights fixed at their value from the means;
  the mixed variance is (1 - rho) A^2 v + rho (A sqrt(v))^2 for a noise correlation rho across
  tokens (0: independent tokens, SUQ's rule; 1: fully correlated, an upper bound by
  Cauchy-Schwarz). Weight noise is shared by all tokens, so token noise is correlated; see
  `blocks.py` for the value used and its check against Monte Carlo.
- `residual`: variances add (branch and skip treated as uncorrelated).
- `scale`: a deterministic per-channel scale (LayerScale): var * gamma^2.
Activations: `activations.py`.
"""

from __future__ import annotations


def linear(mean, var, weight, bias=None, weight_var=None, bias_var=None):
    """Moments of x @ W^T + b for x ~ N(mean, diag var) and W, b with diagonal Gaussian noise."""
    import torch.nn.functional as F

    out_mean = F.linear(mean, weight, bias)
    out_var = None
    if var is not None:
        out_var = F.linear(var, weight * weight)
    if weight_var is not None:
        second = mean * mean if var is None else mean * mean + var
        term = F.linear(second, weight_var)
        out_var = term if out_var is None else out_var + term
    if bias_var is not None:
        out_var = bias_var.expand_as(out_mean) if out_var is None else out_var + bias_var
    return out_mean, out_var


def layer_norm(mean, var, weight=None, bias=None, eps: float = 1e-5):
    """Moments of LayerNorm over the last axis by the expectation rule (see module docstring)."""
    import torch

    dim = mean.shape[-1]
    centred = mean - mean.mean(-1, keepdim=True)
    spread = (centred * centred).mean(-1, keepdim=True)
    if var is not None:
        spread = spread + (1.0 - 1.0 / dim) * var.mean(-1, keepdim=True)
    inverse = torch.rsqrt(spread + eps)
    out_mean = centred * inverse
    out_var = None
    if var is not None:
        centred_var = var * (1.0 - 2.0 / dim) + var.sum(-1, keepdim=True) / dim**2
        out_var = centred_var * inverse * inverse
    if weight is not None:
        out_mean = out_mean * weight
        out_var = None if out_var is None else out_var * weight * weight
    if bias is not None:
        out_mean = out_mean + bias
    return out_mean, out_var


def mix_tokens(mean, var, weights, correlation: float = 0.0):
    """Moments of `weights @ x` over the token axis: weights `(..., Tq, Tk)`, x `(..., Tk, D)`."""
    import torch

    out_mean = weights @ mean
    if var is None:
        return out_mean, None
    out_var = None
    if correlation < 1.0:
        out_var = (1.0 - correlation) * ((weights * weights) @ var)
    if correlation > 0.0:
        together = weights @ torch.sqrt(var)
        term = correlation * together * together
        out_var = term if out_var is None else out_var + term
    return out_mean, out_var


def residual(mean_a, var_a, mean_b, var_b):
    """Moments of a + b for uncorrelated a and b."""
    if var_a is None:
        return mean_a + mean_b, var_b
    if var_b is None:
        return mean_a + mean_b, var_a
    return mean_a + mean_b, var_a + var_b


def scale(mean, var, gamma):
    """Moments of gamma * x for a deterministic per-channel gamma (LayerScale)."""
    return mean * gamma, None if var is None else var * gamma * gamma
