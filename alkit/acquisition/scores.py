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

# Joint-table elements (n * K * m * K) EPIG materialises per block (n pool items x m targets):
# 1M floats = 4 MB, so the matmul output, its log and the dot product stay in cache.
EPIG_CHUNK_ELEMENTS = 1 << 20
# Logit elements (n * S * K) the logits fast path processes per block: 512k floats = 2 MB per
# buffer (two buffers live at once), sized for the 2-core dev machine's caches.
LOGIT_BLOCK_ELEMENTS = 1 << 19
# Probabilities are clamped to this before a log (float32 underflow gives exact zeros).
LOG_FLOOR = 1e-30


def parallel_for(function: Callable[[int], None], starts, workers: int | None = None) -> None:
    """Run `function(start)` for every start on `workers` Python threads (default: torch's
    thread count), with torch's intra-op threading set to 1 meanwhile and restored after.

    torch releases the GIL inside its kernels, so independent chunks run truly in parallel.
    Chunks go to whichever thread is free, so a core taken by another process only slows its
    own thread; intra-op (OpenMP) threading on small cache-sized chunks instead synchronises
    every op across both cores, which on the shared 2-core dev machine made the fast path up
    to 6x slower in wall time. `function` must write disjoint outputs.
    """
    import torch

    starts = list(starts)
    workers = torch.get_num_threads() if workers is None else workers
    if workers <= 1 or len(starts) <= 1:
        for start in starts:
            function(start)
        return
    from concurrent.futures import ThreadPoolExecutor

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(workers, len(starts))) as pool:
            for _ in pool.map(function, starts):
                pass
    finally:
        torch.set_num_threads(previous)


def _as_sample_tensor(probs: Any, name: str = "probs") -> "torch.Tensor":
    """Validate shape once at the boundary and view `probs` as a torch tensor `(S, N, K)`."""
    import torch

    if isinstance(probs, np.ndarray):  # strided views (e.g. (n, S, K) memory seen as (S, n, K)) pass without a copy
        positive = all(stride > 0 and stride % probs.itemsize == 0 for stride in probs.strides)
        tensor = torch.from_numpy(probs if positive else np.ascontiguousarray(probs))
    else:
        tensor = probs
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


def _row_entropy(probs: "torch.Tensor") -> "torch.Tensor":
    """Entropy -sum p log max(p, LOG_FLOOR) over the last axis in nats (so 0 log 0 = 0).

    Two passes over the elements (clamp+log into one buffer, then a fused dot product):
    `torch.special.entr` and `xlogy` cost ~2-3x a plain vectorised log on the dev machine.
    """
    import torch

    logs = probs.clamp_min(LOG_FLOOR).log_()
    return torch.linalg.vecdot(probs, logs).neg_()


def _entropy_of_mean(tensor: "torch.Tensor") -> "torch.Tensor":
    return _row_entropy(_mean_probs(tensor))  # (N,)


def _mean_sample_entropy(tensor: "torch.Tensor") -> "torch.Tensor":
    """mean_k H[p_k(x)] `(N,)`: the expected conditional entropy (aleatoric part)."""
    return _row_entropy(tensor).mean(dim=0)  # (S, N) -> (N,)


