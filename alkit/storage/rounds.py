"""The `rounds` and `round_items` tables: recording a round, reading it, its items leaving it, closing it.

An item waits while it has no outcome and its image no label; a round whose every item has
stopped waiting is complete.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.storage.db import utcnow
from alkit.storage.schema import RoundItemOutcome, RoundStatus, images, labels, round_items, rounds

COMPLETE_REASON = "complete"
WAITING = "waiting"  # progress bucket of items still waiting (not an outcome)
LABELLED = "labelled"  # progress bucket of labelled items


def _waiting(round_id_column) -> tuple:
    return (
        round_items.c.round_id == round_id_column,
        round_items.c.outcome.is_(None),
        round_items.c.image_id.not_in(sa.select(labels.c.image_id)),
    )


def insert_round(connection: Connection, *, strategy: str, settings: dict, seed: int | None, created_at: datetime,
                 embedding_spec_id: int | None, posterior_version: int | None) -> int:
    """Record a new open round; returns its id."""
    return connection.execute(
        rounds.insert()
        .values(strategy=strategy, settings=settings, seed=seed, status=RoundStatus.OPEN.value, created_at=created_at,
                embedding_spec_id=embedding_spec_id, posterior_version=posterior_version)
        .returning(rounds.c.id)
    ).scalar_one()


def insert_round_items(connection: Connection, rows: list[dict[str, Any]]) -> None:
    """Rows of `round_items` (round_id, image_id, rank, score, components)."""
    if rows:
        connection.execute(round_items.insert(), rows)


def round_row(connection: Connection, round_id: int) -> sa.Row | None:
    return connection.execute(sa.select(rounds).where(rounds.c.id == round_id)).first()


def newest_round(connection: Connection, status: RoundStatus) -> sa.Row | None:
    """The newest round with `status`, or None."""
    return connection.execute(sa.select(rounds).where(rounds.c.status == status).order_by(rounds.c.id.desc()).limit(1)).first()


def round_rows(connection: Connection, round_ids: list[int] | None = None) -> list[sa.Row]:
    """Every round (or those of `round_ids`), oldest first."""
    query = sa.select(rounds).order_by(rounds.c.id)
    if round_ids is not None:
        query = query.where(rounds.c.id.in_(round_ids))
    return list(connection.execute(query))


def rounds_with_status(connection: Connection, status: RoundStatus) -> list[sa.Row]:
    return list(connection.execute(sa.select(rounds.c.id, rounds.c.created_at).where(rounds.c.status == status)))


def item_buckets(connection: Connection, round_ids: list[int] | None = None) -> dict[int, dict[str, int]]:
    """round id -> items per bucket: `labelled`, an outcome, or `waiting` (counted here: portable, rounds are small)."""
    has_label = sa.exists().where(labels.c.image_id == round_items.c.image_id)
    query = sa.select(round_items.c.round_id, round_items.c.outcome, has_label.label("labelled"))
    if round_ids is not None:
        query = query.where(round_items.c.round_id.in_(round_ids))
    counts: dict[int, dict[str, int]] = {}
    for row in connection.execute(query):
        bucket = counts.setdefault(row.round_id, {})
        key = LABELLED if row.labelled else (row.outcome or WAITING)
        bucket[key] = bucket.get(key, 0) + 1
    return counts


def item_paths(connection: Connection, round_id: int) -> list[sa.Row]:
    """(id, path) of every image selected in the round."""
    query = sa.select(images.c.id, images.c.path).join(round_items, round_items.c.image_id == images.c.id)
    return connection.execute(query.where(round_items.c.round_id == round_id)).all()


def items_to_push(connection: Connection, round_id: int) -> list[sa.Row]:
    """Items still in the round, by rank, with their image's path and content hash."""
    return connection.execute(
        sa.select(
            round_items.c.image_id, round_items.c.components, round_items.c.score, round_items.c.rank,
            images.c.path, images.c.content_hash,
        )
        .join(images, images.c.id == round_items.c.image_id)
        .where(round_items.c.round_id == round_id, round_items.c.outcome.is_(None))
        .order_by(round_items.c.rank)
    ).all()


def waiting_items(connection: Connection, round_id: int) -> list[int]:
    """Image ids of the round's items still waiting for a label."""
    return list(connection.execute(sa.select(round_items.c.image_id).where(*_waiting(round_id))).scalars())


def waiting_count(connection: Connection, round_id: int) -> int:
    return int(connection.execute(sa.select(sa.func.count()).select_from(round_items).where(*_waiting(round_id))).scalar())


def latest_item_facts(connection: Connection, image_ids: list[int]) -> dict[int, dict[str, Any]]:
    """image id -> {acquisition_score, strategy, round} of the newest round that holds it."""
    facts: dict[int, dict[str, Any]] = {}
    for row in connection.execute(
        sa.select(round_items.c.image_id, round_items.c.score, rounds.c.strategy, rounds.c.id)
        .join(rounds, rounds.c.id == round_items.c.round_id)
        .where(round_items.c.image_id.in_(image_ids))
        .order_by(rounds.c.id)
    ):
        facts[row.image_id] = {"acquisition_score": row.score, "strategy": row.strategy, "round": row.id}
    return facts


def set_item_outcome(connection: Connection, round_id: int, image_ids: list[int], outcome: RoundItemOutcome) -> None:
    """The items (still in the round) leave it with `outcome`."""
    connection.execute(
        round_items.update()
        .where(round_items.c.round_id == round_id, round_items.c.image_id.in_(image_ids), round_items.c.outcome.is_(None))
        .values(outcome=outcome.value)
    )


def mark_round_pushed(connection: Connection, round_id: int) -> None:
    connection.execute(
        rounds.update().where(rounds.c.id == round_id, rounds.c.status == RoundStatus.OPEN).values(status=RoundStatus.PUSHED.value)
    )


def mark_round_labeled(connection: Connection, round_id: int) -> None:
    connection.execute(rounds.update().where(rounds.c.id == round_id).values(status=RoundStatus.LABELED.value))


def close_round_row(connection: Connection, round_id: int, reason: str) -> None:
    connection.execute(
        rounds.update().where(rounds.c.id == round_id).values(status=RoundStatus.CLOSED.value, closed_at=utcnow(), closed_reason=reason)
    )


def complete_rounds(connection: Connection) -> list[int]:
    """Pushed rounds whose every item is labelled or has left become `labeled` (complete); returns their ids."""
    waiting_item = sa.select(round_items.c.round_id).where(*_waiting(rounds.c.id)).exists()
    ids = list(connection.execute(sa.select(rounds.c.id).where(rounds.c.status == RoundStatus.PUSHED, ~waiting_item)).scalars())
    if ids:
        connection.execute(
            rounds.update().where(rounds.c.id.in_(ids)).values(
                status=RoundStatus.LABELED.value, closed_at=utcnow(), closed_reason=COMPLETE_REASON
            )
        )
    return ids

