"""`alkit status`: what is in the pool, in numbers."""

from __future__ import annotations

from alkit.project import Project
from alkit.storage.labels import label_count
from alkit.storage.migrations import current_version
from alkit.storage.classes import class_names, class_rows
from alkit.storage.images import count_images_by
from alkit.storage.labels import resolved_labels
from alkit.storage.schema import ACTIVE_ROUND_STATUSES, Split, images
from alkit.storage.summary import labelled_image_splits, rounds_with_sizes, specs_with_counts
from alkit.workflows.current_posterior import current_posterior_row


def pool_status(project: Project) -> dict:
    """One JSON-ready dict; its keys are the stable `alkit status --json` contract.

    Labels are counted per split: `labels_per_class` counts the labelled images a fit trains on
    (pool and target), `test_labels_per_class` the held-out test images `alkit eval` scores.
    """
    with project.engine.connect() as connection:
        names = class_names(connection)
        by_status = count_images_by(connection, images.c.status)
        by_split = count_images_by(connection, images.c.split)
        class_by_id = {row.id: row.name for row in class_rows(connection)}
        split_by_id = labelled_image_splits(connection)
        per_class = {name: 0 for name in names}
        test_per_class = {name: 0 for name in names}
        labelled_by_split: dict[str, int] = {}
        for image_id, class_id in resolved_labels(connection).items():
            split = split_by_id.get(image_id, "?")
            labelled_by_split[split] = labelled_by_split.get(split, 0) + 1
            (test_per_class if split == Split.TEST.value else per_class)[class_by_id[class_id]] += 1
        labels_total = label_count(connection)
        round_rows = rounds_with_sizes(connection)
        spec_rows = specs_with_counts(connection)
        current = next((row for row in spec_rows if row.is_current), None)
        schema_version = current_version(connection)
    posterior = current_posterior_row(project)  # the one select, predict and eval use
    open_rounds = [row for row in round_rows if row.status in ACTIVE_ROUND_STATUSES]  # selected or waiting in Label Studio
    return {
        "project": str(project.directory),
        "schema_version": schema_version,
        "images_total": sum(by_status.values()),
        "images_by_status": by_status,
        "images_by_split": by_split,
        "classes": names,
        "labels_total": int(labels_total),
        "labeled_images": sum(labelled_by_split.values()),
        "labeled_images_by_split": labelled_by_split,
        "labels_per_class": per_class,
        "test_labels_per_class": test_per_class,
        "rounds": len(round_rows),
        "open_rounds": [row.id for row in open_rounds],
        "open_round_details": [
            {"id": row.id, "status": row.status, "strategy": row.strategy, "items": int(row.item_count),
             "created_at": row.created_at.isoformat() if row.created_at else None}
            for row in open_rounds
        ],
        "model": None if current is None else {"spec_id": current.id, "name": current.name, "kind": current.kind},
        "embedding_specs": [
            {"id": row.id, "name": row.name, "kind": row.kind, "current": bool(row.is_current), "embedded": int(row.embedded)}
            for row in spec_rows
        ],
        "posterior": None
        if posterior is None
        else {
            "version": posterior.version,
            "kind": posterior.kind,
            "curvature_source": posterior.curvature_source,
            "labels_used": posterior.labels_used,
            "parent_version": posterior.parent_version,
            "path": str(project.resolve_stored(posterior.path)),
        },
    }
