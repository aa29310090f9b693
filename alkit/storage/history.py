"""What happened in a project, for `alkit report`: rounds with their items, Label Studio votes,
and the pool as it was when a round was selected."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.storage.schema import LabelSource, Split, images, labels, round_items, rounds


def all_rounds(connection: Connection) -> list[sa.Row]:
    """Every round row, oldest first."""
    return connection.execute(sa.select(rounds).order_by(rounds.c.id)).all()


def all_round_items(connection: Connection) -> list[sa.Row]:
    """Every round item with its image path, by round and rank."""
    query = sa.select(round_items, images.c.path).join(images, images.c.id == round_items.c.image_id)
    return connection.execute(query.order_by(round_items.c.round_id, round_items.c.rank)).all()


def non_test_image_ids(connection: Connection) -> list[int]:
    """Ids of every image outside the test split."""
    return list(connection.execute(sa.select(images.c.id).where(images.c.split != Split.TEST.value)).scalars())


def label_studio_votes(connection: Connection) -> list[sa.Row]:
    """(image_id, annotator, class_id, path) of every Label Studio label."""
    query = (
        sa.select(labels.c.image_id, labels.c.annotator, labels.c.class_id, images.c.path)
        .join(images, images.c.id == labels.c.image_id)
        .where(labels.c.source == LabelSource.LABEL_STUDIO.value)
    )
    return connection.execute(query).all()


def taken_before_round(connection: Connection, round_id: int) -> set[int]:
    """Images no longer in the pool when the round was selected: in an earlier round, or labelled
    before the round was created."""
    created_at = connection.execute(sa.select(rounds.c.created_at).where(rounds.c.id == round_id)).scalar_one()
    earlier = connection.execute(sa.select(round_items.c.image_id).where(round_items.c.round_id < round_id)).scalars()
    labelled = connection.execute(sa.select(labels.c.image_id).where(labels.c.created_at < created_at)).scalars()
    return set(earlier) | set(labelled)
