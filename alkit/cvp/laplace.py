"""Diagonal Laplace posterior over the last k blocks' random weights (see `weights.py`).

Likelihood: BayesVLM's zero-shot contrastive one, logits s cos(g(x), h_k) against the K class
prompts h_k (unit norm, fixed), softmax over the prompts; the MAP is the pretrained model.
Curvature: the diagonal of the generalised Gauss-Newton, summed over images x_i,
  G = sum_i diag(J_i^T (diag(p_i) - p_i p_i^T) J_i),  J_i = d logits_i / d theta,
computed exactly as sum_i sum_k (J_i^T c_ik)^2 with c_ik = sqrt(p_ik) (e_k - p_i) (the columns
of a square root of the softmax Hessian): one forward and K vector-Jacobian products per image
(`torch.func.vjp`, vectorised over k), through the mean-only CVP forward, which is open_clip's
forward (tests/test_cvp_blocks.py); a test compares G with a brute-force per-image, per-logit
autograd loop on the real open_clip modules.

Prior: N(0, 1/lam_r) per role r of each block (value / output / MLP weights and biases), the
pretraining prior that the pretrained weights are the MAP of, as `BayesVLMPosterior.from_factors`
assumes for the projection; lam_r maximises the Laplace evidence with the MAP held fixed,
  log Z(lam) = -lam/2 |theta_r|^2 + (P_r/2) log lam - 1/2 sum_j log(n G_j + lam) + const,
one 1-D search per role (`evidence.maximise_log_scalar`). Separate lam per role because the
roles' weight scales differ (a shared lam would be set by the largest matrix). n (pseudo_data)
weights the unlabelled pool's curvature as BayesVLM's does; the posterior variance is
1 / (n G + lam). With few images most weights keep the prior variance, so the absolute scale
is what the calibration step (`calibration.py`) corrects on held-out labelled images.
"""

from __future__ import annotations

import math
from dataclasses import replace

from alkit.cvp.blocks import propagate_tail, tail_weights
from alkit.cvp.weights import ROLES, BlockVariances, WeightPosterior
from alkit.posterior.evidence import maximise_log_scalar

CLASS_CHUNK = 16  # vector-Jacobian products vectorised at once (memory: CLASS_CHUNK x parameters)


def tail_logits(visual, weights, roles, tokens, class_text, logit_scale: float):
    """Logits `(B, K)` of the deterministic tail with the given role tensors (one dict per block)."""
    import torch

    swapped = tuple(replace(w, roles=r) for w, r in zip(weights, roles))
    embedding = propagate_tail(visual, tokens, None, num_blocks=len(weights), weights=swapped).embedding_mean
    unit = embedding / embedding.norm(dim=-1, keepdim=True)
    return logit_scale * unit @ torch.as_tensor(class_text).to(unit).T


def diagonal_ggn(visual, tokens, class_text, logit_scale: float, num_blocks: int) -> list[dict]:
    """Diagonal GGN of the zero-shot likelihood, per block and role, summed over `tokens (N, T, D)`."""
    import torch
    from torch.func import vjp, vmap

    weights = tail_weights(visual, num_blocks)
    roles = tuple({name: w.roles[name].detach() for name in ROLES} for w in weights)
    total = [{name: torch.zeros_like(t) for name, t in r.items()} for r in roles]
    for i in range(tokens.shape[0]):
        single = tokens[i : i + 1]

        def logits_of(params, single=single):
            return tail_logits(visual, weights, params, single, class_text, logit_scale)[0]

        logits, pull = vjp(logits_of, roles)
        probs = torch.softmax(logits.detach(), dim=-1)
        eye = torch.eye(probs.shape[0], dtype=probs.dtype, device=probs.device)
        cotangents = probs.sqrt()[:, None] * (eye - probs[None, :])  # row k: c_k
        for lo in range(0, cotangents.shape[0], CLASS_CHUNK):
            (grads,) = vmap(pull)(cotangents[lo : lo + CLASS_CHUNK])
            for block_total, block_grads in zip(total, grads):
                for name in ROLES:
                    block_total[name] += (block_grads[name] ** 2).sum(0)
    return total


def role_prior_precision(curvature, weight, pseudo_data: float) -> float:
    """lam maximising -lam/2 |w|^2 + (P/2) log lam - 1/2 sum log(n G + lam)."""
    import numpy as np

    g = pseudo_data * curvature.double().flatten().cpu().numpy()
    sq = float((weight.double() ** 2).sum())
    count = g.size

    def log_evidence(lam: float) -> float:
        return -0.5 * lam * sq + 0.5 * count * math.log(lam) - 0.5 * float(np.log(g + lam).sum())

    start = count / max(sq, 1e-12)
    lam, _, _ = maximise_log_scalar(log_evidence, (1e-6, 1e12), start=start)
    return lam


def fit_diagonal_laplace(visual, tokens, class_text, logit_scale: float, num_blocks: int,
                         pseudo_data: float = 1.0) -> WeightPosterior:
    """Diagonal Laplace over the last `num_blocks` blocks from the images' prefix tokens."""
    curvature = diagonal_ggn(visual, tokens, class_text, logit_scale, num_blocks)
    weights = tail_weights(visual, num_blocks)
    blocks, precisions = [], []
    for block_curvature, block in zip(curvature, weights):
        lams = {name: role_prior_precision(block_curvature[name], block.roles[name], pseudo_data) for name in ROLES}
        variances = {name: 1.0 / (pseudo_data * block_curvature[name] + lams[name]) for name in ROLES}
        blocks.append(BlockVariances(**variances))
        precisions.append(lams)
    return WeightPosterior(tuple(blocks), tuple(precisions), float(pseudo_data))
