"""Benchmark: scoring a large pool for selection (entropy, BALD, EPIG) on synthetic data.

Data: N unit-norm D-dim embeddings and a posterior-like linear head over K classes:
mean weights W (K, D) plus Gaussian weight noise drawn ONCE per sample and shared by all
inputs. The noise lives in an r-dim input subspace (E_k = Z_k U^T, U (D, r) orthonormal,
`--noise-rank r`; 0 = full-rank noise), as in a Laplace posterior whose input curvature is
concentrated in r directions. Logits of a chunk for all S samples are then one
`(n, D) x (D, K + r)` product plus one `(n, r) x (r, S*K)` product; with full-rank noise
they are one `(n, D) x (D, S*K)` product against the stacked sampled heads.

Reported for each score: wall time, time relative to the bare `(N x D)(D x K)` logits
matmul on the same data (measured in the same run), and the process's peak RSS so far
(`resource.getrusage(RUSAGE_SELF).ru_maxrss`, a high-water mark that includes the N x D
embedding matrix itself).

Scores from S samples go through the logits fast path (`score_logits_in_chunks`: sampled
logits in cache-sized chunks, no softmax or per-element log, see `alkit.acquisition.logits._logit_summaries`);
EPIG needs probabilities and uses `score_in_chunks`. `--compare-n` items are also scored
with the previous probability path (softmax -> `bald`) in the same run, as a same-load
speed-up check and an agreement check.

    python -m benchmarks.select_kernels --n 100000          # development size
    python -m benchmarks.select_kernels                     # full size: N = 1M
The end-to-end command benchmark is `benchmarks/select_bench.py`. Prints the load average
before and after and refuses to run above `--max-load` unless `--force`.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runs as `python benchmarks/select_kernels.py`

from alkit.acquisition.pipeline import score_in_chunks, score_logits_in_chunks, top_candidates  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def unit_embeddings(num_items: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = np.empty((num_items, dim), dtype=np.float32)
    for start in range(0, num_items, 65536):  # generate in blocks to bound temporaries
        block = rng.standard_normal((min(65536, num_items - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[start : start + block.shape[0]] = block
    return vectors


class LinearHeadSampler:
    """Shared posterior samples of a linear head; `probs(x) -> (S, n, K)` float32."""

    def __init__(self, dim, num_classes, num_samples, noise_rank, seed, scale=20.0, noise=0.5):
        gen = torch.Generator().manual_seed(seed)
        self.num_samples, self.num_classes = num_samples, num_classes
        self.mean_head = torch.randn(dim, num_classes, generator=gen) * (scale / dim**0.5)  # (D, K)
        self.noise_rank = noise_rank
        if noise_rank > 0:
            basis, _ = torch.linalg.qr(torch.randn(dim, noise_rank, generator=gen))  # U (D, r)
            self.first = torch.cat([self.mean_head, basis], dim=1).contiguous()  # (D, K + r)
            self.noise = torch.randn(noise_rank, num_samples * num_classes, generator=gen) * noise * scale
        else:
            stacked = self.mean_head.unsqueeze(1) + torch.randn(dim, num_samples, num_classes, generator=gen) * (
                noise * scale / dim**0.5
            )
            self.first = stacked.reshape(dim, num_samples * num_classes).contiguous()  # (D, S*K)

    def mean_probs(self, x: np.ndarray) -> torch.Tensor:
        """Deterministic (MAP) predictive `(1, n, K)`."""
        return torch.softmax(torch.from_numpy(x) @ self.mean_head, dim=-1).unsqueeze(0)

    def mean_logits(self, x: np.ndarray) -> torch.Tensor:
        """Deterministic (MAP) logits `(1, n, K)`."""
        return (torch.from_numpy(x) @ self.mean_head).unsqueeze(0)

    def _logits(self, x: np.ndarray) -> torch.Tensor:
        n, samples, classes = x.shape[0], self.num_samples, self.num_classes
        first = torch.from_numpy(x) @ self.first
        if self.noise_rank > 0:
            logits = (first[:, classes:] @ self.noise).view(n, samples, classes)  # (n, S, K)
            logits += first[:, None, :classes]
        else:
            logits = first.view(n, samples, classes)
        return logits

    def logits(self, x: np.ndarray) -> torch.Tensor:
        return self._logits(x).permute(1, 0, 2)  # (S, n, K) view, no copy

    def probs(self, x: np.ndarray) -> torch.Tensor:
        return torch.softmax(self._logits(x), dim=-1).permute(1, 0, 2)  # (S, n, K) view, no copy


CPU_SECONDS: dict[float, float] = {}


def timed(function):
    """Wall seconds of one call; the process CPU seconds go to CPU_SECONDS[wall]."""
    start, cpu_start = time.perf_counter(), time.process_time()
    result = function()
    wall = time.perf_counter() - start
    CPU_SECONDS[wall] = time.process_time() - cpu_start
    print(f"  step done: wall {wall:.2f} s, cpu {CPU_SECONDS[wall]:.2f} s, peak RSS {peak_rss_gb():.2f} GB", flush=True)
    return result, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--targets", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--chunk", type=int, default=2048, help="pool items per predict_chunk call (probability path)")
    parser.add_argument("--logits-chunk", type=int, default=128, help="pool items per predict_logits call (fast path)")
    parser.add_argument("--budget", type=int, default=100, help="B for the pre-filter recall check")
    parser.add_argument("--bald-keep", type=int, default=100_000, help="BALD pre-filter: top items by MAP entropy")
    parser.add_argument("--compare-n", type=int, default=20_000, help="items also scored with the old probability path")
    parser.add_argument("--noise-rank", type=int, default=32, help="rank of the weight noise; 0 = full rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-load", type=float, default=1.0, help="refuse to run above this 1-min load average")
    parser.add_argument("--force", action="store_true", help="run even above --max-load")
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if load[0] > args.max_load and not args.force:
        raise SystemExit(f"load {load[0]:.2f} > --max-load {args.max_load}; rerun on an idle machine or pass --force")

    embeddings = unit_embeddings(args.n, args.d, args.seed)
    sampler = LinearHeadSampler(args.d, args.k, args.samples, args.noise_rank, args.seed)
    chunk, fast = args.chunk, args.logits_chunk
    print(
        f"N={args.n} D={args.d} K={args.k} S={args.samples} M={args.targets} candidates={args.candidates} "
        f"noise_rank={args.noise_rank} chunk={chunk} logits_chunk={fast} torch_threads={torch.get_num_threads()} "
        f"cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}"
    )
    print(f"embeddings loaded, peak RSS {peak_rss_gb():.2f} GB")

    def bare_matmul():
        out = np.empty((args.n, args.k), dtype=np.float32)
        weights = sampler.mean_head.numpy()
        for start in range(0, args.n, 65536):
            np.matmul(embeddings[start : start + 65536], weights, out=out[start : start + 65536])
        return out

    _, matmul_seconds = timed(bare_matmul)
    rows = [("bare matmul (N x D)(D x K)", matmul_seconds)]

    def map_entropy(x):
        return score_logits_in_chunks(lambda a, b: sampler.mean_logits(x[a:b]), x.shape[0], "entropy", chunk_size=8192)

    entropy, seconds = timed(lambda: map_entropy(embeddings))
    rows.append(("entropy (MAP predictive, S=1)", seconds))

    def sampled(name, x):
        return score_logits_in_chunks(lambda a, b: sampler.logits(x[a:b]), x.shape[0], name, chunk_size=fast)

    _, seconds = timed(lambda: sampled("entropy", embeddings))
    rows.append((f"entropy (mean of S={args.samples} probs)", seconds))

    bald_scores, seconds = timed(lambda: sampled("bald", embeddings))
    rows.append((f"BALD (S={args.samples}), full pool", seconds))

    def bald_with_prefilter():
        keep = top_candidates(map_entropy(embeddings), args.bald_keep)
        values = sampled("bald", embeddings[keep])
        return keep[np.argsort(-values)[: args.budget]]

    prefiltered_top, seconds = timed(bald_with_prefilter)
    rows.append((f"BALD (S={args.samples}) on top {args.bald_keep} by MAP entropy, incl. pre-filter", seconds))

    def epig_with_prefilter():
        candidates = top_candidates(map_entropy(embeddings), args.candidates)
        target_rows = np.random.default_rng(args.seed + 1).choice(args.n, args.targets, replace=False)
        targets = sampler.probs(embeddings[target_rows]).contiguous()  # (S, M, K), same samples
        candidate_embeddings = embeddings[candidates]
        return score_in_chunks(
            lambda a, b: sampler.probs(candidate_embeddings[a:b]),
            args.candidates,
            "epig",
            chunk_size=chunk,
            targets_probs=targets,
        )

    _, seconds = timed(epig_with_prefilter)
    rows.append((f"EPIG (S={args.samples}, M={args.targets}) on {args.candidates} candidates, incl. pre-filter", seconds))

    # Same-load comparison with the previous probability path on the first compare_n items.
    subset = embeddings[: args.compare_n]
    old, seconds = timed(
        lambda: score_in_chunks(lambda a, b: sampler.probs(subset[a:b]), args.compare_n, "bald", chunk_size=chunk)
    )
    rows.append((f"old path: BALD via softmax probs, first {args.compare_n} items", seconds))
    new, seconds = timed(lambda: sampled("bald", subset))
    rows.append((f"new path: BALD via logits, first {args.compare_n} items", seconds))

    print("\n| step | wall s | process CPU s | wall / bare matmul wall |\n| --- | ---: | ---: | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {CPU_SECONDS[seconds]:.2f} | {seconds / matmul_seconds:.1f} |")
    print(f"\npeak RSS (getrusage ru_maxrss, whole process incl. embeddings): {peak_rss_gb():.2f} GB")
    print(f"BALD old vs new path, first {args.compare_n} items: max |diff| {np.abs(old - new).max():.2e} nats, "
          f"top-{args.budget} overlap {len(np.intersect1d(np.argsort(-old)[:args.budget], np.argsort(-new)[:args.budget]))}")
    full_top = np.argsort(-bald_scores)[: args.budget]
    print(f"BALD pre-filter recall (top-{args.budget} of full-pool BALD found after pre-filtering):")
    order = np.argsort(-entropy)
    for keep in sorted({1_000, 10_000, 50_000, 100_000, 200_000, args.bald_keep}):
        if keep <= args.n:
            print(f"  keep top {keep} by MAP entropy: recall {np.isin(full_top, order[:keep]).mean():.2f}")
    print(f"  (timed run, keep {args.bald_keep}: {np.isin(full_top, prefiltered_top).mean():.2f})")
    rank = np.empty(args.n, dtype=np.int64)
    rank[order] = np.arange(args.n)
    print(f"  MAP-entropy rank of the full-pool BALD top-{args.budget}: median {int(np.median(rank[full_top]))}, "
          f"max {int(rank[full_top].max())}")
    assert np.isfinite(entropy).all() and np.isfinite(bald_scores).all()
    load = os.getloadavg()
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    main()
