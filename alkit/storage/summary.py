"""Counts behind `alkit status`: labelled images by split, rounds with their sizes, specs with
how many images each has embedded."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.storage.schema import embedding_specs, embeddings, images, labels, round_items, rounds


def labelled_image_splits(connection: Connection) -> dict[int, str]:
    """image id -> split of every image with at least one label."""
    query = sa.select(images.c.id, images.c.split).where(sa.exists().where(labels.c.image_id == images.c.id))
    return dict(connection.execute(query).all())


def rounds_with_sizes(connection: Connection) -> list[sa.Row]:
    """(id, strategy, status, created_at, item_count) of every round, oldest first."""
    query = (
        sa.select(rounds.c.id, rounds.c.strategy, rounds.c.status, rounds.c.created_at,
                  sa.func.count(round_items.c.image_id).label("item_count"))
        .outerjoin(round_items, round_items.c.round_id == rounds.c.id)
        .group_by(rounds.c.id)
        .order_by(rounds.c.id)
    )
    return connection.execute(query).all()


def specs_with_counts(connection: Connection) -> list[sa.Row]:
    """(id, name, kind, is_current, embedded) of every embedding spec, oldest first."""
    query = (
        sa.select(embedding_specs.c.id, embedding_specs.c.name, embedding_specs.c.kind, embedding_specs.c.is_current,
                  sa.func.count(embeddings.c.image_id).label("embedded"))
        .outerjoin(embeddings, embeddings.c.spec_id == embedding_specs.c.id)
        .group_by(embedding_specs.c.id)
        .order_by(embedding_specs.c.id)
    )
    return connection.execute(query).all()
