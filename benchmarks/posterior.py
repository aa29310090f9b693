"""Analytic (probit) vs Monte Carlo predictive of the Laplace head on imported embeddings.

Times scoring N imported D-dim embeddings against K classes with
  analytic: LaplaceHeadPosterior.predict (exact logit moments + probit), and
  MC:       S shared weight samples -> sample_probs -> mean over samples,
side by side in one run, and measures the agreement of each with a 10k-sample MC reference on
a subset (mean total variation and mean KL(reference || method)).

    python -m benchmarks.posterior --n 50000          # development size
    python -m benchmarks.posterior --n 1000000        # full size (~2-4 min on the 2-core dev box)
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def synthetic(rng, centres, n, noise):
    labels = rng.integers(0, centres.shape[0], size=n)
    x = centres[labels] + noise * rng.standard_normal((n, centres.shape[1]), dtype=np.float32)
    return x.astype(np.float32), labels


def mc_mean(post, weights, x, chunk):
    """Mean of the S shared-sample softmaxes `(N, K)`: logits fast path (one matmul against the
    stacked sampled heads per cache-sized chunk, exp once, no normalised (S, n, K) probs), chunks
    on torch's threads."""
    from alkit.acquisition.logits import mean_probs_from_logits
    from alkit.acquisition.tensors import parallel_for

    out = np.empty((x.shape[0], post.num_classes), dtype=np.float32)

    def run(lo):
        out[lo : lo + chunk] = mean_probs_from_logits(post.sample_logits(weights, x[lo : lo + chunk]))

    parallel_for(run, range(0, x.shape[0], chunk))
    return out


def agreement(reference, probs):
    tv = 0.5 * np.abs(reference - probs).sum(1).mean()
    kl = (reference * (np.log(np.clip(reference, 1e-12, None)) - np.log(np.clip(probs, 1e-12, None)))).sum(1).mean()
    return float(tv), float(kl)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="pool size to score")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--labels", type=int, default=200, help="labelled embeddings the head is fitted on")
    parser.add_argument("--samples", type=int, default=64, help="S for the MC path")
    parser.add_argument("--reference-samples", type=int, default=10_000)
    parser.add_argument("--subset", type=int, default=1000, help="inputs used for the agreement check")
    parser.add_argument("--noise", type=float, default=0.04, help="per-dimension noise around unit class centres")
    parser.add_argument("--prompt-noise", type=float, default=0.05, help="per-dimension noise of the class prompts")
    parser.add_argument("--prior-precision", type=float, default=None, help="fix lam instead of the evidence search")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from alkit.posterior.laplace_head import LaplaceHeadSettings, fit_laplace_head

    rng = np.random.default_rng(args.seed)
    centres = rng.normal(size=(args.classes, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    prompts = centres + args.prompt_noise * rng.normal(size=centres.shape).astype(np.float32)  # imperfect class prompts
    x_lab, y_lab = synthetic(rng, centres, args.labels, args.noise)
    t0 = time.perf_counter()
    post = fit_laplace_head(
        x_lab, y_lab, args.classes, prompts, logit_scale=30.0,
        settings=LaplaceHeadSettings(evidence_rounds=3, max_iterations=100, fixed_prior_precision=args.prior_precision),
    )
    fit_s = time.perf_counter() - t0
    pool, _ = synthetic(rng, centres, args.n, args.noise)

    analytic = None

    chunk = max(1, (1 << 19) // (args.samples * args.classes))  # ~2 MB of logits per chunk
    post.predict(pool[:1000])  # warm-up (torch kernels, thread pool) outside both timings
    post.sample_logits(post.sample_weights(2, seed=0), pool[:10])
    t0, c0 = time.perf_counter(), time.process_time()
    weights = post.sample_weights(args.samples, seed=1)
    mc = mc_mean(post, weights, pool, chunk)
    mc_s = time.perf_counter() - t0
    mc_cpu = time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    analytic = post.predict(pool)
    analytic_s = time.perf_counter() - t0
    analytic_cpu = time.process_time() - c0

    subset = pool[: args.subset]
    t_ref = time.perf_counter()
    reference = np.zeros((subset.shape[0], args.classes))
    block = max(1, (1 << 24) // (subset.shape[0] * args.classes))
    for start in range(0, args.reference_samples, block):
        draws = post.sample_weights(min(block, args.reference_samples - start), seed=1000 + start)
        reference += post.sample_probs(draws, subset).sum(0, dtype=np.float64)
    reference /= args.reference_samples
    ref_s = time.perf_counter() - t_ref
    a_tv, a_kl = agreement(reference, analytic[: args.subset])
    m_tv, m_kl = agreement(reference, mc[: args.subset])
    map_tv, map_kl = agreement(reference, post.map_predict(subset))
    _, var = post.logit_moments(subset)

    print(f"torch threads {torch.get_num_threads()}; N={args.n} D={args.dim} K={args.classes} labels={args.labels} "
          f"lam={post.prior_precision:.3g} mean logit var={var.mean():.3g}; head fit {fit_s:.1f} s")
    print(f"load average {os.getloadavg()[0]:.1f}; reference: {args.reference_samples} samples on {args.subset} inputs, "
          f"{ref_s:.1f} s")
    print(f"| method | wall s | process CPU s | per 1M wall (s) | mean TV vs {args.reference_samples}-sample MC | mean KL |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    per = 1e6 / args.n
    print(f"| analytic (probit) | {analytic_s:.2f} | {analytic_cpu:.2f} | {analytic_s * per:.1f} | {a_tv:.5f} | {a_kl:.6f} |")
    print(f"| MC S={args.samples} shared | {mc_s:.2f} | {mc_cpu:.2f} | {mc_s * per:.1f} | {m_tv:.5f} | {m_kl:.6f} |")
    print(f"| MAP (no uncertainty) | - | - | - | {map_tv:.5f} | {map_kl:.6f} |")
    print(f"speed ratio MC / analytic: {mc_s / analytic_s:.1f}x wall, {mc_cpu / analytic_cpu:.1f}x CPU")


if __name__ == "__main__":
    main()
