"""Selection rounds that always finish: progress, items leaving a round, closing by hand or by age.

A round is complete when each item is labelled or has left it: skipped in Label Studio, its
task deleted there, or requeued when the round was closed. An item that leaves goes back to
the pool (its image selectable again), or, after `ls_max_skips` skips, is excluded from
selection with the reason recorded. Every such event is a row of `ls_task_events`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from alkit.errors import InputError, StateError
from alkit.project import Project
from alkit.storage.db import utcnow
from alkit.storage.schema import (
    ACTIVE_ROUND_STATUSES,
    ImageStatus,
    RoundItemOutcome,
    RoundStatus,
    embeddings,
    images,
    labels,
    ls_task_events,
    ls_tasks,
    round_items,
    rounds,
)


EXCLUDED_PREFIX = "excluded from selection"


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


@dataclass
class RoundProgress:
    round_id: int
    status: str
    strategy: str
    items: int
    labelled: int
    skipped: int
    deleted: int
    requeued: int
    dropped: int
    waiting: int
    created_at: str
    age_hours: float
    closed_reason: str | None

    def as_json(self) -> dict:
        return asdict(self)


def round_progress(project: Project, round_ids: list[int] | None = None) -> list[RoundProgress]:
    """Progress of every round (or of `round_ids`), oldest first."""
    has_label = sa.exists().where(labels.c.image_id == round_items.c.image_id)
    query = sa.select(round_items.c.round_id, round_items.c.outcome, has_label.label("labelled"))
    now = datetime.now(timezone.utc)
    with project.engine.connect() as connection:
        round_query = sa.select(rounds).order_by(rounds.c.id)
        if round_ids is not None:
            round_query = round_query.where(rounds.c.id.in_(round_ids))
            query = query.where(round_items.c.round_id.in_(round_ids))
        round_rows = connection.execute(round_query).all()
        counts: dict[int, dict[str, int]] = {}
        for row in connection.execute(query):  # one row per item, counted here: portable, rounds are small
            bucket = counts.setdefault(row.round_id, {})
            key = "labelled" if row.labelled else (row.outcome or "waiting")
            bucket[key] = bucket.get(key, 0) + 1
    result = []
    for row in round_rows:
        bucket = counts.get(row.id, {})
        created = _aware(row.created_at)
        result.append(
            RoundProgress(
                round_id=row.id, status=row.status, strategy=row.strategy, items=sum(bucket.values()),
                labelled=bucket.get("labelled", 0), skipped=bucket.get(RoundItemOutcome.SKIPPED.value, 0),
                deleted=bucket.get(RoundItemOutcome.DELETED.value, 0), requeued=bucket.get(RoundItemOutcome.REQUEUED.value, 0),
                dropped=bucket.get(RoundItemOutcome.DROPPED.value, 0), waiting=bucket.get("waiting", 0),
                created_at=created.isoformat(), age_hours=round((now - created).total_seconds() / 3600.0, 3),
                closed_reason=row.closed_reason,
            )
        )
    return result


def _pool_status(connection, image_ids: list[int]) -> None:
    """Images without a label go back to the pool: `embedded` with vectors, else `registered`."""
    if not image_ids:
        return
    now = utcnow()
    unlabelled = (
        images.c.id.in_(image_ids),
        ~sa.exists().where(labels.c.image_id == images.c.id),
        images.c.status != ImageStatus.REJECTED.value,
    )
    has_vectors = sa.exists().where(embeddings.c.image_id == images.c.id)
    connection.execute(images.update().where(*unlabelled, has_vectors).values(status=ImageStatus.EMBEDDED.value, updated_at=now))
    connection.execute(images.update().where(*unlabelled, ~has_vectors).values(status=ImageStatus.REGISTERED.value, updated_at=now))


def release_items(
    connection, round_id: int, image_ids: list[int], outcome: RoundItemOutcome, reason: str, max_skips: int = 0
) -> list[int]:
    """Items leave round `round_id` with `outcome` (recorded as events); their tasks stop speaking
    for their images (except DROPPED: the task stays and a late label still counts). Unlabelled
    images go back to the pool, or are excluded when skipped `max_skips` times (> 0).
    Returns the ids of images excluded."""
    if not image_ids:
        return []
    now = utcnow()
    connection.execute(
        round_items.update()
        .where(round_items.c.round_id == round_id, round_items.c.image_id.in_(image_ids), round_items.c.outcome.is_(None))
        .values(outcome=outcome.value)
    )
    tasks = {
        row.image_id: (row.ls_project_id, row.task_id)
        for row in connection.execute(
            sa.select(ls_tasks.c.image_id, ls_tasks.c.ls_project_id, ls_tasks.c.task_id).where(
                ls_tasks.c.image_id.in_(image_ids), ls_tasks.c.round_id == round_id
            )
        )
    }
    connection.execute(
        ls_task_events.insert(),
        [
            {
                "image_id": image_id, "round_id": round_id, "ls_project_id": tasks.get(image_id, (None, None))[0],
                "task_id": tasks.get(image_id, (None, None))[1], "event": outcome.value, "reason": reason, "created_at": now,
            }
            for image_id in image_ids
        ],
    )
    if outcome is RoundItemOutcome.DROPPED:
        return []
    connection.execute(ls_tasks.delete().where(ls_tasks.c.image_id.in_(image_ids), ls_tasks.c.round_id == round_id))
    excluded: list[int] = []
    if outcome is RoundItemOutcome.SKIPPED and max_skips > 0:
        skips = dict(
            connection.execute(
                sa.select(ls_task_events.c.image_id, sa.func.count())
                .where(ls_task_events.c.image_id.in_(image_ids), ls_task_events.c.event == RoundItemOutcome.SKIPPED.value)
                .group_by(ls_task_events.c.image_id)
            ).all()
        )
        labelled = set(connection.execute(sa.select(labels.c.image_id).where(labels.c.image_id.in_(image_ids))).scalars())
        excluded = sorted(i for i in image_ids if skips.get(i, 0) >= max_skips and i not in labelled)
        for image_id in excluded:
            why = f"{EXCLUDED_PREFIX}: skipped {skips[image_id]} times in Label Studio (ls_max_skips = {max_skips})"
            connection.execute(
                images.update().where(images.c.id == image_id).values(status=ImageStatus.REJECTED.value, error_reason=why, updated_at=now)
            )
            connection.execute(
                ls_task_events.insert().values(image_id=image_id, round_id=round_id, event="excluded", reason=why, created_at=now)
            )
    _pool_status(connection, [i for i in image_ids if i not in set(excluded)])
    return excluded


def complete_rounds(connection) -> list[int]:
    """Active rounds whose every item is labelled or has left become `labeled` (complete)."""
    waiting_item = (
        sa.select(round_items.c.round_id)
        .where(
            round_items.c.round_id == rounds.c.id,
            round_items.c.outcome.is_(None),
            round_items.c.image_id.not_in(sa.select(labels.c.image_id)),
        )
        .exists()
    )
    ids = list(
        connection.execute(sa.select(rounds.c.id).where(rounds.c.status == RoundStatus.PUSHED, ~waiting_item)).scalars()
    )
    if ids:
        connection.execute(
            rounds.update().where(rounds.c.id.in_(ids)).values(status=RoundStatus.LABELED, closed_at=utcnow(), closed_reason="complete")
        )
    return ids


@dataclass
class CloseResult:
    round_id: int
    requeued: list[int]
    dropped: list[int]
    status_before: str
    reason: str

    def as_json(self) -> dict:
        return asdict(self)


def close_round(project: Project, round_id: int, requeue: bool = False, reason: str = "closed by hand") -> CloseResult:
    """Close a round: its waiting items are requeued (back to the pool, their tasks no longer
    count) or dropped (they stay as tasks: a late label still counts, but they are not selectable)."""
    with project.engine.begin() as connection:
        row = connection.execute(sa.select(rounds.c.id, rounds.c.status).where(rounds.c.id == round_id)).first()
        if row is None:
            raise InputError(f"round {round_id} does not exist; `alkit rounds` lists the rounds")
        if row.status not in ACTIVE_ROUND_STATUSES:
            raise StateError(f"round {round_id} is already {row.status}; `alkit rounds` lists the open ones")
        waiting = list(
            connection.execute(
                sa.select(round_items.c.image_id).where(
                    round_items.c.round_id == round_id,
                    round_items.c.outcome.is_(None),
                    round_items.c.image_id.not_in(sa.select(labels.c.image_id)),
                )
            ).scalars()
        )
        outcome = RoundItemOutcome.REQUEUED if requeue or row.status == RoundStatus.OPEN else RoundItemOutcome.DROPPED
        release_items(connection, round_id, waiting, outcome, reason)
        connection.execute(
            rounds.update().where(rounds.c.id == round_id).values(status=RoundStatus.CLOSED, closed_at=utcnow(), closed_reason=reason)
        )
    requeued = waiting if outcome is RoundItemOutcome.REQUEUED else []
    return CloseResult(round_id, requeued, [] if requeued else waiting, row.status, reason)


def close_old_rounds(project: Project, max_age_hours: float | None) -> list[CloseResult]:
    """Close (with requeue) the pushed rounds older than `max_age_hours`; none when unset."""
    if max_age_hours is None:
        return []
    cutoff = datetime.now(timezone.utc) - timedelta(hours=max_age_hours)
    with project.engine.connect() as connection:
        old = [
            row.id
            for row in connection.execute(sa.select(rounds.c.id, rounds.c.created_at).where(rounds.c.status == RoundStatus.PUSHED))
            if _aware(row.created_at) < cutoff
        ]
    return [
        close_round(project, round_id, requeue=True, reason=f"older than ls_round_max_age_hours = {max_age_hours:g}")
        for round_id in old
    ]
