"""Greedy BatchBALD (Kirsch et al., 2019): pick the batch that maximises the joint mutual
information I(y_1..y_b; theta) one item at a time.

With the S shared posterior samples as an empirical posterior,
    I(y_A; theta) = H[y_A] - sum_{j in A} mean_k H[p_k(x_j)],
    p(y_A = c) = mean_k prod_{j in A} p_k(c_j | x_j).
At each greedy step the candidate i maximising I(y_{A+i}; theta) joins A. The joint entropy
H[y_{A+i}] is exact (all K^|A| configurations of the chosen items enumerated, one
`(K^|A|, S) x (S, N*K)` product) while K^|A| <= `num_configs_exact_limit`; beyond that it is
estimated from M configurations of y_A sampled from the predictive:
    H[y_A, y_i] = -E_{y_A} sum_c p(c | y_A) log p(y_A, c).
The first pick equals top-1 BALD. Cost grows as N * K * min(K^|A|, M) * S per step: meant
for small pools (the published 300k-pool run cost 31x BALD's time).
Numpy float64 throughout (small inputs; accuracy matters more than speed here).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from alkit.acquisition.checks import check_budget
from alkit.errors import InputError

# Floats per (configs, candidates, K) block; 4M float64 = 32 MB.
_BLOCK_ELEMENTS = 1 << 22
SHORTLIST = 256
"""As a batch mode, BatchBALD chooses among the top max(B, SHORTLIST) items by the strategy's
single-point score: its cost grows with N * K^|A| per step, so the full pool is out of reach."""


def _entr(values: np.ndarray) -> np.ndarray:
    """-x log x elementwise with 0 log 0 = 0."""
    out = np.zeros_like(values)
    positive = values > 0
    out[positive] = -values[positive] * np.log(values[positive])
    return out


def _conditional_entropies(probs: np.ndarray) -> np.ndarray:
    """mean_k H[p_k(x_i)] `(N,)`."""
    return _entr(probs).sum(axis=2).mean(axis=0)


def _exact_joint_entropies(config_probs: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """H[y_A, y_i] for every candidate i `(N,)` by enumeration.

    `config_probs (S, C)`: prod_{j in A} p_k(c_j) for all C = K^|A| configurations.
    """
    num_samples, num_items, num_classes = probs.shape
    num_configs = config_probs.shape[1]
    chunk = max(1, _BLOCK_ELEMENTS // (num_configs * num_classes))
    entropies = np.empty(num_items)
    for start in range(0, num_items, chunk):
        block = probs[:, start : start + chunk, :]
        n = block.shape[1]
        joint = config_probs.T @ block.reshape(num_samples, n * num_classes) / num_samples  # (C, n*K)
        entropies[start : start + n] = _entr(joint).reshape(num_configs, n, num_classes).sum(axis=(0, 2))
    return entropies


def _sample_config_probs(
    probs: np.ndarray, chosen: list[int], num_configs: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw M configurations y_A from the predictive; return prod_j p_k(y_j^m) `(S, M)`.

    Each draw picks a posterior sample k uniformly, then y_j ~ p_k(. | x_j) for j in A,
    which samples the mixture mean_k prod_j p_k exactly.
    """
    num_samples = probs.shape[0]
    sample_of_draw = rng.integers(num_samples, size=num_configs)  # (M,)
    config_probs = np.ones((num_samples, num_configs))
    for item in chosen:
        cumulative = np.cumsum(probs[sample_of_draw, item, :], axis=1)  # (M, K)
        uniforms = rng.random(num_configs) * cumulative[:, -1]
        labels = (cumulative < uniforms[:, None]).sum(axis=1).clip(max=probs.shape[2] - 1)  # (M,)
        config_probs *= probs[:, item, labels]  # (S, M)
    return config_probs


