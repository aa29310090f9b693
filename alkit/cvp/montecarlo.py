"""Monte Carlo reference for CVP: the real open_clip blocks run with posterior weight draws.

Each draw replaces the random weights of the last k blocks (`weights.sample_block_parameters`,
shared by all images of the batch, as a posterior draw is) and runs the blocks, `ln_post`,
pooling and `visual.proj` through open_clip's own modules (`torch.func.functional_call`), so
the reference shares no code with the propagation rules. Moments are accumulated in float64
(Welford), never storing the draws.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alkit.cvp.weights import WeightPosterior, sample_block_parameters


@dataclass
class RunningMoments:
    """Welford mean / variance over draws of a tensor."""

    count: int = 0
    mean: Any = None
    m2: Any = None

    def add(self, value) -> None:
        value = value.double()
        self.count += 1
        if self.mean is None:
            self.mean, self.m2 = value.clone(), value.new_zeros(value.shape)
            return
        delta = value - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (value - self.mean)

    @property
    def var(self):
        return self.m2 / max(self.count - 1, 1)


@dataclass(frozen=True)
class MonteCarloMoments:
    """Per block (mean, var) of the output tokens, of the embedding, and of logits if asked."""

    blocks: tuple[tuple[Any, Any], ...]
    embedding_mean: Any
    embedding_var: Any
    logit_mean: Any = None
    logit_var: Any = None


def sample_tail(visual, tokens, block_parameters) -> tuple[list, Any]:
    """One forward of the last blocks with the given parameters: (block outputs, embedding)."""
    import torch
    from torch.func import functional_call

    blocks = visual.transformer.resblocks
    tail = blocks[len(blocks) - len(block_parameters) :]
    outputs = []
    x = tokens
    with torch.no_grad():
        for block, params in zip(tail, block_parameters):
            x = functional_call(block, params, (x,))
            outputs.append(x)
        pooled, _ = visual._pool(x)
        embedding = pooled @ visual.proj if visual.proj is not None else pooled
    return outputs, embedding


def monte_carlo_tail(visual, tokens, posterior: WeightPosterior, num_samples: int, seed: int,
                     class_text=None, logit_scale: float | None = None) -> MonteCarloMoments:
    """Moments over `num_samples` weight draws (one generator, `seed`); logits s cos(g, h_k)
    when unit-norm `class_text (K, D)` and `logit_scale` are given."""
    import torch

    generator = torch.Generator(device=tokens.device).manual_seed(seed)
    blocks = visual.transformer.resblocks
    tail = blocks[len(blocks) - posterior.num_blocks :]
    block_stats = [RunningMoments() for _ in tail]
    embedding_stats, logit_stats = RunningMoments(), RunningMoments()
    for _ in range(num_samples):
        params = [sample_block_parameters(b, v, generator) for b, v in zip(tail, posterior.blocks)]
        outputs, embedding = sample_tail(visual, tokens, params)
        for stats, out in zip(block_stats, outputs):
            stats.add(out)
        embedding_stats.add(embedding)
        if class_text is not None:
            unit = embedding / embedding.norm(dim=-1, keepdim=True)
            logit_stats.add(logit_scale * unit @ torch.as_tensor(class_text).to(unit).T)
    return MonteCarloMoments(
        tuple((s.mean, s.var) for s in block_stats), embedding_stats.mean, embedding_stats.var,
        logit_stats.mean, None if class_text is None else logit_stats.var,
    )
