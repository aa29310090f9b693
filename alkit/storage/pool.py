"""Queries over the pool database shared by several workflows (one place per question)."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.storage.schema import ImageStatus, classes, images, labels


def insert_ignoring_conflicts(connection: Connection, table: sa.Table, rows: list[dict]) -> int:
    """Insert rows, skipping any that violate a unique constraint; returns rows inserted.

    Used where two processes may register the same thing at once: the database, not a
    read-then-write race, decides who wins.
    """
    if not rows:
        return 0
    dialect = connection.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # pragma: no cover - other backends fall back to row-by-row
        inserted = 0
        for row in rows:
            try:
                with connection.begin_nested():
                    connection.execute(table.insert().values(**row))
                inserted += 1
            except sa.exc.IntegrityError:
                pass
        return inserted
    # RETURNING counts reliably on both backends (executemany rowcount does not on psycopg).
    statement = insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)
    return len(connection.execute(statement, rows).all())


def class_names(connection: Connection) -> list[str]:
    """Class names in their stored order (the K axis of every probability array)."""
    return list(connection.execute(sa.select(classes.c.name).order_by(classes.c.position)).scalars())


def class_rows(connection: Connection) -> list[sa.Row]:
    return list(connection.execute(sa.select(classes).order_by(classes.c.position)))


def resolved_labels(connection: Connection, image_ids: Iterable[int] | None = None) -> dict[int, int]:
    """One class id per labelled image: the majority over its labels, ties to the newest."""
    query = sa.select(labels.c.image_id, labels.c.class_id, labels.c.created_at, labels.c.id)
    if image_ids is not None:
        query = query.where(labels.c.image_id.in_(list(image_ids)))
    votes: dict[int, list[tuple]] = defaultdict(list)
    for image_id, class_id, created_at, label_id in connection.execute(query):
        votes[image_id].append((class_id, created_at, label_id))
    resolved: dict[int, int] = {}
    for image_id, rows in votes.items():
        counts = Counter(class_id for class_id, _, _ in rows)
        best = max(counts.values())
        tied = {class_id for class_id, count in counts.items() if count == best}
        newest = max((row for row in rows if row[0] in tied), key=lambda row: (row[1], row[2]))
        resolved[image_id] = newest[0]
    return resolved


def count_images_by(connection: Connection, column: sa.Column) -> dict[str, int]:
    rows = connection.execute(sa.select(column, sa.func.count()).group_by(column))
    return {str(key): int(count) for key, count in rows}


def image_ids_with_status(connection: Connection, statuses: Iterable[ImageStatus], split: str | None = None) -> list[int]:
    query = sa.select(images.c.id).where(images.c.status.in_([s.value for s in statuses]))
    if split is not None:
        query = query.where(images.c.split == split)
    return list(connection.execute(query.order_by(images.c.id)).scalars())
