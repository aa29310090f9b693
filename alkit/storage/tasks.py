"""The `ls_tasks` and `ls_task_events` tables: which Label Studio task speaks for which image,
and the record of items that left a round (skipped, deleted, requeued, excluded)."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.storage.db import utcnow
from alkit.storage.inserts import insert_ignoring_conflicts
from alkit.storage.schema import ACTIVE_ROUND_STATUSES, RoundItemOutcome, images, labels, ls_task_events, ls_tasks, round_items, rounds

EXCLUDED_EVENT = "excluded"  # event of an image excluded from selection (not a round outcome)


def task_images(connection: Connection, ls_project_id: int | None = None) -> dict[int, int]:
    """task id -> image id of the recorded tasks (of one Label Studio project, or all)."""
    query = sa.select(ls_tasks.c.task_id, ls_tasks.c.image_id)
    if ls_project_id is not None:
        query = query.where(ls_tasks.c.ls_project_id == ls_project_id)
    return dict(connection.execute(query).all())


def recorded_task_ids(connection: Connection) -> set[int]:
    return set(connection.execute(sa.select(ls_tasks.c.task_id)).scalars())


def images_with_tasks(connection: Connection, ls_project_id: int, image_ids: Iterable[int]) -> set[int]:
    """Those of `image_ids` that already have a recorded task in the Label Studio project."""
    query = sa.select(ls_tasks.c.image_id).where(ls_tasks.c.ls_project_id == ls_project_id, ls_tasks.c.image_id.in_(list(image_ids)))
    return set(connection.execute(query).scalars())


def record_tasks(connection: Connection, ls_project_id: int, round_id: int, pairs: list[tuple[int, int]]) -> None:
    """Record (image id, task id) pairs; pairs recorded already are left as they are."""
    now = utcnow()
    insert_ignoring_conflicts(
        connection,
        ls_tasks,
        [{"image_id": i, "ls_project_id": ls_project_id, "task_id": t, "round_id": round_id, "pushed_at": now} for i, t in pairs],
    )


def round_tasks(connection: Connection, round_id: int) -> list[sa.Row]:
    """(task_id, path) of every recorded task of a round."""
    return connection.execute(
        sa.select(ls_tasks.c.task_id, images.c.path).join(images, images.c.id == ls_tasks.c.image_id).where(ls_tasks.c.round_id == round_id)
    ).all()


def waiting_tasks(connection: Connection, ls_project_id: int) -> dict[int, tuple[int, int]]:
    """task id -> (image id, round id) of recorded tasks whose item still waits in an active round."""
    query = (
        sa.select(ls_tasks.c.task_id, ls_tasks.c.image_id, ls_tasks.c.round_id)
        .join(
            round_items,
            (round_items.c.round_id == ls_tasks.c.round_id) & (round_items.c.image_id == ls_tasks.c.image_id),
        )
        .join(rounds, rounds.c.id == ls_tasks.c.round_id)
        .where(
            ls_tasks.c.ls_project_id == ls_project_id,
            rounds.c.status.in_([status.value for status in ACTIVE_ROUND_STATUSES]),
            round_items.c.outcome.is_(None),
            ls_tasks.c.image_id.not_in(sa.select(labels.c.image_id)),
        )
    )
    return {row.task_id: (row.image_id, row.round_id) for row in connection.execute(query)}


def round_task_of_images(connection: Connection, round_id: int, image_ids: list[int]) -> dict[int, tuple[int, int]]:
    """image id -> (Label Studio project id, task id) of the round's recorded tasks of `image_ids`."""
    return {
        row.image_id: (row.ls_project_id, row.task_id)
        for row in connection.execute(
            sa.select(ls_tasks.c.image_id, ls_tasks.c.ls_project_id, ls_tasks.c.task_id).where(
                ls_tasks.c.image_id.in_(image_ids), ls_tasks.c.round_id == round_id
            )
        )
    }


def forget_round_tasks(connection: Connection, round_id: int, image_ids: list[int]) -> None:
    """The round's tasks of `image_ids` no longer speak for their images."""
    connection.execute(ls_tasks.delete().where(ls_tasks.c.image_id.in_(image_ids), ls_tasks.c.round_id == round_id))


def record_events(connection: Connection, rows: list[dict]) -> None:
    """Rows of `ls_task_events` (image_id, round_id, ls_project_id, task_id, event, reason)."""
    if rows:
        now = utcnow()
        connection.execute(ls_task_events.insert(), [{"created_at": now, **row} for row in rows])


def skip_counts(connection: Connection, image_ids: list[int]) -> dict[int, int]:
    """image id -> times its task was skipped in Label Studio (images never skipped are absent)."""
    return dict(
        connection.execute(
            sa.select(ls_task_events.c.image_id, sa.func.count())
            .where(ls_task_events.c.image_id.in_(image_ids), ls_task_events.c.event == RoundItemOutcome.SKIPPED)
            .group_by(ls_task_events.c.image_id)
        ).all()
    )

