"""The `labels` table: counts, lookups and the upserts of file imports and Label Studio pulls.

One row per (image, source, annotator); an upsert adds, updates or leaves a row and says which.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.storage.db import IN_LIST_IDS
from alkit.storage.schema import LabelSource, classes, images, labels


@dataclass
class LabelChanges:
    """Rows added, updated (other class or annotation) and removed by one upsert."""

    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0


def label_count(connection: Connection) -> int:
    return int(connection.execute(sa.select(sa.func.count()).select_from(labels)).scalar())


def labelled_among(connection: Connection, image_ids: Iterable[int]) -> set[int]:
    """Those of `image_ids` with at least one label."""
    query = sa.select(labels.c.image_id).where(labels.c.image_id.in_(list(image_ids))).distinct()
    return set(connection.execute(query).scalars())


def labelled_images():
    """A subquery of every labelled image id (for `not_in` filters)."""
    return sa.select(labels.c.image_id)


def insert_labels(connection: Connection, rows: list[dict]) -> None:
    """Add label rows (image_id, class_id, source, annotator, created_at) as they are."""
    if rows:
        connection.execute(labels.insert(), rows)


def upsert_file_labels(connection: Connection, chosen: dict[int, int], annotator: str, now: datetime) -> LabelChanges:
    """Store `image id -> class id` as labels of source `file` by `annotator`."""
    mine = (labels.c.source == LabelSource.FILE, labels.c.annotator == annotator)
    existing = dict(connection.execute(sa.select(labels.c.image_id, labels.c.class_id).where(*mine)).all())
    changes = LabelChanges()
    for image_id, class_id in chosen.items():
        if image_id not in existing:
            connection.execute(
                labels.insert().values(
                    image_id=image_id, class_id=class_id, source=LabelSource.FILE.value, annotator=annotator, created_at=now
                )
            )
            changes.added += 1
        elif existing[image_id] != class_id:
            connection.execute(
                labels.update().where(labels.c.image_id == image_id, *mine).values(class_id=class_id, created_at=now)
            )
            changes.updated += 1
        else:
            changes.unchanged += 1
    return changes


def reconcile_labelstudio_labels(
    connection: Connection, image_id: int, desired: dict[str, tuple[int, str]], now: datetime
) -> LabelChanges:
    """Make the image's `labelstudio` labels exactly `desired` (annotator -> (class id, annotation id)):
    new annotators are added, changed ones updated, annotators no longer there removed."""
    mine = (labels.c.image_id == image_id) & (labels.c.source == LabelSource.LABEL_STUDIO)
    stored = {
        row.annotator: (row.class_id, row.external_id)
        for row in connection.execute(sa.select(labels.c.annotator, labels.c.class_id, labels.c.external_id).where(mine))
    }
    changes = LabelChanges()
    for annotator, (class_id, external_id) in desired.items():
        if annotator not in stored:
            connection.execute(
                labels.insert().values(
                    image_id=image_id, class_id=class_id, source=LabelSource.LABEL_STUDIO.value,
                    annotator=annotator, external_id=external_id, created_at=now,
                )
            )
            changes.added += 1
        elif stored[annotator] != (class_id, external_id):
            connection.execute(
                labels.update().where(mine, labels.c.annotator == annotator).values(
                    class_id=class_id, external_id=external_id, created_at=now
                )
            )
            changes.updated += 1
    gone = [annotator for annotator in stored if annotator not in desired]
    if gone:
        connection.execute(labels.delete().where(mine, labels.c.annotator.in_(gone)))
        changes.removed += len(gone)
    return changes


def exported_labels(connection: Connection) -> list[sa.Row]:
    """Every label with its image's path and class name, oldest first."""
    query = (
        sa.select(
            images.c.id.label("image_id"), images.c.path, classes.c.name.label("label"), labels.c.source,
            labels.c.annotator, labels.c.created_at,
        )
        .join(images, images.c.id == labels.c.image_id)
        .join(classes, classes.c.id == labels.c.class_id)
        .order_by(labels.c.created_at, labels.c.id)
    )
    return list(connection.execute(query))


def resolved_labels(connection: Connection, image_ids: Iterable[int] | None = None) -> dict[int, int]:
    """One class id per labelled image: the majority over its labels, ties to the newest."""
    query = sa.select(labels.c.image_id, labels.c.class_id, labels.c.created_at, labels.c.id)
    wanted = None if image_ids is None else set(image_ids)
    if wanted is not None and len(wanted) <= IN_LIST_IDS:
        query = query.where(labels.c.image_id.in_(sorted(wanted)))
    # A longer id list (a whole 1M pool) is filtered here instead: SQLite refuses that many bound
    # parameters, and the labels table is small next to the pool.
    votes: dict[int, list[tuple]] = defaultdict(list)
    for image_id, class_id, created_at, label_id in connection.execute(query):
        if wanted is None or image_id in wanted:
            votes[image_id].append((class_id, created_at, label_id))
    resolved: dict[int, int] = {}
    for image_id, rows in votes.items():
        counts = Counter(class_id for class_id, _, _ in rows)
        best = max(counts.values())
        tied = {class_id for class_id, count in counts.items() if count == best}
        newest = max((row for row in rows if row[0] in tied), key=lambda row: (row[1], row[2]))
        resolved[image_id] = newest[0]
    return resolved
