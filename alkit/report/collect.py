"""What the report shows, read from the project database into plain dataclasses.

Queries only (no plotting, no HTML). Scores of the pool at the time of a round are not
stored by `alkit select`, so `round_pool_scores` recomputes them with the posterior version
that chose the round and the round's recorded settings (the same scoring code, so the
selected items get back the scores stored for them).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from alkit.project import Project
from alkit.storage.classes import class_rows
from alkit.storage.labels import resolved_labels
from alkit.storage.history import all_round_items, all_rounds, label_studio_votes, non_test_image_ids, taken_before_round
from alkit.storage.posteriors import posterior_version_row
from alkit.storage.schema import Split
from alkit.workflows.select import SelectedItem

POOL_SCORE_SAMPLE = 4000  # pool items rescored per round for the histogram (a uniform sample)


@dataclass
class SelectedImage(SelectedItem):
    """One selected image as `alkit select` recorded it, and the label it got since."""

    label: str | None  # the resolved label it got, None while unlabelled


@dataclass
class RoundSummary:
    round_id: int
    number: int  # 1-based position among the project's rounds
    strategy: str
    method: str  # how the pool was scored, as recorded by `alkit select`
    status: str
    created_at: str
    posterior_version: int | None
    settings: dict
    items: list[SelectedImage] = field(default_factory=list)


@dataclass
class Agreement:
    """Label Studio annotations of images labelled by more than one annotator."""

    annotators: dict[str, int]  # annotator -> annotations
    images_with_several: int
    conflicts: int  # images whose annotators chose different classes
    disagreements_per_class: dict[str, int]  # class -> conflicting images where someone chose it
    examples: list[tuple[str, dict[str, str]]]  # (path, annotator -> class) of a few conflicts


def class_names(project: Project) -> list[str]:
    with project.engine.connect() as connection:
        return [row.name for row in class_rows(connection)]


def round_summaries(project: Project) -> list[RoundSummary]:
    """Every round in order, with its selected images, their predictions and their labels."""
    with project.engine.connect() as connection:
        names = {row.id: row.name for row in class_rows(connection)}
        round_rows = all_rounds(connection)
        item_rows = all_round_items(connection)
        resolved = resolved_labels(connection, [row.image_id for row in item_rows]) if item_rows else {}
    by_round: dict[int, list[SelectedImage]] = defaultdict(list)
    for row in item_rows:
        components = row.components or {}
        label_id = resolved.get(row.image_id)
        by_round[row.round_id].append(SelectedImage(
            image_id=row.image_id, path=row.path, rank=row.rank, score=row.score,
            predicted_class=components.get("predicted_class"), probability=components.get("probability"),
            label=None if label_id is None else names.get(label_id),
        ))
    return [
        RoundSummary(
            round_id=row.id, number=number, strategy=row.strategy, method=str((row.settings or {}).get("method", row.strategy)),
            status=row.status, created_at=row.created_at.isoformat() if row.created_at else "",
            posterior_version=row.posterior_version, settings=dict(row.settings or {}), items=by_round.get(row.id, []),
        )
        for number, row in enumerate(round_rows, start=1)
    ]


def class_balance(project: Project, summaries: list[RoundSummary]) -> tuple[list[str], np.ndarray]:
    """(row names, counts (R, K)): labels per class on non-test images, cumulative after each round.

    Labelled images that no round selected (imported with `alkit labels import`, labelled
    directly in Label Studio) form a first row "labelled outside any round" when there are any; each image counts once, under its resolved label.
    """
    with project.engine.connect() as connection:
        rows = class_rows(connection)
        ids = non_test_image_ids(connection)
        resolved = resolved_labels(connection, ids) if ids else {}
    position = {row.id: index for index, row in enumerate(rows)}
    first_round = {}
    for summary in summaries:
        for item in summary.items:
            first_round.setdefault(item.image_id, summary.number)
    per_step: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(len(rows), dtype=np.int64))
    for image_id, class_id in resolved.items():
        per_step[first_round.get(image_id, 0)][position[class_id]] += 1
    names, counts, running = [], [], np.zeros(len(rows), dtype=np.int64)
    if per_step.get(0) is not None and per_step[0].sum():
        running = running + per_step[0]
        names.append("labelled outside any round")
        counts.append(running.copy())
    for summary in summaries:
        running = running + per_step.get(summary.number, np.zeros(len(rows), dtype=np.int64))
        names.append(f"after round {summary.number}")
        counts.append(running.copy())
    return names, np.array(counts, dtype=np.int64).reshape(len(names), len(rows))


def label_studio_agreement(project: Project, max_examples: int = 8) -> Agreement | None:
    """Agreement between Label Studio annotators; None when no image has Label Studio labels."""
    with project.engine.connect() as connection:
        names = {row.id: row.name for row in class_rows(connection)}
        rows = label_studio_votes(connection)
    if not rows:
        return None
    votes: dict[int, dict[str, str]] = defaultdict(dict)
    paths = {}
    for row in rows:
        votes[row.image_id][row.annotator] = names.get(row.class_id, "?")
        paths[row.image_id] = row.path
    several = {image_id: by for image_id, by in votes.items() if len(by) > 1}
    conflicting = {image_id: by for image_id, by in several.items() if len(set(by.values())) > 1}
    per_class: Counter = Counter()
    for by in conflicting.values():
        per_class.update(set(by.values()))
    return Agreement(
        annotators=dict(Counter(row.annotator for row in rows).most_common()),
        images_with_several=len(several),
        conflicts=len(conflicting),
        disagreements_per_class=dict(per_class.most_common()),
        examples=[(paths[i], by) for i, by in list(conflicting.items())[:max_examples]],
    )


def evaluation_history(project: Project, split: str = "test") -> list[dict]:
    """Recorded `alkit eval` results on a split, oldest first; one per posterior version (the latest)."""
    from alkit.workflows.evaluate import read_history

    latest: dict[object, dict] = {}
    for entry in read_history(project):
        if entry.get("split") == split:
            latest[entry.get("posterior_version", len(latest))] = entry
    return sorted(latest.values(), key=lambda e: (e.get("labels_used", 0), e.get("posterior_version") or 0))


def test_predictions(project: Project, split: str = "test"):
    """(class names, probs (n, K), labels (n,), posterior row) of the current posterior on a split.

    Raises StateError (with the fix) when there is no posterior or no labelled image there.
    """
    from alkit.workflows.evaluate import labelled_split
    from alkit.workflows.current_posterior import current_posterior

    context, row, posterior = current_posterior(project)
    features, labels_ = labelled_split(project, context, posterior.feature_kind, split)
    return context.class_names, posterior.predict(features), labels_, row


def confusion_matrix(probs: np.ndarray, labels_: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts: row = true class, column = arg-max predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels_, probs.argmax(axis=1)), 1)
    return matrix


def round_pool_scores(
    project: Project, summary: RoundSummary, sample: int = POOL_SCORE_SAMPLE
) -> tuple[np.ndarray, np.ndarray, str]:
    """(image ids, scores, note) of the pool as it was when the round was selected.

    The pool then: embedded pool images not in an earlier round and not labelled before the
    round was created (a uniform sample of `sample` of them). They are scored with the
    posterior version that chose the round and the round's recorded strategy and seed.
    Returns empty arrays and the reason when that cannot be redone.
    """
    from alkit.errors import AlkitError
    from alkit.posterior.io import load_posterior
    from alkit.storage.vectors import embedded_image_ids
    from alkit.workflows.current_posterior import posterior_context

    if summary.strategy == "random":
        return _EMPTY, _EMPTY, "random selection: its scores are uniform draws, not a measure of the images"
    if summary.posterior_version is None:
        return _EMPTY, _EMPTY, f"selected by {summary.method}, without posterior scores"
    try:
        context = posterior_context(project)
        with project.engine.connect() as connection:
            row = posterior_version_row(connection, summary.posterior_version)
            taken = taken_before_round(connection, summary.round_id)
        if row is None or row.spec_id != context.spec.id:
            return _EMPTY, _EMPTY, f"posterior v{summary.posterior_version} is gone or was fitted on other embeddings"
        posterior = load_posterior(project.resolve_stored(row.path), context.spec.key, context.class_names)
        pool = embedded_image_ids(project, context.spec.id, splits=(Split.POOL,))
        pool = np.array([i for i in pool.tolist() if i not in taken], dtype=np.int64)
        if len(pool) > sample:
            pool = np.sort(np.random.default_rng(summary.round_id).choice(pool, sample, replace=False))
        scores = _score_like_select(project, context, posterior, pool, summary.settings)
    except (AlkitError, KeyError, TypeError, ValueError) as error:
        return _EMPTY, _EMPTY, f"could not rescore the pool ({error})"
    note = f"{len(pool)} pool images rescored with posterior v{summary.posterior_version}"
    return pool, scores, note


_EMPTY = np.array([], dtype=np.int64)


def _score_like_select(project, context, posterior, candidate_ids: np.ndarray, recorded: dict) -> np.ndarray:
    """Scores with `alkit select`'s own scoring function and the round's recorded settings."""
    import dataclasses

    from alkit.workflows.select import SelectSettings, score_candidates

    known = {f.name for f in dataclasses.fields(SelectSettings)}
    values = {k: v for k, v in recorded.items() if k in known}
    values["like"] = tuple(values.get("like") or ())
    settings = SelectSettings(**values)
    if len(candidate_ids) == 0:
        return np.array([])
    return score_candidates(project, context, posterior, candidate_ids, settings)
