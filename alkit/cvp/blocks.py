"""CVP through open_clip's `ResidualAttentionBlock`s, `ln_post`, token pooling and `visual.proj`.

One block, exactly as open_clip computes it (open_clip 3.x, batch-first):
  x = x + ls_1(attn(ln_1(x)));  x = x + ls_2(c_proj(act(c_fc(ln_2(x)))))
with attn = out_proj(concat_h softmax(q_h k_h^T / sqrt(d_h)) v_h). CVP (rules in `rules.py`):
- attention weights from the mean of ln_1's output (query/key weights are not random);
- per head, the tokens are mixed BEFORE the random value projection: W_v (A x)_t = (A W_v x)_t
  for the mean, and for the variance this is exact when x is deterministic (the first
  propagated block), whereas projecting first would treat the shared W_v noise as independent
  per token. Noise in x itself (from earlier random blocks) is mixed with `TOKEN_CORRELATION`;
- moment-matched activations (`activations.py`), expectation-rule LayerNorm, variances added
  at the residuals. The last block of a class-token ('tok') tower is propagated for the class
  token only (the other tokens' outputs are never read), which makes it almost free.

`prefix_tokens` runs the deterministic blocks once (the work `alkit embed` can cache);
`propagate_tail` then gives the moments of every propagated block and of the embedding
phi @ visual.proj (unnormalised, the BayesVLM convention).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alkit.cvp import rules
from alkit.cvp.activations import gelu_moments, quick_gelu_moments
from alkit.cvp.weights import BlockVariances, WeightPosterior, block_means

# Correlation across tokens assumed for the noise entering a later block's attention (the
# first propagated block has deterministic input, so this does not matter for k = 1). Weight
# noise is shared by all tokens, so token noise is positively correlated: 0 (SUQ's
# independence) and 1 (an upper bound, Cauchy-Schwarz) bracket the truth. Measured against
# Monte Carlo on the tiny CLIP, k = 3, relative weight std 0.1 (tests/test_cvp_blocks.py):
# total variance of the last block / embedding 0.97 / 0.98 of Monte Carlo with 0, 1.11 / 1.12
# with 1, 1.04 / 1.05 with the midpoint 0.5, used here (on ViT-B-32 random init, k = 2, the
# choice moves the embedding variance by < 5%); calibration's per-block scales absorb the rest.
TOKEN_CORRELATION = 0.5


@dataclass(frozen=True)
class BlockWeights:
    """The mean weights of one block by role (a pure value: `laplace.py` swaps tensors in)."""

    num_heads: int
    ln_1: tuple[Any, Any, float]
    query_weight: Any
    query_bias: Any
    key_weight: Any
    key_bias: Any
    ls_1: Any  # LayerScale gamma or None
    ln_2: tuple[Any, Any, float]
    activation: str  # "gelu" | "quick_gelu"
    ls_2: Any
    roles: dict[str, Any]  # the random weights' means (`weights.ROLES`)


def _activation_name(module) -> str:
    import torch.nn as nn

    if isinstance(module, nn.GELU):
        return "gelu"  # approximate="tanh" differs from erf-GELU by < 1e-3; treated as exact
    if type(module).__name__ == "QuickGELU":
        return "quick_gelu"
    raise ValueError(f"CVP has no moment rule for activation {type(module).__name__}; supported: GELU, QuickGELU")


def _layer_scale(module):
    return module.gamma.detach() if hasattr(module, "gamma") else None


def block_weights(block) -> BlockWeights:
    """Read one open_clip `ResidualAttentionBlock` (batch-first, self-attention)."""
    attn = block.attn
    if not getattr(attn, "batch_first", False) or not attn._qkv_same_embed_dim or hasattr(block, "ln_1_kv"):
        raise ValueError("CVP supports batch-first self-attention blocks with a packed in_proj (open_clip ViTs)")
    dim = attn.embed_dim
    weight, bias = attn.in_proj_weight.detach(), attn.in_proj_bias.detach()
    return BlockWeights(
        num_heads=attn.num_heads,
        ln_1=(block.ln_1.weight.detach(), block.ln_1.bias.detach(), block.ln_1.eps),
        query_weight=weight[:dim], query_bias=bias[:dim],
        key_weight=weight[dim : 2 * dim], key_bias=bias[dim : 2 * dim],
        ls_1=_layer_scale(block.ls_1),
        ln_2=(block.ln_2.weight.detach(), block.ln_2.bias.detach(), block.ln_2.eps),
        activation=_activation_name(block.mlp.gelu),
        ls_2=_layer_scale(block.ls_2),
        roles=block_means(block),
    )


def _variance(variances: BlockVariances | None, role: str):
    return None if variances is None else getattr(variances, role)


def attention(weights: BlockWeights, mean, var, variances: BlockVariances | None, class_token_only: bool,
              correlation: float = TOKEN_CORRELATION):
    """Moments of attn(x) for x = ln_1's output `(B, T, D)`; `(B, 1, D)` when class_token_only."""
    import torch

    batch, tokens, dim = mean.shape
    heads = weights.num_heads
    head_dim = dim // heads
    queries = mean[:, :1] if class_token_only else mean
    q = torch.nn.functional.linear(queries, weights.query_weight, weights.query_bias)
    k = torch.nn.functional.linear(mean, weights.key_weight, weights.key_bias)
    q = q.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, H, Tq, d_h)
    k = k.view(batch, tokens, heads, head_dim).transpose(1, 2)  # (B, H, T, d_h)
    mixing = torch.softmax((q @ k.transpose(-1, -2)) / head_dim**0.5, dim=-1)  # (B, H, Tq, T)
    mixed_mean, mixed_var = rules.mix_tokens(
        mean.unsqueeze(1), None if var is None else var.unsqueeze(1), mixing, correlation
    )  # (B, H, Tq, D): head h's mixture of the whole input vectors
    roles = weights.roles
    means, variances_out = [], []
    for h in range(heads):
        rows = slice(h * head_dim, (h + 1) * head_dim)
        wv = None if variances is None else variances.value_weight[rows]
        bv = None if variances is None else variances.value_bias[rows]
        m, v = rules.linear(
            mixed_mean[:, h], None if mixed_var is None else mixed_var[:, h],
            roles["value_weight"][rows], roles["value_bias"][rows], wv, bv,
        )
        means.append(m)
        variances_out.append(v)
    head_mean = torch.cat(means, dim=-1)  # (B, Tq, D)
    head_var = None if variances_out[0] is None else torch.cat(variances_out, dim=-1)
    return rules.linear(head_mean, head_var, roles["out_weight"], roles["out_bias"],
                        _variance(variances, "out_weight"), _variance(variances, "out_bias"))


