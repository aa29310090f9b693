"""PNG plots for evaluation: reliability diagram, learning curves per strategy.

matplotlib is imported inside the functions with the non-interactive Agg backend, so
importing alkit.metrics stays cheap and plotting works without a display.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from alkit.metrics.calibration import ReliabilityBins, ece_from_bins


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


PNG_DPI = 100


@contextmanager
def _png_figure(path: str | Path, figsize: tuple[float, float], panels: int = 1) -> Iterator[tuple]:
    """`(plt, figure, axes)` for drawing; on success the figure is written to `path` as PNG.
    The figure is closed either way (matplotlib keeps open figures alive)."""
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(1, panels, figsize=figsize)
    try:
        yield plt, figure, axes
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=PNG_DPI)
    finally:
        plt.close(figure)


def plot_reliability(bin_stats: ReliabilityBins, path: str | Path, title: str = "Reliability") -> Path:
    """Bar chart of accuracy per confidence bin against the diagonal, with the ECE in the title."""
    edges = bin_stats.edges
    widths = np.diff(edges)
    filled = bin_stats.counts > 0
    with _png_figure(path, (4.5, 4.5)) as (plt, figure, axis):
        axis.bar(edges[:-1][filled], bin_stats.accuracy[filled], width=widths[filled], align="edge",
                 edgecolor="black", color="tab:blue", label="accuracy")
        axis.bar(edges[:-1][filled], (bin_stats.confidence - bin_stats.accuracy)[filled], width=widths[filled],
                 bottom=bin_stats.accuracy[filled], align="edge", color="tab:red", alpha=0.3, label="gap to confidence")
        axis.plot([0, 1], [0, 1], "k--", linewidth=1)
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence (max probability)")
        axis.set_ylabel("accuracy")
        axis.set_title(f"{title} (ECE {ece_from_bins(bin_stats):.3f}, {len(widths)} bins)", fontsize=10)
        axis.legend(loc="upper left")
    return Path(path)


def plot_learning_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, metric: str = "accuracy"
) -> Path:
    """One line per strategy: `curves[name] = (labels (R,), metric (R,))`, labels on the x-axis."""
    with _png_figure(path, (6, 4)) as (plt, figure, axis):
        for name, (labels, values) in curves.items():
            axis.plot(np.asarray(labels), np.asarray(values), marker="o", markersize=3, label=name)
        axis.set_xlabel("labels")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        if curves:
            axis.legend()
    return Path(path)


def plot_learning_curve_bands(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], path: str | Path, metric: str = "accuracy",
    reference_lines: dict[str, float] | None = None, title: str | None = None,
) -> Path:
    """Mean and a min-max band over seeds per strategy: `curves[name] = (labels (R,), values (seeds, R))`.

    `reference_lines` draws horizontal dashed lines (e.g. the zero-shot accuracy and the
    linear-probe ceiling) so the curves can be read against what is reachable.
    """
    with _png_figure(path, (6.5, 4.2)) as (plt, figure, axis):
        for name, (labels, values) in curves.items():
            values = np.atleast_2d(np.asarray(values, dtype=float))
            labels = np.asarray(labels)
            mean = values.mean(axis=0)
            (line,) = axis.plot(labels, mean, marker="o", markersize=3, label=f"{name} (mean of {len(values)} seeds)")
            if len(values) > 1:
                axis.fill_between(labels, values.min(axis=0), values.max(axis=0), color=line.get_color(), alpha=0.2,
                                  linewidth=0)
        for index, (name, value) in enumerate((reference_lines or {}).items()):
            axis.axhline(value, linestyle="--", linewidth=1, color=f"C{index + 5}", label=f"{name} {value:.3f}")
        axis.set_xlabel("labelled pool images")
        axis.set_ylabel(metric)
        if title:
            axis.set_title(title)
        axis.grid(alpha=0.3)
        if curves or reference_lines:
            axis.legend(fontsize=8)
    return Path(path)


def plot_metric_history(points: list[dict], path: str | Path, metrics: tuple[tuple[str, str], ...]) -> Path:
    """One panel per `(key, title)` metric against the labels used, zero-shot points marked.

    `points` are evaluation records (`labels_used` plus the metric keys), in the order they
    were recorded; points with `labels_used == 0` are drawn as stars ("zero-shot").
    """
    with _png_figure(path, (4.0 * len(metrics), 3.6), panels=len(metrics)) as (plt, figure, axes):
        axes = np.atleast_1d(axes)
        labels = np.array([p["labels_used"] for p in points], dtype=float)
        zero_shot = labels == 0
        for axis, (key, title) in zip(axes, metrics):
            values = np.array([p[key] for p in points], dtype=float)
            axis.plot(labels, values, marker="o", markersize=4, color="tab:blue")
            if zero_shot.any():
                axis.plot(labels[zero_shot], values[zero_shot], linestyle="none", marker="*", markersize=12,
                          color="tab:orange", label="zero-shot")
                axis.legend(fontsize=8)
            axis.set_xlabel("labels used by the posterior")
            axis.set_title(title)
            axis.grid(alpha=0.3)
    return Path(path)


def plot_confusion_matrix(matrix: np.ndarray, class_names: list[str], path: str | Path, title: str) -> Path:
    """Counts (true class rows, predicted class columns) as a heat map with the numbers written in."""
    size = max(4.5, 0.45 * len(class_names) + 2)
    with _png_figure(path, (size, size)) as (plt, figure, axis):
        axis.imshow(matrix, cmap="Blues")
        ticks = np.arange(len(class_names))
        axis.set_xticks(ticks, class_names, rotation=90, fontsize=8)
        axis.set_yticks(ticks, class_names, fontsize=8)
        axis.set_xlabel("predicted class")
        axis.set_ylabel("true class (label)")
        axis.set_title(title)
        if len(class_names) <= 30:
            high = matrix.max() if matrix.size else 0
            for (row, column), count in np.ndenumerate(matrix):
                if count:
                    axis.text(column, row, str(int(count)), ha="center", va="center", fontsize=7,
                              color="white" if count > high / 2 else "black")
    return Path(path)


def plot_class_balance(counts: np.ndarray, class_names: list[str], round_names: list[str], path: str | Path) -> Path:
    """Cumulative labels per class after each round: `counts (R, K)`, one group of bars per class."""
    num_rounds, num_classes = counts.shape
    with _png_figure(path, (max(6.0, 0.5 * num_classes * max(1, num_rounds) ** 0.5 + 2), 4.0)) as (plt, figure, axis):
        width = 0.8 / max(1, num_rounds)
        positions = np.arange(num_classes)
        for index in range(num_rounds):
            axis.bar(positions + (index - (num_rounds - 1) / 2) * width, counts[index], width=width,
                     label=round_names[index], color=plt.cm.viridis(index / max(1, num_rounds - 1)))
        axis.set_xticks(positions, class_names, rotation=45 if num_classes > 8 else 0, ha="right" if num_classes > 8 else "center")
        axis.set_ylabel("labels (cumulative)")
        axis.grid(alpha=0.3, axis="y")
        axis.legend(fontsize=8, ncols=min(4, num_rounds))
    return Path(path)


def plot_score_distributions(pool_scores: np.ndarray, batch_scores: np.ndarray, path: str | Path, title: str,
                             score_name: str) -> Path:
    """Histogram of the pool's acquisition scores with the selected batch's scores on top (density)."""
    with _png_figure(path, (4.6, 3.2)) as (plt, figure, axis):
        values = np.concatenate([pool_scores, batch_scores]) if len(batch_scores) else pool_scores
        edges = np.histogram_bin_edges(values, bins=30) if len(values) else np.linspace(0, 1, 31)
        if len(pool_scores):
            axis.hist(pool_scores, bins=edges, density=True, alpha=0.5, color="tab:gray",
                      label=f"unlabelled pool ({len(pool_scores)})")
        if len(batch_scores):
            axis.hist(batch_scores, bins=edges, density=True, alpha=0.7, color="tab:red",
                      label=f"selected batch ({len(batch_scores)})")
        axis.set_xlabel(score_name)
        axis.set_ylabel("density")
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
    return Path(path)
