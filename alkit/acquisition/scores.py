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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from alkit.errors import InputError
from alkit.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Joint-table elements (n * K * M * K) EPIG materialises per pool chunk: 4M floats = 16 MB.
EPIG_CHUNK_ELEMENTS = 1 << 22
# Probabilities are clamped to this before a log (float32 underflow gives exact zeros).
LOG_FLOOR = 1e-30


def _as_sample_tensor(probs: Any, name: str = "probs") -> "torch.Tensor":
    """Validate shape once at the boundary and view `probs` as a torch tensor `(S, N, K)`."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(probs)) if isinstance(probs, np.ndarray) else probs
    if not isinstance(tensor, torch.Tensor):
        tensor = torch.as_tensor(np.asarray(probs))
    if not torch.is_floating_point(tensor):
        tensor = tensor.double()
    if tensor.ndim == 2:  # (N, K) deterministic predictive -> (1, N, K)
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3:
        raise InputError(
            f"{name} must have shape (S, N, K) or (N, K), got {tuple(tensor.shape)}; "
            "stack posterior samples on axis 0"
        )
    return tensor


def _to_numpy(values: "torch.Tensor") -> np.ndarray:
    import torch

    return values.detach().to(torch.float64).cpu().numpy()


def _mean_probs(tensor: "torch.Tensor") -> "torch.Tensor":
    """Posterior predictive pbar `(N, K)`: the mean over the S samples."""
    return tensor.mean(dim=0)


def _neg_sum_plogp(probs: "torch.Tensor", dims) -> "torch.Tensor":
    """-sum p log(p + LOG_FLOOR) over `dims` (so 0 log 0 = 0), with three in-place passes:
    on the development machine `torch.special.entr` cost ~3x a plain vectorised log."""
    logs = probs + LOG_FLOOR
    logs.log_()
    logs.mul_(probs)
    return logs.sum(dim=dims).neg_()


def _row_entropy(probs: "torch.Tensor") -> "torch.Tensor":
    """Entropy over the last axis in nats."""
    return _neg_sum_plogp(probs, -1)


def _entropy_of_mean(tensor: "torch.Tensor") -> "torch.Tensor":
    return _row_entropy(_mean_probs(tensor))  # (N,)


def _mean_sample_entropy(tensor: "torch.Tensor") -> "torch.Tensor":
    """mean_k H[p_k(x)] `(N,)`: the expected conditional entropy (aleatoric part)."""
    return _row_entropy(tensor).mean(dim=0)  # (S, N) -> (N,)


def mean_probs(probs) -> np.ndarray:
    """Posterior predictive pbar `(N, K)` as float64 from `(S, N, K)` (or `(N, K)` as is)."""
    return _to_numpy(_mean_probs(_as_sample_tensor(probs)))


def predictive_entropy(probs) -> np.ndarray:
    """H[pbar(x)] `(N,)` in nats, in [0, log K]: total predictive uncertainty."""
    return _to_numpy(_entropy_of_mean(_as_sample_tensor(probs)))


def least_confidence(probs) -> np.ndarray:
    """1 - max_c pbar_c(x) `(N,)`, in [0, 1 - 1/K]."""
    pbar = _mean_probs(_as_sample_tensor(probs))
    return _to_numpy(1.0 - pbar.max(dim=-1).values)


def margin(probs) -> np.ndarray:
    """1 - (pbar_(1) - pbar_(2)) `(N,)`: one minus the gap between the two most probable
    classes, so that higher = more uncertain; in [0, 1]."""
    tensor = _as_sample_tensor(probs)
    if tensor.shape[-1] < 2:
        raise InputError(f"margin needs at least 2 classes, got K={tensor.shape[-1]}; use entropy")
    top_two = _mean_probs(tensor).topk(2, dim=-1).values  # (N, 2)
    return _to_numpy(1.0 - (top_two[:, 0] - top_two[:, 1]))


def _bald_tensor(tensor: "torch.Tensor") -> "torch.Tensor":
    total = _entropy_of_mean(tensor)
    mutual_information = total - _mean_sample_entropy(tensor)
    return mutual_information.clamp(min=0.0).minimum(total)  # round-off can leave [0, H]


def bald(probs) -> np.ndarray:
    """BALD `(N,)`: I(y; theta | x) = H[pbar(x)] - mean_k H[p_k(x)], clamped to
    [0, H[pbar(x)]] (the bounds hold exactly; only round-off can cross them)."""
    return _to_numpy(_bald_tensor(_as_sample_tensor(probs)))


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

    tensor = _as_sample_tensor(probs)
    log_probs = tensor.clamp(min=LOG_FLOOR).log().double()  # (S, N, K)
    centred = log_probs - log_probs.mean(dim=-1, keepdim=True)
    variance = centred.var(dim=0, unbiased=False)  # (N, K)
    return _to_numpy(variance.mean(dim=-1, dtype=torch.float64))


def logit_variance_from_moments(logit_variances) -> np.ndarray:
    """Mean over classes of analytic logit variances `(N, K)` -> `(N,)` (`Posterior.logit_moments`)."""
    values = np.asarray(logit_variances, dtype=np.float64)
    if values.ndim != 2:
        raise InputError(f"logit variances must have shape (N, K), got {values.shape}")
    return values.mean(axis=1)


def epig(probs_pool, probs_target, chunk_size: int | None = None) -> np.ndarray:
    """Expected predictive information gain `(N,)` (Bickford Smith et al., 2023).

    EPIG(x) = mean_j I(y; y*_j | x, x*_j) with the joint predictive
    P_j(c, c') = mean_k p_kc(x) p_kc'(x*_j), so
    EPIG(x) = H[pbar(x)] + mean_j H[pbar(x*_j)] - mean_j H[P_j].
    `probs_pool (S, N, K)` and `probs_target (S, M, K)` must come from the SAME S weight
    samples (otherwise y and y* are independent and EPIG is 0). With shared samples,
    0 <= EPIG <= BALD holds exactly (y - theta - y* is a Markov chain); negative round-off
    is clamped to 0.

    Memory is bounded: the pool is processed in chunks of n inputs, each a single matmul
    `(n*K, S) x (S, M*K)` whose joint tables `(n, K, M, K)` hold at most
    `EPIG_CHUNK_ELEMENTS` numbers unless `chunk_size` says otherwise. Cost O(N S M K^2).
    """
    import torch

    pool = _as_sample_tensor(probs_pool, "probs_pool")
    target = _as_sample_tensor(probs_target, "probs_target")
    num_samples, num_pool, num_classes = pool.shape
    if target.shape[0] != num_samples or target.shape[2] != num_classes:
        raise InputError(
            f"probs_target has shape {tuple(target.shape)} but probs_pool has S={num_samples}, "
            f"K={num_classes}; compute both from the same shared posterior samples"
        )
    num_targets = target.shape[1]
    target = target.to(pool.dtype)
    entropy_pool = _entropy_of_mean(pool)  # (N,)
    mean_entropy_targets = _entropy_of_mean(target).mean()  # scalar
    # (S, M, K) -> (S, M*K), pre-scaled by 1/S so the matmul yields the sample mean.
    target_matrix = target.reshape(num_samples, num_targets * num_classes) / num_samples
    if chunk_size is None:
        chunk_size = max(1, EPIG_CHUNK_ELEMENTS // (num_classes * num_targets * num_classes))
    joint_entropy = torch.empty(num_pool, dtype=pool.dtype)
    for start in range(0, num_pool, chunk_size):
        stop = min(start + chunk_size, num_pool)
        n = stop - start
        pool_rows = pool[:, start:stop, :].permute(1, 2, 0).reshape(n * num_classes, num_samples)
        joint = pool_rows @ target_matrix  # (n*K, M*K) == P_j(c, c') laid out (n, K, M, K)
        per_target = _neg_sum_plogp(joint.view(n, num_classes, num_targets, num_classes), (1, 3))  # (n, M)
        joint_entropy[start:stop] = per_target.mean(dim=1)  # (n,)
    values = (entropy_pool + mean_entropy_targets - joint_entropy).clamp(min=0.0)
    return _to_numpy(values)


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

    def score(self, probs, *, probs_target=None, seed: int = 0) -> np.ndarray:
        """Uniform call: `probs (S, N, K)` (+ `probs_target (S, M, K)` for EPIG) -> `(N,)`.

        `random` draws N numbers from `seed`: call it once for the whole pool (as
        `score_in_chunks` does), not per chunk, or every chunk gets the same sequence.
        """
        if self.function is random_scores:
            num_items = np.shape(probs)[1] if np.ndim(probs) == 3 else np.shape(probs)[0]
            return random_scores(num_items, seed)
        if self.needs_targets:
            if probs_target is None:
                raise InputError(
                    "this scorer needs target probs (S, M, K); mark a target split or pass targets"
                )
            return self.function(probs, probs_target)
        return self.function(probs)


SCORERS: Registry[ScorerSpec] = Registry("scorer")
for _name, _spec in {
    "entropy": ScorerSpec(predictive_entropy, "predictive entropy H[pbar] (total uncertainty)", False, False),
    "least_confidence": ScorerSpec(least_confidence, "1 - max class probability of pbar", False, False),
    "margin": ScorerSpec(margin, "1 - (top1 - top2) of pbar", False, False),
    "bald": ScorerSpec(bald, "mutual information between label and weights (epistemic)", True, False),
    "epig": ScorerSpec(epig, "expected information gain about target-set predictions", True, True),
    "logit_variance": ScorerSpec(logit_variance, "mean across-sample variance of centred logits", True, False),
    "random": ScorerSpec(random_scores, "uniform random scores (baseline)", False, False),
}.items():
    SCORERS.register(_name, _spec, _spec.description)


def get_scorer(name: str) -> ScorerSpec:
    """Look a scorer up by name; unknown names raise `UnknownNameError` listing valid ones."""
    return SCORERS.get(name)