def _activation(name: str, mean, var):
    import torch

    if var is None:
        if name == "gelu":
            return torch.nn.functional.gelu(mean), None
        return mean * torch.sigmoid(1.702 * mean), None
    return gelu_moments(mean, var) if name == "gelu" else quick_gelu_moments(mean, var)


def mlp(weights: BlockWeights, mean, var, variances: BlockVariances | None):
    """Moments of c_proj(act(c_fc(x))) for x = ln_2's output."""
    roles = weights.roles
    mean, var = rules.linear(mean, var, roles["fc_weight"], roles["fc_bias"],
                             _variance(variances, "fc_weight"), _variance(variances, "fc_bias"))
    mean, var = _activation(weights.activation, mean, var)
    return rules.linear(mean, var, roles["proj_weight"], roles["proj_bias"],
                        _variance(variances, "proj_weight"), _variance(variances, "proj_bias"))


def _layer_scaled(gamma, mean, var):
    return (mean, var) if gamma is None else rules.scale(mean, var, gamma)


def propagate_block(weights: BlockWeights, mean, var, variances: BlockVariances | None,
                    class_token_only: bool = False, correlation: float = TOKEN_CORRELATION):
    """Moments of one block's output tokens `(B, T, D)` (`(B, 1, D)`: class token only)."""
    ln_mean, ln_var = rules.layer_norm(mean, var, *weights.ln_1)
    attn_mean, attn_var = attention(weights, ln_mean, ln_var, variances, class_token_only, correlation)
    attn_mean, attn_var = _layer_scaled(weights.ls_1, attn_mean, attn_var)
    if class_token_only:
        mean, var = mean[:, :1], None if var is None else var[:, :1]
    mean, var = rules.residual(mean, var, attn_mean, attn_var)
    ln_mean, ln_var = rules.layer_norm(mean, var, *weights.ln_2)
    mlp_mean, mlp_var = mlp(weights, ln_mean, ln_var, variances)
    mlp_mean, mlp_var = _layer_scaled(weights.ls_2, mlp_mean, mlp_var)
    return rules.residual(mean, var, mlp_mean, mlp_var)


