"""`alkit report`: one self-contained HTML page about a project's rounds, labels and model.

Sections (each with a stable id): the selected images of every round with rank, score,
the model's guess and the label they got (`gallery`); the class balance of the labels
over rounds (`class-balance`); the acquisition scores of the pool against the selected
batch (`scores`); the learning curve from recorded `alkit eval` results with the zero-shot
start (`learning-curve`); the reliability diagram (`calibration`) and confusion matrix
(`confusion`) of the current posterior on the test split; annotator agreement from Label
Studio (`agreement`). A section whose data is missing says how to produce it instead of
failing, so the report works for any project at any stage. `alkit demo` calls the same
function and adds its own sections in front.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alkit.errors import AlkitError
from alkit.jsonable import JsonResult
from alkit.project import Project

GALLERY_LIMIT = 60  # thumbnails per round (the top-ranked ones); the rest are counted
SCORE_PLOT_ROUNDS = 12  # the most recent rounds get a score histogram
SCORE_NAMES = {"bald": "BALD", "entropy": "entropy", "epig": "EPIG", "margin": "margin", "random": "random draw"}


@dataclass
class ReportResult(JsonResult):
    path: Path
    sections: list[str]
    rounds: int
    thumbnails: int
    evaluations: int
    figures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    json_names = {"path": "report"}


def build_report(project: Project, out_dir: Path | None = None, split: str = "test", title: str | None = None,
                 extra_sections: list | None = None, num_bins: int = 15) -> ReportResult:
    """Write `<out_dir>/report.html` (default `<project>/report/`) and its PNG figures next to it."""
    from alkit.report import collect
    from alkit.report.html import Section, page

    out_dir = Path(out_dir) if out_dir is not None else project.directory / "report"
    figures_dir = out_dir / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    names = collect.class_names(project)
    summaries = collect.round_summaries(project)
    figures: dict[str, str] = {}
    notes: list[str] = []

    gallery_html, thumbnails = _gallery_section(summaries)
    sections = [
        Section("gallery", "What was selected in each round", gallery_html,
                "Each picture is one image the strategy chose, in rank order, with its acquisition score, "
                "what the model predicted when it chose it, and the label the annotators gave it "
                "(green: the model was right, red: it was wrong)."),
        Section("class-balance", "How the labels are spread over the classes",
                _class_balance_section(project, summaries, names, figures_dir, figures),
                "Labels per class, counted after each round. Rare classes are where the model learns least."),
        Section("scores", "Acquisition scores: the pool against the selected batch",
                _scores_section(project, summaries, figures_dir, figures, notes),
                "For each round, the distribution of the score over the unlabelled pool and over the images chosen. "
                "A batch far in the right tail means the strategy found images the model is unsure about."),
        Section("learning-curve", "Learning curve", _learning_curve_section(project, split, figures_dir, figures),
                f"Accuracy, negative log-likelihood and calibration error on the '{split}' split after each recorded "
                "`alkit eval`, starting from the zero-shot model (no labels)."),
    ]
    calibration_html, confusion_html = _test_split_sections(project, split, num_bins, figures_dir, figures)
    sections += [
        Section("calibration", "Is the model's confidence honest? (reliability diagram)", calibration_html,
                "Test images grouped by the model's confidence; in a calibrated model each bar reaches the diagonal."),
        Section("confusion", "Which classes get confused (confusion matrix)", confusion_html,
                "Rows: the true class; columns: the class the current model predicts."),
        Section("agreement", "Annotator agreement (Label Studio)", _agreement_section(project)),
    ]
    sections = [*(extra_sections or []), *sections]
    subtitle = (f"Project {project.directory}: {len(names)} classes, {len(summaries)} rounds, "
                f"{sum(len(s.items) for s in summaries)} selected images.")
    path = out_dir / "report.html"
    path.write_text(page(title or "alkit report", subtitle, sections), encoding="utf-8")
    return ReportResult(path=path, sections=[s.id for s in sections], rounds=len(summaries), thumbnails=thumbnails,
                        evaluations=len(collect.evaluation_history(project, split)), figures=figures, notes=notes)


def _score_name(strategy: str) -> str:
    return SCORE_NAMES.get(strategy, strategy)


def _gallery_section(summaries) -> tuple[str, int]:
    from alkit.report.html import gallery
    from alkit.report.thumbnails import thumbnail_data_uri

    if not summaries:
        return '<p class="note">No rounds yet: `alkit select --budget B` records the first one.</p>', 0
    parts, count = [], 0
    for summary in summaries:
        shown = summary.items[:GALLERY_LIMIT]
        thumbnails = {item.image_id: thumbnail_data_uri(item.path) for item in shown}
        count += sum(1 for uri in thumbnails.values() if uri)
        trimmed = type(summary)(**{**summary.__dict__, "items": shown})
        parts.append(gallery(trimmed, thumbnails, _score_name(summary.strategy)))
        if len(summary.items) > len(shown):
            parts.append(f'<p class="note">... and {len(summary.items) - len(shown)} more images in this round.</p>')
    return "".join(parts), count


def _class_balance_section(project, summaries, names, figures_dir: Path, figures: dict) -> str:
    from alkit.metrics.plots import plot_class_balance
    from alkit.report.collect import class_balance
    from alkit.report.html import class_balance_table, figure

    row_names, counts = class_balance(project, summaries)
    if not names:
        return '<p class="note">No classes yet: `alkit classes set NAME...`.</p>'
    if len(row_names) == 0 or counts.sum() == 0:
        return '<p class="note">No labelled pool images yet.</p>'
    png = plot_class_balance(counts, names, row_names, figures_dir / "class_balance.png")
    figures["class_balance"] = str(png)
    return figure(png, "Labels per class, cumulative after each round") + class_balance_table(row_names, counts, names)


def _scores_section(project, summaries, figures_dir: Path, figures: dict, notes: list) -> str:
    from alkit.metrics.plots import plot_score_distributions
    from alkit.report.collect import round_pool_scores
    from alkit.report.html import esc, figure

    if not summaries:
        return '<p class="note">No rounds yet.</p>'
    parts = []
    for summary in summaries[-SCORE_PLOT_ROUNDS:]:
        _, pool_scores, note = round_pool_scores(project, summary)
        batch = np.array([item.score for item in summary.items if item.score is not None], dtype=float)
        if len(pool_scores) == 0:
            parts.append(f'<p class="note">Round {summary.number}: {esc(note)}.</p>')
            continue
        name = _score_name(summary.strategy)
        png = plot_score_distributions(pool_scores, batch, figures_dir / f"scores_round_{summary.number}.png",
                                       f"Round {summary.number}: {name} scores", f"{name} score")
        figures[f"scores_round_{summary.number}"] = str(png)
        median_pool = float(np.median(pool_scores))
        above = float(np.mean(batch[:, None] > pool_scores[None, :])) if len(batch) else float("nan")
        parts.append(figure(png, f"Round {summary.number}: pool median {median_pool:.3f}; the chosen images score "
                                 f"above {above:.0%} of the pool on average ({note})."))
        notes.append(f"round {summary.number}: {note}")
    return "".join(parts)


def _learning_curve_section(project, split: str, figures_dir: Path, figures: dict) -> str:
    from alkit.metrics.plots import plot_metric_history
    from alkit.report.collect import evaluation_history
    from alkit.report.html import figure, number, table

    history = evaluation_history(project, split)
    if not history:
        return (f'<p class="note">No evaluation recorded on the \'{split}\' split yet: label some test images '
                "(`alkit add --split test`, `alkit labels import`) and run `alkit eval` after each fit.</p>")
    png = plot_metric_history(history, figures_dir / "learning_curve.png",
                              (("accuracy", "accuracy (higher is better)"), ("nll", "NLL (lower is better)"),
                               ("ece", "ECE (lower is better)")))
    figures["learning_curve"] = str(png)
    rows = [("zero-shot" if h.get("labels_used") == 0 else f"posterior v{h.get('posterior_version')}",
             h.get("labels_used"), number(h.get("accuracy")), number(h.get("nll")), number(h.get("ece")), h.get("n"))
            for h in history]
    return figure(png, "Test metrics against the labels the posterior was fitted on") + table(
        ["model", "labels", "accuracy", "NLL", "ECE", "test images"], rows)


def _test_split_sections(project, split: str, num_bins: int, figures_dir: Path, figures: dict) -> tuple[str, str]:
    from alkit.metrics import ece, summary
    from alkit.metrics.plots import plot_confusion_matrix, plot_reliability
    from alkit.report.collect import confusion_matrix, test_predictions
    from alkit.report.html import esc, figure, table

    try:
        names, probs, labels_, row = test_predictions(project, split)
    except AlkitError as error:
        message = f'<p class="note">Not available: {esc(error)}</p>'
        return message, message
    metrics = summary(probs, labels_, num_bins)
    _, bins = ece(probs, labels_, num_bins)
    who = f"posterior v{row.version} ({row.labels_used} labels)"
    reliability = plot_reliability(bins, figures_dir / "reliability.png", title=f"v{row.version}, {row.labels_used} labels")
    figures["reliability"] = str(reliability)
    calibration = figure(reliability, f"{len(labels_)} '{split}' images, {num_bins} equal-width confidence bins") + table(
        ["measure", "value"], [("accuracy", f"{metrics['accuracy']:.3f}"), ("negative log-likelihood", f"{metrics['nll']:.3f}"),
                               ("Brier score", f"{metrics['brier']:.3f}"), ("expected calibration error", f"{metrics['ece']:.3f}")])
    matrix = confusion_matrix(probs, labels_, len(names))
    confusion_png = plot_confusion_matrix(matrix, names, figures_dir / "confusion_matrix.png", f"Confusion matrix, {who}")
    figures["confusion_matrix"] = str(confusion_png)
    recall = [(name, int(matrix[k].sum()), f"{matrix[k, k] / matrix[k].sum():.2f}" if matrix[k].sum() else "–")
              for k, name in enumerate(names)]
    confusion = figure(confusion_png, f"{len(labels_)} '{split}' images") + table(["class", "test images", "recall"], recall)
    return calibration, confusion


def _agreement_section(project) -> str:
    from alkit.report.collect import label_studio_agreement
    from alkit.report.html import agreement_body

    return agreement_body(label_studio_agreement(project))
