"""Evaluation metrics (numpy only), plots (matplotlib, imported lazily) and an HTML report.

`calibration`: accuracy, NLL, Brier, ECE with reliability bins, per-class accuracy,
labels-to-reach on a learning curve. `plots`: reliability diagram, learning curves.
`report`: one self-contained HTML file with the numbers and the plots embedded.
"""

from alkit.metrics.calibration import (
    ReliabilityBins,
    accuracy,
    brier,
    ece,
    labels_to_reach,
    nll,
    per_class_accuracy,
    reliability_bins,
    summary,
)

__all__ = [
    "ReliabilityBins",
    "accuracy",
    "brier",
    "ece",
    "labels_to_reach",
    "nll",
    "per_class_accuracy",
    "reliability_bins",
    "summary",
]
