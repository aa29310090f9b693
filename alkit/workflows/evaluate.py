"""`alkit eval`: calibration and accuracy of the current posterior (and its MAP) on a split.

Each run is appended to the `eval_history` state entry, so a learning curve across rounds
(metric vs labels used) can be plotted without refitting old posteriors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alkit.errors import StateError
from alkit.jsonable import JsonResult
from alkit.project import Project
from alkit.storage.db import utcnow
from alkit.storage.classes import class_rows
from alkit.storage.labels import resolved_labels
from alkit.storage.state import StateKey, read_state, write_state
from alkit.workflows.eval_settings import DEFAULT_BINS, DEFAULT_SPLIT



@dataclass
class EvalResult(JsonResult):
    split: str
    n: int
    posterior_version: int
    labels_used: int
    metrics: dict  # accuracy, nll, brier, ece, ece_bins (posterior predictive)
    map_metrics: dict  # the same for the MAP model
    per_class_accuracy: dict[str, float | None]
    files: dict[str, str] = field(default_factory=dict)

    json_exclude = ("metrics",)  # flattened to the top level: `alkit eval --json` reads accuracy, nll, ... directly
    json_names = {"map_metrics": "map"}

    def as_json(self) -> dict:
        return {**{k: self.metrics[k] for k in ("accuracy", "nll", "brier", "ece", "ece_bins")}, **super().as_json()}


def labelled_split(project: Project, context, feature_kind: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(features (n, F), class indices (n,)) of the labelled, embedded images of a split."""
    from alkit.storage.vectors import load_vectors

    ids, features = load_vectors(project, context.spec.id, split=split, kind=feature_kind)
    with project.engine.connect() as connection:
        resolved = resolved_labels(connection, ids.tolist())
        position = {row.id: index for index, row in enumerate(class_rows(connection))}
    keep = np.array([int(i) in resolved for i in ids], dtype=bool)
    if not keep.any():
        raise StateError(
            f"no labelled embedded images in split {split!r}; `alkit add --split {split}` images and "
            "`alkit labels import` their labels"
        )
    labels = np.array([position[resolved[int(i)]] for i in ids[keep]], dtype=np.int64)
    return features[keep], labels


def evaluate(project: Project, split: str = DEFAULT_SPLIT, num_bins: int = DEFAULT_BINS, plot_dir: Path | None = None,
             record: bool = True) -> EvalResult:
    from alkit.metrics import per_class_accuracy, summary
    from alkit.workflows.current_posterior import current_posterior

    context, row, posterior = current_posterior(project)
    features, labels = labelled_split(project, context, posterior.feature_kind, split)
    probs = posterior.predict(features)  # (n, K)
    map_probs = posterior.map_predict(features)  # (n, K)
    per_class = per_class_accuracy(probs, labels, len(context.class_names))
    result = EvalResult(
        split=split, n=int(len(labels)), posterior_version=int(row.version), labels_used=int(row.labels_used),
        metrics=summary(probs, labels, num_bins), map_metrics=summary(map_probs, labels, num_bins),
        per_class_accuracy={n: (None if np.isnan(a) else float(a)) for n, a in zip(context.class_names, per_class)},
    )
    if record:
        append_history(project, {"split": split, "posterior_version": result.posterior_version,
                                 "labels_used": result.labels_used, "n": result.n, **result.metrics,
                                 "time": utcnow().isoformat()})
    if plot_dir is not None:
        result.files = write_eval_plots(project, result, probs, labels, Path(plot_dir), num_bins)
    return result


def read_history(project: Project) -> list[dict]:
    with project.engine.connect() as connection:
        return list(read_state(connection, StateKey.EVAL_HISTORY) or [])


def append_history(project: Project, entry: dict) -> None:
    with project.engine.begin() as connection:  # read and write in one transaction: concurrent evals both land
        current = read_state(connection, StateKey.EVAL_HISTORY)
        write_state(connection, StateKey.EVAL_HISTORY, [*(current or []), entry])


def write_eval_plots(project: Project, result: EvalResult, probs, labels, directory: Path, num_bins: int) -> dict[str, str]:
    """Reliability diagram, learning curve (from the recorded history) and an HTML report."""
    from alkit.metrics import ece
    from alkit.metrics.plots import plot_learning_curves, plot_reliability
    from alkit.metrics.report import write_html_report

    directory.mkdir(parents=True, exist_ok=True)
    _, bins = ece(probs, labels, num_bins)
    reliability = plot_reliability(bins, directory / "reliability.png", title=f"Reliability ({result.split}, {num_bins} bins)")
    history = [h for h in read_history(project) if h.get("split") == result.split]
    curve = {
        "posterior": (np.array([h["labels_used"] for h in history]), np.array([h["accuracy"] for h in history]))
    } if history else {}
    learning = plot_learning_curves(curve, directory / "learning_curve.png")
    report = write_html_report(directory / "report.html", result.as_json(), [reliability, learning], title="alkit eval")
    return {"reliability": str(reliability), "learning_curve": str(learning), "report": str(report)}
