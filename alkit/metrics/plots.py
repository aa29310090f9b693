"""PNG plots for evaluation: reliability diagram, learning curves per strategy.

matplotlib is imported inside the functions with the non-interactive Agg backend, so
importing alkit.metrics stays cheap and plotting works without a display.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from alkit.metrics.calibration import ReliabilityBins, ece_from_bins


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_reliability(bin_stats: ReliabilityBins, path: str | Path, title: str = "Reliability") -> Path:
    """Bar chart of accuracy per confidence bin against the diagonal, with the ECE in the title."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    edges = bin_stats.edges
    widths = np.diff(edges)
    filled = bin_stats.counts > 0
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    try:
        axis.bar(edges[:-1][filled], bin_stats.accuracy[filled], width=widths[filled], align="edge",
                 edgecolor="black", color="tab:blue", label="accuracy")
        axis.bar(edges[:-1][filled], (bin_stats.confidence - bin_stats.accuracy)[filled], width=widths[filled],
                 bottom=bin_stats.accuracy[filled], align="edge", color="tab:red", alpha=0.3, label="gap to confidence")
        axis.plot([0, 1], [0, 1], "k--", linewidth=1)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence (max probability)")
        axis.set_ylabel("accuracy")
        axis.set_title(f"{title} (ECE {ece_from_bins(bin_stats):.3f}, {len(widths)} bins)")
        axis.legend(loc="upper left")
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=100)
    finally:
        plt.close(figure)
    return path


def plot_learning_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, metric: str = "accuracy"
) -> Path:
    """One line per strategy: `curves[name] = (labels (R,), metric (R,))`, labels on the x-axis."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axis = plt.subplots(figsize=(6, 4))
    try:
        for name, (labels, values) in curves.items():
            axis.plot(np.asarray(labels), np.asarray(values), marker="o", markersize=3, label=name)
        axis.set_xlabel("labels")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        if curves:
            axis.legend()
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=100)
    finally:
        plt.close(figure)
    return path