@dataclass(frozen=True)
class TailMoments:
    """Per propagated block (mean, var) of its output tokens; of the pooled feature phi `(B, d)`
    after ln_post (diagonal, what `visual.proj` reads); of the embedding phi @ proj `(B, D)`
    (its diagonal: the full covariance is proj^T diag(pooled_var) proj, see `predictive.py`)."""

    blocks: tuple[tuple[Any, Any], ...]
    pooled_mean: Any
    pooled_var: Any
    embedding_mean: Any
    embedding_var: Any


def check_vision_tower(visual) -> None:
    """CVP's pooling path: class-token pooling after ln_post, no attentional pooler."""
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", None) != "tok":
        raise ValueError("CVP supports open_clip ViTs with class-token pooling ('tok') and no attentional pooler")


def prefix_tokens(visual, images, num_blocks: int):
    """Tokens `(B, T, D)` entering the last `num_blocks` blocks (deterministic; cacheable)."""
    import torch

    check_vision_tower(visual)
    blocks = visual.transformer.resblocks
    if not 1 <= num_blocks <= len(blocks):
        raise ValueError(f"num_blocks must lie in [1, {len(blocks)}]; got {num_blocks}")
    with torch.no_grad():
        x = visual._embeds(images)
        for block in blocks[: len(blocks) - num_blocks]:
            x = block(x)
    return x


def tail_weights(visual, num_blocks: int) -> tuple[BlockWeights, ...]:
    return tuple(block_weights(b) for b in visual.transformer.resblocks[len(visual.transformer.resblocks) - num_blocks :])


def propagate_tail(visual, tokens, posterior: WeightPosterior | None, num_blocks: int | None = None,
                   weights: tuple[BlockWeights, ...] | None = None, correlation: float = TOKEN_CORRELATION) -> TailMoments:
    """CVP of `tokens` (from `prefix_tokens`) through the last blocks, ln_post and visual.proj.

    `posterior=None` propagates means only (the deterministic forward); `weights` may be
    given to reuse `tail_weights` across calls or to substitute tensors (`laplace.py`)."""
    check_vision_tower(visual)
    count = posterior.num_blocks if posterior is not None else num_blocks
    weights = tail_weights(visual, count) if weights is None else weights
    mean, var = tokens, None
    moments = []
    for i, block in enumerate(weights):
        variances = None if posterior is None else posterior.blocks[i]
        mean, var = propagate_block(block, mean, var, variances, i == len(weights) - 1, correlation)
        moments.append((mean, var))
    ln = visual.ln_post
    pooled_mean, pooled_var = rules.layer_norm(
        mean[:, 0], None if var is None else var[:, 0], ln.weight.detach(), ln.bias.detach(), ln.eps
    )
    if visual.proj is None:
        return TailMoments(tuple(moments), pooled_mean, pooled_var, pooled_mean, pooled_var)
    emb_mean, emb_var = rules.linear(pooled_mean, pooled_var, visual.proj.detach().T)
    return TailMoments(tuple(moments), pooled_mean, pooled_var, emb_mean, emb_var)
