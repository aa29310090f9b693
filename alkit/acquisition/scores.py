"""Single-point acquisition scores: class probabilities `(S, N, K)` -> scores `(N,)`.

Higher score = more informative. Every scorer takes the probabilities of S posterior samples
that were drawn once and shared across all inputs (see `alkit.posterior.base`); a
deterministic predictive `(N, K)` is accepted where a scorer does not need samples and is
treated as S = 1.

Kernels run in torch (imported inside the functions, so `import alkit.acquisition` stays
light): on the 2-core development machine torch's exp/log/entr are ~2.5-3x faster than
numpy's (0.57 vs 1.41 ns per float32 exp) and numpy arrays pass in without a copy. Inputs
keep their dtype (float32 for speed, float64 in tests): torch reduces with cascade
summation, so a float32 entropy over K = 100 classes is off by ~1e-6 nats, while casting
every `(S, n, K)` element to float64 made BALD ~5x slower. Outputs are numpy float64 `(N,)`.
The same scores from sampled logits (the fast path) live in `alkit.acquisition.logits`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from alkit.acquisition.analytic_bald import analytic_bald, analytic_bald_from_probs
from alkit.acquisition.logits import (
    bald_from_logits,
    entropy_from_logits,
    least_confidence_from_logits,
    margin_from_logits,
)
from alkit.acquisition.tensors import LOG_FLOOR, as_sample_tensor, mean_over_samples, parallel_for, row_entropy, to_numpy
from alkit.errors import InputError
from alkit.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Joint-table elements (n * K * m * K) EPIG materialises per block (n pool items x m targets):
# 1M floats = 4 MB, so the matmul output, its log and the dot product stay in cache.
EPIG_CHUNK_ELEMENTS = 1 << 20


def _entropy_of_mean(tensor: "torch.Tensor") -> "torch.Tensor":
    return row_entropy(mean_over_samples(tensor))  # (N,)


def _mean_sample_entropy(tensor: "torch.Tensor") -> "torch.Tensor":
    """mean_k H[p_k(x)] `(N,)`: the expected conditional entropy (aleatoric part)."""
    return row_entropy(tensor).mean(dim=0)  # (S, N) -> (N,)


def mean_probs(probs) -> np.ndarray:
    """Posterior predictive pbar `(N, K)` as float64 from `(S, N, K)` (or `(N, K)` as is)."""
    return to_numpy(mean_over_samples(as_sample_tensor(probs)))


def predictive_entropy(probs) -> np.ndarray:
    """H[pbar(x)] `(N,)` in nats, in [0, log K]: total predictive uncertainty."""
    return to_numpy(_entropy_of_mean(as_sample_tensor(probs)))


def least_confidence(probs) -> np.ndarray:
    """1 - max_c pbar_c(x) `(N,)`, in [0, 1 - 1/K]."""
    pbar = mean_over_samples(as_sample_tensor(probs))
    return to_numpy(1.0 - pbar.max(dim=-1).values)


def margin(probs) -> np.ndarray:
    """1 - (pbar_(1) - pbar_(2)) `(N,)`: one minus the gap between the two most probable
    classes, so that higher = more uncertain; in [0, 1]."""
    tensor = as_sample_tensor(probs)
    if tensor.shape[-1] < 2:
        raise InputError(f"margin needs at least 2 classes, got K={tensor.shape[-1]}; use entropy")
    top_two = mean_over_samples(tensor).topk(2, dim=-1).values  # (N, 2)
    return to_numpy(1.0 - (top_two[:, 0] - top_two[:, 1]))


def _bald_tensor(tensor: "torch.Tensor") -> "torch.Tensor":
    total = _entropy_of_mean(tensor)
    mutual_information = total - _mean_sample_entropy(tensor)
    return mutual_information.clamp(min=0.0).minimum(total)  # round-off can leave [0, H]


def bald(probs) -> np.ndarray:
    """BALD `(N,)`: I(y; theta | x) = H[pbar(x)] - mean_k H[p_k(x)], clamped to
    [0, H[pbar(x)]] (the bounds hold exactly; only round-off can cross them)."""
    return to_numpy(_bald_tensor(as_sample_tensor(probs)))


def logit_variance(probs) -> np.ndarray:
    """Mean over classes of the across-sample variance of the logits `(N,)`.

    Logits are recovered from the sampled probabilities as log p_k, centred over classes
    per sample (log-softmax differs from the logits only by a per-sample constant, which the
    centring removes), so the result equals the variance of the class-centred logits
    z_kc - mean_c' z_kc'. Probabilities are clamped to `LOG_FLOOR` before the log, so
    classes whose probability underflows contribute at most the floor's log. For posteriors
    with analytic logit moments use `logit_variance_from_moments`.
    """
    import torch

    tensor = as_sample_tensor(probs)
    log_probs = tensor.clamp(min=LOG_FLOOR).log().double()  # (S, N, K)
    centred = log_probs - log_probs.mean(dim=-1, keepdim=True)
    variance = centred.var(dim=0, unbiased=False)  # (N, K)
    return to_numpy(variance.mean(dim=-1, dtype=torch.float64))


def logit_variance_from_moments(logit_variances) -> np.ndarray:
    """Mean over classes of analytic logit variances `(N, K)` -> `(N,)` (`Posterior.logit_moments`)."""
    values = np.asarray(logit_variances, dtype=np.float64)
    if values.ndim != 2:
        raise InputError(f"logit variances must have shape (N, K), got {values.shape}")
    return values.mean(axis=1)


def epig(probs_pool, probs_target, chunk_size: int | None = None, workers: int | None = None) -> np.ndarray:
    """Expected predictive information gain `(N,)` (Bickford Smith et al., 2023).

    EPIG(x) = mean_j I(y; y*_j | x, x*_j) with the joint predictive
    P_j(c, c') = mean_k p_kc(x) p_kc'(x*_j), so
    EPIG(x) = H[pbar(x)] + mean_j H[pbar(x*_j)] - mean_j H[P_j].
    `probs_pool (S, N, K)` and `probs_target (S, M, K)` must come from the SAME S weight
    samples (otherwise y and y* are independent and EPIG is 0). With shared samples,
    0 <= EPIG <= BALD holds exactly (y - theta - y* is a Markov chain); negative round-off
    is clamped to 0.

    Memory is bounded: the pool is processed in chunks of n inputs (`chunk_size`) and the
    targets in blocks of m, each block one matmul `(n*K, S) x (S, m*K)` whose joint tables
    `(n, K, m, K)` hold about `EPIG_CHUNK_ELEMENTS` numbers (cache-sized), followed by one log
    pass and one fused dot product; chunks run on `workers` threads (`parallel_for`). Cost O(N S M K^2): about 3 ms of one dev-machine core per
    pool item at S = 64, M = 100, K = 100, two thirds of it the matmul.
    """
    import torch

    pool = as_sample_tensor(probs_pool, "probs_pool")
    target = as_sample_tensor(probs_target, "probs_target")
    num_samples, num_pool, num_classes = pool.shape
    if target.shape[0] != num_samples or target.shape[2] != num_classes:
        raise InputError(
            f"probs_target has shape {tuple(target.shape)} but probs_pool has S={num_samples}, "
            f"K={num_classes}; compute both from the same shared posterior samples"
        )
    num_targets = target.shape[1]
    dtype = pool.dtype
    target = target.to(dtype)
    entropy_pool = _entropy_of_mean(pool)  # (N,)
    mean_entropy_targets = _entropy_of_mean(target).mean()  # scalar
    # Both sides get + eps (eps^2 = 100 x the smallest normal float), so every joint entry is
    # >= eps^2 > 0: the log needs no clamp pass and no denormals slow the matmul. The change
    # to H[P_j] is ~K^2 eps |log eps^2| (~1e-12 nats in float32, ~1e-148 in float64).
    eps = 10.0 * float(torch.finfo(dtype).tiny) ** 0.5
    # (S, M, K) -> (S, M*K), pre-scaled by 1/S so the matmul yields the sample mean.
    target_matrix = ((target + eps) / num_samples).reshape(num_samples, num_targets * num_classes)
    if chunk_size is None:
        chunk_size = max(1, EPIG_CHUNK_ELEMENTS // (num_classes * num_targets * num_classes))
    target_block = min(num_targets, max(1, EPIG_CHUNK_ELEMENTS // (chunk_size * num_classes * num_classes)))
    joint_entropy = torch.empty(num_pool, dtype=dtype)

    def joint_entropy_of_chunk(start: int) -> None:
        stop = min(start + chunk_size, num_pool)
        n = stop - start
        pool_rows = torch.empty((n, num_classes, num_samples), dtype=dtype)
        torch.add(pool[:, start:stop, :].permute(1, 2, 0), eps, out=pool_rows)
        pool_rows = pool_rows.view(n * num_classes, num_samples)
        total = torch.zeros(n, dtype=dtype)
        for first in range(0, num_targets, target_block):
            last = min(first + target_block, num_targets)
            # (n*K, m*K) == P_j(c, c') laid out (n, K, m, K) for targets j in [first, last)
            joint = pool_rows @ target_matrix[:, first * num_classes : last * num_classes]
            logs = torch.log(joint)
            total += torch.linalg.vecdot(joint.view(n, -1), logs.view(n, -1))  # sum_{c, j, c'} P log P
        joint_entropy[start:stop] = total.div_(-num_targets)  # mean_j H[P_j]  (n,)

    parallel_for(joint_entropy_of_chunk, range(0, num_pool, chunk_size), workers=workers)
    values = (entropy_pool + mean_entropy_targets - joint_entropy).clamp(min=0.0)
    return to_numpy(values)


def random_scores(num_items: int, seed: int) -> np.ndarray:
    """Uniform [0, 1) scores `(N,)` from a seeded generator: the random-acquisition baseline."""
    if num_items < 0:
        raise InputError(f"num_items must be >= 0, got {num_items}")
    return np.random.default_rng(seed).random(num_items)


@dataclass(frozen=True)
class ScorerSpec:
    """A registered scorer and what it needs from the caller."""

    function: Callable[..., np.ndarray]
    description: str
    needs_samples: bool  # True: needs S > 1 shared posterior samples to be meaningful
    needs_targets: bool  # True: needs target probs (S, M, K) from the same samples
    logits_function: Callable[..., np.ndarray] | None = None  # same score from sampled logits (S, N, K)
    moments_function: Callable[..., np.ndarray] | None = None  # score from logit (mean, variance) (N, K) each
    uses_posterior: bool = True  # False: `function(num_items, seed)` scores without any model (random)

    def score(self, probs, *, probs_target=None, seed: int = 0) -> np.ndarray:
        """Uniform call: `probs (S, N, K)` (+ `probs_target (S, M, K)` for EPIG) -> `(N,)`.

        A scorer without a posterior (`random`) draws N numbers from `seed`: call it once for
        the whole pool (as `score_in_chunks` does), not per chunk, or every chunk gets the same
        sequence.
        """
        if not self.uses_posterior:
            num_items = np.shape(probs)[1] if np.ndim(probs) == 3 else np.shape(probs)[0]
            return self.function(num_items, seed)
        if self.needs_targets:
            if probs_target is None:
                raise InputError(
                    "this scorer needs target probs (S, M, K); mark a target split or pass targets"
                )
            return self.function(probs, probs_target)
        return self.function(probs)


SCORERS: Registry[ScorerSpec] = Registry("scorer")
for _name, _spec in {
    "entropy": ScorerSpec(
        predictive_entropy, "predictive entropy H[pbar] (total uncertainty)", False, False, entropy_from_logits
    ),
    "least_confidence": ScorerSpec(
        least_confidence, "1 - max class probability of pbar", False, False, least_confidence_from_logits
    ),
    "margin": ScorerSpec(margin, "1 - (top1 - top2) of pbar", False, False, margin_from_logits),
    "bald": ScorerSpec(
        bald, "mutual information between label and weights (epistemic)", True, False, bald_from_logits
    ),
    "epig": ScorerSpec(epig, "expected information gain about target-set predictions", True, True),
    "logit_variance": ScorerSpec(logit_variance, "mean across-sample variance of centred logits", True, False),
    "bald_analytic": ScorerSpec(
        analytic_bald_from_probs, "BALD without sampling, from logit means and variances (see analytic_bald.py)",
        False, False, moments_function=analytic_bald,
    ),
    "random": ScorerSpec(random_scores, "uniform random scores (baseline)", False, False, uses_posterior=False),
}.items():
    SCORERS.register(_name, _spec, _spec.description)


def get_scorer(name: str) -> ScorerSpec:
    """Look a scorer up by name; unknown names raise `UnknownNameError` listing valid ones."""
    return SCORERS.get(name)
