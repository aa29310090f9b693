"""Trained-head posteriors (`ensemble`, `ensemble --hyper`, `mimo`, `hetsngp`) beside the Laplace head.

Two measurements (issue 20):

1. Speed on synthetic 512-d embeddings (K = 10 Gaussian classes): fit time with 5,000 labels,
   and scoring time of BALD over a 20,000-image pool with S = 64 shared samples (the
   `alkit select` path: `sample_weights` once, `sample_logits` / `sample_probs` in chunks).
2. Quality on the AL suite's `mnist_lt` (324-d HOG, long-tailed pool): L labels drawn uniformly
   from the pool images of the 8 KNOWN classes (2 classes held out entirely); test accuracy,
   NLL and ECE of the predictive on the known-class test images, and out-of-distribution AUROC
   of BALD (mutual information of the shared samples) and of the predictive entropy for
   telling held-out-class test images from known-class ones. For the trained heads the NLL and
   ECE are also given at T = tau = 1 (the predictive before its cross-validated temperature and
   spread scale), and the fit time includes the K fold refits that choose them.

    python -m benchmarks.ensemble_posteriors [--labels 200 1000] [--seeds 2] [--skip-speed]
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np

HELD_OUT = (3, 8)  # class indices never labelled (their test images are the OOD set)
KINDS = ("laplace_head", "ensemble", "ensemble-hyper", "mimo", "hetsngp")


def fit(kind: str, x, y, classes: int, unlabelled, seed: int = 0):
    from alkit.posterior.ensemble import EnsembleSettings, fit_ensemble
    from alkit.posterior.hetsngp import fit_hetsngp
    from alkit.posterior.laplace_head import fit_laplace_head
    from alkit.posterior.mimo import fit_mimo

    if kind == "laplace_head":
        return fit_laplace_head(x, y, classes, unlabelled=unlabelled)
    if kind == "ensemble":
        return fit_ensemble(x, y, classes, unlabelled=unlabelled, seed=seed)
    if kind == "ensemble-hyper":
        return fit_ensemble(x, y, classes, settings=EnsembleSettings(hyper=True), unlabelled=unlabelled, seed=seed)
    if kind == "mimo":
        return fit_mimo(x, y, classes, unlabelled=unlabelled, seed=seed)
    return fit_hetsngp(x, y, classes, unlabelled=unlabelled, seed=seed)


def bald_and_entropy(posterior, x, samples: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from alkit.acquisition.scores import bald, predictive_entropy

    probs = posterior.sample_probs(posterior.sample_weights(samples, seed), x)
    return np.asarray(bald(probs)), np.asarray(predictive_entropy(posterior.predict(x)[None]))


def speed(log=print) -> list[dict]:
    from alkit.acquisition.scores import bald

    rng = np.random.default_rng(0)
    classes, dim = 10, 512
    centres = rng.normal(size=(classes, dim))
    y = rng.integers(classes, size=5000)
    x = centres[y] * 0.15 + rng.normal(size=(5000, dim))
    pool = centres[rng.integers(classes, size=20000)] * 0.15 + rng.normal(size=(20000, dim))
    rows = []
    for kind in KINDS:
        started = time.perf_counter()
        posterior = fit(kind, x, y, classes, pool)
        fit_s = time.perf_counter() - started
        started = time.perf_counter()
        weights = posterior.sample_weights(64, 0)
        for lo in range(0, len(pool), 4096):
            bald(posterior.sample_probs(weights, pool[lo : lo + 4096]))
        score_s = time.perf_counter() - started
        rows.append({"kind": kind, "fit_s": fit_s, "score_s": score_s})
        log(f"speed {kind}: fit {fit_s:.1f} s (5,000 x 512), BALD over 20,000 x 64 samples {score_s:.1f} s")
    return rows


def quality(label_counts, seeds, log=print) -> list[dict]:
    from sklearn.metrics import roc_auc_score

    from alkit.metrics.calibration import accuracy, ece, nll
    from benchmarks.al_suite_data import load_dataset

    data = load_dataset("mnist_lt", log=log)
    known = [k for k in range(len(data.class_names)) if k not in HELD_OUT]
    remap = {old: new for new, old in enumerate(known)}
    pool_known = np.flatnonzero(np.isin(data.pool_y, known))
    test_known = np.isin(data.test_y, known)
    test_y = np.array([remap.get(int(v), -1) for v in data.test_y])
    rows = []
    for count in label_counts:
        for seed in range(seeds):
            chosen = np.random.default_rng(seed).choice(pool_known, count, replace=False)
            x, y = data.pool_x[chosen], np.array([remap[int(v)] for v in data.pool_y[chosen]])
            for kind in KINDS:
                started = time.perf_counter()
                posterior = fit(kind, x, y, len(known), data.pool_x, seed)
                fit_s = time.perf_counter() - started
                probs = posterior.predict(data.test_x[test_known])
                raw = replace(posterior, temperature=1.0, variance_scale=1.0).predict(data.test_x[test_known]) if kind != "laplace_head" else None
                mi, entropy = bald_and_entropy(posterior, data.test_x, seed=seed)
                ood = (~test_known).astype(int)
                row = {
                    "L": count, "seed": seed, "kind": kind, "fit_s": fit_s,
                    "acc": accuracy(probs, test_y[test_known]), "nll": nll(probs, test_y[test_known]),
                    "ece": ece(probs, test_y[test_known])[0], "temperature": float(posterior.temperature),
                    "variance_scale": float(posterior.variance_scale),
                    "nll_t1": np.nan if raw is None else nll(raw, test_y[test_known]),
                    "ece_t1": np.nan if raw is None else ece(raw, test_y[test_known])[0],
                    "auroc_bald": float(roc_auc_score(ood, mi)), "auroc_entropy": float(roc_auc_score(ood, entropy)),
                }
                rows.append(row)
                log(
                    f"mnist_lt L={count} seed={seed} {kind}: acc {row['acc']:.3f} nll {row['nll']:.3f} ece {row['ece']:.3f}"
                    f" (T {row['temperature']:.3f} tau {row['variance_scale']:.3g}; T = tau = 1: nll {row['nll_t1']:.3f} ece {row['ece_t1']:.3f})"
                    f" OOD AUROC bald {row['auroc_bald']:.3f} entropy {row['auroc_entropy']:.3f} ({fit_s:.1f} s)"
                )
    return rows


def before(group: list[dict]) -> str:
    """NLL / ECE of the trained heads' predictive at T = tau = 1 ('-' for the Laplace head, calibrated its own way)."""
    if np.isnan(group[0]["nll_t1"]):
        return "-"
    return f"{np.mean([r['nll_t1'] for r in group]):.3f} / {np.mean([r['ece_t1'] for r in group]):.3f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| L | posterior | seeds | acc | NLL | ECE | T / tau | NLL / ECE at T = tau = 1 | OOD AUROC (BALD) | OOD AUROC (entropy) | fit s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for count in sorted({r["L"] for r in rows}):
        for kind in KINDS:
            group = [r for r in rows if r["L"] == count and r["kind"] == kind]
            if not group:
                continue
            mean = lambda key: float(np.mean([r[key] for r in group]))  # noqa: E731
            lines.append(
                f"| {count} | {kind} | {len(group)} | {mean('acc'):.3f} | {mean('nll'):.3f} | {mean('ece'):.3f} | "
                f"{mean('temperature'):.2f} / {mean('variance_scale'):.3g} | {before(group)} | "
                f"{mean('auroc_bald'):.3f} | {mean('auroc_entropy'):.3f} | {mean('fit_s'):.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labels", nargs="+", type=int, default=[200, 1000])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    if not args.skip_speed:
        rows = speed()
        print("| posterior | fit s (5,000 x 512) | BALD s (20,000 x 64 samples) |\n| --- | --- | --- |")
        for row in rows:
            print(f"| {row['kind']} | {row['fit_s']:.1f} | {row['score_s']:.1f} |")
    print(table(quality(args.labels, args.seeds)))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
