"""Shared tensor plumbing of the acquisition kernels: shape checks at the boundary, torch <-> numpy,
row entropies, and the thread pool that runs cache-sized chunks in parallel.

torch is imported inside the functions, so importing this module stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from alkit.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

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


def as_sample_tensor(probs: Any, name: str = "probs") -> "torch.Tensor":
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


def to_numpy(values: "torch.Tensor") -> np.ndarray:
    import torch

    return values.detach().to(torch.float64).cpu().numpy()


def mean_over_samples(tensor: "torch.Tensor") -> "torch.Tensor":
    """Posterior predictive pbar `(N, K)`: the mean over the S samples."""
    return tensor.mean(dim=0)


def row_entropy(probs: "torch.Tensor") -> "torch.Tensor":
    """Entropy -sum p log max(p, LOG_FLOOR) over the last axis in nats (so 0 log 0 = 0).

    Two passes over the elements (clamp+log into one buffer, then a fused dot product):
    `torch.special.entr` and `xlogy` cost ~2-3x a plain vectorised log on the dev machine.
    """
    import torch

    logs = probs.clamp_min(LOG_FLOOR).log_()
    return torch.linalg.vecdot(probs, logs).neg_()
