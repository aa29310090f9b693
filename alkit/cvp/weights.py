"""The diagonal Gaussian weight posterior over the last k blocks, and draws from it.

Each of the last k `ResidualAttentionBlock`s gets independent Gaussians (mean: the model's
weights, the MAP; variance: `BlockVariances`) over the weights and biases of the attention
value projection (rows 2D:3D of `attn.in_proj_weight`), the attention output projection
(`attn.out_proj`) and the MLP (`mlp.c_fc`, `mlp.c_proj`). Query/key weights, LayerNorms and
LayerScales stay at their values: attention weights are then random only through their input,
which CVP takes at its mean. `sample_block_parameters` gives one draw in the module's own
parameter names, for Monte Carlo with `torch.func.functional_call` on the real open_clip block.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

ROLES = ("value_weight", "value_bias", "out_weight", "out_bias", "fc_weight", "fc_bias", "proj_weight", "proj_bias")


@dataclass(frozen=True)
class BlockVariances:
    """Posterior variances of one block's random weights (shapes of the weights they belong to)."""

    value_weight: Any  # (D, D) rows 2D:3D of attn.in_proj_weight
    value_bias: Any  # (D,)
    out_weight: Any  # (D, D) attn.out_proj.weight
    out_bias: Any
    fc_weight: Any  # (M, D) mlp.c_fc.weight
    fc_bias: Any
    proj_weight: Any  # (D, M) mlp.c_proj.weight
    proj_bias: Any

    def scaled(self, factor: float) -> "BlockVariances":
        return BlockVariances(**{f.name: getattr(self, f.name) * factor for f in fields(self)})

    def total(self) -> float:
        return float(sum(getattr(self, f.name).sum() for f in fields(self)))


@dataclass(frozen=True)
class WeightPosterior:
    """Variances for the last k blocks, in forward order; `prior_precision` per role when fitted."""

    blocks: tuple[BlockVariances, ...]
    prior_precision: tuple[dict[str, float], ...] = ()
    pseudo_data: float = 1.0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def scaled(self, factors) -> "WeightPosterior":
        """Every block's variances times its factor (calibration's per-block scales)."""
        if len(factors) != self.num_blocks:
            raise ValueError(f"{len(factors)} scales for {self.num_blocks} blocks")
        return replace(self, blocks=tuple(b.scaled(float(f)) for b, f in zip(self.blocks, factors)))


def block_means(block) -> dict[str, Any]:
    """The posterior means (the block's current weights) by role, detached."""
    dim = block.attn.embed_dim
    return {
        "value_weight": block.attn.in_proj_weight.detach()[2 * dim :],
        "value_bias": block.attn.in_proj_bias.detach()[2 * dim :],
        "out_weight": block.attn.out_proj.weight.detach(),
        "out_bias": block.attn.out_proj.bias.detach(),
        "fc_weight": block.mlp.c_fc.weight.detach(),
        "fc_bias": block.mlp.c_fc.bias.detach(),
        "proj_weight": block.mlp.c_proj.weight.detach(),
        "proj_bias": block.mlp.c_proj.bias.detach(),
    }


def module_parameters(block, roles: dict[str, Any]) -> dict[str, Any]:
    """Role tensors -> the block's parameter names (query/key rows kept), for functional_call."""
    import torch

    dim = block.attn.embed_dim
    query_key = block.attn.in_proj_weight[: 2 * dim]
    query_key_bias = block.attn.in_proj_bias[: 2 * dim]
    return {
        "attn.in_proj_weight": torch.cat([query_key, roles["value_weight"]]),
        "attn.in_proj_bias": torch.cat([query_key_bias, roles["value_bias"]]),
        "attn.out_proj.weight": roles["out_weight"],
        "attn.out_proj.bias": roles["out_bias"],
        "mlp.c_fc.weight": roles["fc_weight"],
        "mlp.c_fc.bias": roles["fc_bias"],
        "mlp.c_proj.weight": roles["proj_weight"],
        "mlp.c_proj.bias": roles["proj_bias"],
    }


def sample_block_parameters(block, variances: BlockVariances, generator) -> dict[str, Any]:
    """One posterior draw of the block's random weights, in its parameter names."""
    import torch

    means = block_means(block)
    draw = {}
    for role in ROLES:
        mean = means[role]
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        draw[role] = mean + noise * torch.sqrt(getattr(variances, role).to(mean.dtype))
    return module_parameters(block, draw)


def isotropic_posterior(visual, num_blocks: int, relative_std: float) -> WeightPosterior:
    """Variances relative_std^2 (w^2 + rms(W)^2) per weight or bias (rms of the layer's weight
    matrix): a fixed, scale-aware posterior for tests and benchmarks (fitted: `laplace.py`)."""
    blocks = []
    for block in visual.transformer.resblocks[-num_blocks:]:
        means = block_means(block)
        variances = {}
        for role, mean in means.items():
            matrix = means[role.replace("_bias", "_weight")]
            rms_sq = float((matrix * matrix).mean())
            variances[role] = relative_std**2 * (mean * mean + rms_sq)
        blocks.append(BlockVariances(**variances))
    return WeightPosterior(tuple(blocks))
