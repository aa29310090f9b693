"""Benchmark: analytic BALD (from logit moments) against sampled BALD (S = 64, logits fast path).

Same synthetic linear head as `benchmarks/select_bench.py`'s kernel section: mean head W (D, K)
plus weight noise in an r-dim input subspace, z_s = x W + (x U) Z_s with Z_s (r, K) i.i.d.
N(0, sigma^2). Its logit moments are exact: mean x W, variance sigma^2 |x U|^2 per class
(diagonal Gaussian logits, so Monte Carlo and the analytic formula see the same distribution).
Timed on the same N inputs in one run: moments + `analytic_bald` vs sampled logits +
`bald_from_logits`; also the Spearman agreement of both with a 4096-sample reference on the
first `--check-n` items.

    python -m benchmarks.analytic_bald --n 200000          # refuses above --max-load unless --force
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--noise-rank", type=int, default=32)
    parser.add_argument("--check-n", type=int, default=2000)
    parser.add_argument("--max-load", type=float, default=1.0, help="refuse to record above this 1-min load average")
    parser.add_argument("--force", action="store_true", help="record even above --max-load")
    args = parser.parse_args()

    import torch
    from scipy.stats import spearmanr

    from alkit.acquisition.analytic_bald import analytic_bald
    from alkit.acquisition.pipeline import score_logits_in_chunks

    load_before = os.getloadavg()
    print(f"load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    if load_before[0] > args.max_load and not args.force:
        raise SystemExit(f"load {load_before[0]:.2f} > --max-load {args.max_load}: figures would not be comparable; rerun when idle or pass --force")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    mean_head = (rng.standard_normal((args.d, args.k), dtype=np.float32) * (20.0 / args.d**0.5)).astype(np.float32)
    basis = np.linalg.qr(rng.standard_normal((args.d, args.noise_rank)))[0].astype(np.float32)
    sigma = 10.0
    noise = (rng.standard_normal((args.samples, args.noise_rank, args.k)) * sigma).astype(np.float32)
    first = torch.from_numpy(np.concatenate([mean_head, basis], axis=1))  # (D, K + r)
    noise_t = torch.from_numpy(noise.transpose(1, 0, 2).reshape(args.noise_rank, -1).copy())  # (r, S*K)

    def moments(rows):
        out = torch.from_numpy(rows) @ first
        mean = out[:, : args.k]
        variance = (sigma**2) * (out[:, args.k :] ** 2).sum(dim=1, keepdim=True).expand(-1, args.k)
        return mean.numpy(), np.ascontiguousarray(variance.numpy())

    def logits(rows, noise_matrix, samples):
        out = torch.from_numpy(rows) @ first
        z = (out[:, args.k :] @ noise_matrix).view(len(rows), samples, args.k) + out[:, None, : args.k]
        return z.permute(1, 0, 2)

    def analytic(rows):
        values = np.empty(len(rows))
        for start in range(0, len(rows), 8192):
            values[start : start + 8192] = analytic_bald(*moments(rows[start : start + 8192]))
        return values

    def sampled(rows, noise_matrix, samples):
        return score_logits_in_chunks(lambda a, b: logits(rows[a:b], noise_matrix, samples), len(rows), "bald", chunk_size=128)

    def timed(function):
        start = time.perf_counter()
        result = function()
        return result, time.perf_counter() - start

    _, analytic_s = timed(lambda: analytic(x))
    _, sampled_s = timed(lambda: sampled(x, noise_t, args.samples))
    load_after = os.getloadavg()
    check = x[: args.check_n]
    reference_noise = torch.from_numpy(
        (rng.standard_normal((args.noise_rank, 4096 * args.k)) * sigma).astype(np.float32)
    )
    reference = sampled(check, reference_noise, 4096)
    print(f"N={args.n} D={args.d} K={args.k} S={args.samples} r={args.noise_rank} torch_threads={torch.get_num_threads()}")
    print("| method | wall s | speed-up |\n| --- | ---: | ---: |")
    print(f"| BALD, S={args.samples} sampled logits | {sampled_s:.2f} | 1.0 |")
    print(f"| analytic BALD from logit moments | {analytic_s:.2f} | {sampled_s / analytic_s:.1f} |")
    agreement_mc = spearmanr(sampled(check, noise_t, args.samples), reference)[0]
    agreement_analytic = spearmanr(analytic(check), reference)[0]
    print(f"Spearman vs 4096-sample reference on {args.check_n} items: S={args.samples} {agreement_mc:.4f}, analytic {agreement_analytic:.4f}")
    print(f"load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")


if __name__ == "__main__":
    main()