def _logit_summaries(logits: "torch.Tensor", sample_entropy: bool = True):
    """(pbar `(N, K)`, mean_k H[p_k] `(N,)` or None) from sampled logits `(S, N, K)`.

    The logits fast path: per block of n inputs (`LOGIT_BLOCK_ELEMENTS`), with z shifted by
    its per-sample max, E = exp(z), Z = sum_c E_c and
      H[p_k] = log Z - sum_c E_c z_c / Z      (no per-element log of p),
      pbar   = (1/S) sum_k E_k / Z_k          (one batched matmul, no normalised probs).
    Element passes: max, subtract, exp, sum, dot, matmul -- one transcendental per element
    against two (softmax's exp + the scorer's log) on the probability path. Any layout of
    the logits works; `(N, S, K)` memory seen as `(S, N, K)` (what `sample_logits` returns)
    is read without a copy.
    """
    import torch

    num_samples, num_items, num_classes = logits.shape
    work = logits.permute(1, 0, 2)  # (N, S, K) view
    dtype = logits.dtype
    pbar = torch.empty(num_items, num_classes, dtype=dtype)
    conditional = torch.empty(num_items, dtype=dtype) if sample_entropy else None
    block = max(1, LOGIT_BLOCK_ELEMENTS // (num_samples * num_classes))
    shifted = exps = None
    for start in range(0, num_items, block):
        stop = min(start + block, num_items)
        n = stop - start
        z = work[start:stop]
        if shifted is None or shifted.shape[0] != n:
            shifted = torch.empty((n, num_samples, num_classes), dtype=dtype)
            exps = torch.empty_like(shifted)
        torch.sub(z, z.amax(dim=-1, keepdim=True), out=shifted)  # <= 0: exp cannot overflow, Z >= 1
        torch.exp(shifted, out=exps)
        partition = exps.sum(dim=-1)  # (n, S)
        inverse = partition.reciprocal()
        if num_samples >= 8:  # sum_k E_k / Z_k as n small matmuls: one read, no temporary
            pbar[start:stop] = torch.bmm(inverse.unsqueeze(1), exps).squeeze(1)
        else:  # bmm's per-matrix overhead dominates for tiny S
            pbar[start:stop] = exps.mul_(inverse.unsqueeze(-1)).sum(dim=1)
            exps.mul_(partition.unsqueeze(-1))  # restore E for the dot product below
        if conditional is not None:
            entropies = partition.log_().sub_(torch.linalg.vecdot(exps, shifted).mul_(inverse))  # (n, S)
            conditional[start:stop] = entropies.mean(dim=-1)
    pbar.div_(num_samples)
    return pbar, conditional


def mean_probs_from_logits(logits) -> np.ndarray:
    """Posterior predictive pbar `(N, K)` as float64 from sampled logits `(S, N, K)`."""
    return _to_numpy(_logit_summaries(_as_sample_tensor(logits, "logits"), sample_entropy=False)[0])


def entropy_from_logits(logits) -> np.ndarray:
    """H[pbar(x)] `(N,)` from sampled logits `(S, N, K)` (a deterministic `(N, K)` is S = 1)."""
    pbar, _ = _logit_summaries(_as_sample_tensor(logits, "logits"), sample_entropy=False)
    return _to_numpy(_row_entropy(pbar))


def bald_from_logits(logits) -> np.ndarray:
    """BALD `(N,)` from sampled logits `(S, N, K)`: same value as `bald(softmax(logits))` up to
    round-off (~1e-6 nats in float32), ~4x cheaper (see `_logit_summaries`)."""
    pbar, conditional = _logit_summaries(_as_sample_tensor(logits, "logits"))
    total = _row_entropy(pbar)
    return _to_numpy((total - conditional).clamp(min=0.0).minimum(total))


def least_confidence_from_logits(logits) -> np.ndarray:
    pbar, _ = _logit_summaries(_as_sample_tensor(logits, "logits"), sample_entropy=False)
    return _to_numpy(1.0 - pbar.max(dim=-1).values)


def margin_from_logits(logits) -> np.ndarray:
    tensor = _as_sample_tensor(logits, "logits")
    if tensor.shape[-1] < 2:
        raise InputError(f"margin needs at least 2 classes, got K={tensor.shape[-1]}; use entropy")
    top_two = _logit_summaries(tensor, sample_entropy=False)[0].topk(2, dim=-1).values
    return _to_numpy(1.0 - (top_two[:, 0] - top_two[:, 1]))


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

    pool = _as_sample_tensor(probs_pool, "probs_pool")
    target = _as_sample_tensor(probs_target, "probs_target")
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
    logits_function: Callable[..., np.ndarray] | None = None  # same score from sampled logits (S, N, K)
    moments_function: Callable[..., np.ndarray] | None = None  # score from logit (mean, variance) (N, K) each

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
    "random": ScorerSpec(random_scores, "uniform random scores (baseline)", False, False),
}.items():
    SCORERS.register(_name, _spec, _spec.description)


def _register_analytic_bald() -> None:
    from alkit.acquisition.analytic_bald import analytic_bald, analytic_bald_from_probs

    spec = ScorerSpec(
        analytic_bald_from_probs, "BALD without sampling, from logit means and variances (see analytic_bald.py)",
        False, False, moments_function=analytic_bald,
    )
    SCORERS.register("bald_analytic", spec, spec.description)


_register_analytic_bald()


def get_scorer(name: str) -> ScorerSpec:
    """Look a scorer up by name; unknown names raise `UnknownNameError` listing valid ones."""
    return SCORERS.get(name)