def _sampled_joint_entropies(config_probs: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Monte Carlo H[y_A, y_i] `(N,)` from configurations drawn from the predictive `(S, M)`."""
    num_samples, num_items, num_classes = probs.shape
    num_configs = config_probs.shape[1]
    config_marginal = config_probs.mean(axis=0)  # p(y_A^m) (M,)
    chunk = max(1, _BLOCK_ELEMENTS // (num_configs * num_classes))
    entropies = np.empty(num_items)
    for start in range(0, num_items, chunk):
        block = probs[:, start : start + chunk, :]
        n = block.shape[1]
        joint = (config_probs.T @ block.reshape(num_samples, n * num_classes) / num_samples).reshape(
            num_configs, n, num_classes
        )  # p(y_A^m, c) (M, n, K)
        log_joint = np.log(np.maximum(joint, np.finfo(np.float64).tiny))
        weighted = (joint / config_marginal[:, None, None]) * log_joint
        entropies[start : start + n] = -weighted.sum(axis=2).mean(axis=0)
    return entropies


def joint_mutual_information(probs, indices) -> float:
    """Exact I(y_A; theta) for the items `indices` (enumerates K^|A| configurations)."""
    values = np.asarray(probs, dtype=np.float64)
    chosen = [int(i) for i in indices]
    config_probs = np.ones((values.shape[0], 1))
    for item in chosen:
        config_probs = (config_probs[:, :, None] * values[:, item, None, :]).reshape(values.shape[0], -1)
    joint_entropy = float(_entr(config_probs.mean(axis=0)).sum())
    return joint_entropy - float(_conditional_entropies(values)[chosen].sum())


def batchbald(
    probs,
    budget: int,
    num_configs_exact_limit: int = 4096,
    seed: int = 0,
    num_sampled_configs: int = 2000,
) -> np.ndarray:
    """Greedy BatchBALD: indices `(B,)` in selection order.

    `probs (S, N, K)` from shared posterior samples. The joint entropy is exact while the
    chosen items have at most `num_configs_exact_limit` label configurations (K^|A|), and
    estimated from `num_sampled_configs` configurations (seeded) after that.
    """
    values = np.asarray(probs, dtype=np.float64)
    if values.ndim != 3:
        raise InputError(f"probs must have shape (S, N, K), got {values.shape}")
    num_samples, num_items, num_classes = values.shape
    check_budget(budget, num_items)
    rng = np.random.default_rng(seed)
    conditional = _conditional_entropies(values)  # (N,)
    chosen: list[int] = []
    config_probs: np.ndarray | None = np.ones((num_samples, 1))  # exact path while not None
    for _ in range(budget):
        if config_probs is not None:
            joint_entropies = _exact_joint_entropies(config_probs, values)
        else:
            sampled = _sample_config_probs(values, chosen, num_sampled_configs, rng)
            joint_entropies = _sampled_joint_entropies(sampled, values)
        gains = joint_entropies - conditional - conditional[chosen].sum()
        gains[chosen] = -np.inf
        best = int(np.argmax(gains))
        chosen.append(best)
        if config_probs is not None:
            if config_probs.shape[1] * num_classes <= num_configs_exact_limit:
                config_probs = (config_probs[:, :, None] * values[:, best, None, :]).reshape(num_samples, -1)
            else:
                config_probs = None
    return np.asarray(chosen, dtype=np.int64)


def shortlist_size(num_items: int, budget: int) -> int:
    """How many top-scored items the `batchbald` batch mode chooses among."""
    return min(num_items, max(budget, SHORTLIST))


def batchbald_batch(scores, budget: int, sample_probs: Callable[[np.ndarray], np.ndarray], seed: int = 0,
                    beta: float = 1.0) -> np.ndarray:
    """The `batchbald` batch mode: greedy BatchBALD over the `shortlist_size` best-scored items.

    `sample_probs(positions)` returns the shared posterior samples' probabilities `(S, n, K)`
    of those positions (ascending, so rows can be loaded in storage order). Returns positions
    into `scores` `(B,)` in selection order. `beta` is unused (the mode is deterministic).
    """
    values = np.asarray(scores, dtype=np.float64)
    shortlist = np.sort(np.argsort(-values, kind="stable")[: shortlist_size(len(values), budget)])
    probs = sample_probs(shortlist)
    if np.shape(probs)[1] != len(shortlist):
        raise InputError(f"sample_probs returned {np.shape(probs)[1]} rows for {len(shortlist)} positions")
    return shortlist[batchbald(probs, budget, seed=seed)]
