"""Selection rounds that always finish: progress, items leaving a round, closing by hand or by age.

A round is complete when each item is labelled or has left it: skipped in Label Studio, its
task deleted there, or requeued when the round was closed. An item that leaves goes back to
the pool (its image selectable again), or, after `ls_max_skips` skips, is excluded from
selection with the reason recorded. Every such event is a row of `ls_task_events`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from alkit.errors import InputError, StateError
from alkit.jsonable import JsonResult
from alkit.locking import project_lock
from alkit.project import Project
from alkit.storage.images import back_to_pool, reject_image
from alkit.storage.labels import labelled_among
from alkit.storage.rounds import (
    LABELLED,
    WAITING,
    close_round_row,
    item_buckets,
    round_row,
    round_rows,
    rounds_with_status,
    set_item_outcome,
    waiting_items,
)
from alkit.storage.schema import ACTIVE_ROUND_STATUSES, RoundItemOutcome, RoundStatus
from alkit.storage.tasks import EXCLUDED_EVENT, forget_round_tasks, record_events, round_task_of_images, skip_counts
from alkit.workflows.ls_project import LOCK_NAME

EXCLUDED_PREFIX = "excluded from selection"
SECONDS_PER_HOUR = 3600.0
AGE_DECIMALS = 3


def _aware(moment: datetime | None) -> datetime | None:
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


@dataclass
class RoundProgress(JsonResult):
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


def round_progress(project: Project, round_ids: list[int] | None = None) -> list[RoundProgress]:
    """Progress of every round (or of `round_ids`), oldest first."""
    now = datetime.now(timezone.utc)
    with project.engine.connect() as connection:
        rows = round_rows(connection, round_ids)
        counts = item_buckets(connection, round_ids)
    result = []
    for row in rows:
        bucket = counts.get(row.id, {})
        created = _aware(row.created_at)
        result.append(
            RoundProgress(
                round_id=row.id, status=row.status, strategy=row.strategy, items=sum(bucket.values()),
                labelled=bucket.get(LABELLED, 0), skipped=bucket.get(RoundItemOutcome.SKIPPED, 0),
                deleted=bucket.get(RoundItemOutcome.DELETED, 0), requeued=bucket.get(RoundItemOutcome.REQUEUED, 0),
                dropped=bucket.get(RoundItemOutcome.DROPPED, 0), waiting=bucket.get(WAITING, 0),
                created_at=created.isoformat(),
                age_hours=round((now - created).total_seconds() / SECONDS_PER_HOUR, AGE_DECIMALS),
                closed_reason=row.closed_reason,
            )
        )
    return result


def release_items(
    connection, round_id: int, image_ids: list[int], outcome: RoundItemOutcome, reason: str, max_skips: int = 0
) -> list[int]:
    """Items leave round `round_id` with `outcome` (recorded as events); their tasks stop speaking
    for their images (except DROPPED: the task stays and a late label still counts). Unlabelled
    images go back to the pool, or are excluded when skipped `max_skips` times (> 0).
    Returns the ids of images excluded."""
    if not image_ids:
        return []
    set_item_outcome(connection, round_id, image_ids, outcome)
    tasks = round_task_of_images(connection, round_id, image_ids)
    no_task = (None, None)
    record_events(connection, [
        {"image_id": image_id, "round_id": round_id, "ls_project_id": tasks.get(image_id, no_task)[0],
         "task_id": tasks.get(image_id, no_task)[1], "event": outcome.value, "reason": reason}
        for image_id in image_ids
    ])
    if outcome is RoundItemOutcome.DROPPED:
        return []
    forget_round_tasks(connection, round_id, image_ids)
    excluded: list[int] = []
    if outcome is RoundItemOutcome.SKIPPED and max_skips > 0:
        skips = skip_counts(connection, image_ids)
        labelled = labelled_among(connection, image_ids)
        excluded = sorted(i for i in image_ids if skips.get(i, 0) >= max_skips and i not in labelled)
        for image_id in excluded:
            why = f"{EXCLUDED_PREFIX}: skipped {skips[image_id]} times in Label Studio (ls_max_skips = {max_skips})"
            reject_image(connection, image_id, why)
            record_events(connection, [{"image_id": image_id, "round_id": round_id, "event": EXCLUDED_EVENT, "reason": why}])
    back_to_pool(connection, [i for i in image_ids if i not in set(excluded)])
    return excluded


@dataclass
class CloseResult(JsonResult):
    round_id: int
    requeued: list[int]
    dropped: list[int]
    status_before: str
    reason: str


def close_round(project: Project, round_id: int, requeue: bool = False, reason: str = "closed by hand") -> CloseResult:
    """Close a round: its waiting items are requeued (back to the pool, their tasks no longer
    count) or dropped (they stay as tasks: a late label still counts, but they are not selectable)."""
    with project.engine.begin() as connection:
        row = round_row(connection, round_id)
        if row is None:
            raise InputError(f"round {round_id} does not exist; `alkit rounds` lists the rounds")
        if row.status not in ACTIVE_ROUND_STATUSES:
            raise StateError(f"round {round_id} is already {row.status}; `alkit rounds` lists the open ones")
        waiting = waiting_items(connection, round_id)
        outcome = RoundItemOutcome.REQUEUED if requeue or row.status == RoundStatus.OPEN else RoundItemOutcome.DROPPED
        release_items(connection, round_id, waiting, outcome, reason)
        close_round_row(connection, round_id, reason)
    requeued = waiting if outcome is RoundItemOutcome.REQUEUED else []
    return CloseResult(round_id, requeued, [] if requeued else waiting, row.status, reason)


def close_by_hand(project: Project, round_id: int, requeue: bool = False) -> CloseResult:
    """`alkit rounds close`: `close_round` under the project lock (LockedError while a push, pull or sync runs)."""
    with project_lock(project, LOCK_NAME):
        return close_round(project, round_id, requeue=requeue)


def close_old_rounds(project: Project, max_age_hours: float | None) -> list[CloseResult]:
    """Close (with requeue) the pushed rounds older than `max_age_hours`; none when unset."""
    if max_age_hours is None:
        return []
    cutoff = datetime.now(timezone.utc) - timedelta(hours=max_age_hours)
    with project.engine.connect() as connection:
        old = [row.id for row in rounds_with_status(connection, RoundStatus.PUSHED) if _aware(row.created_at) < cutoff]
    return [
        close_round(project, round_id, requeue=True, reason=f"older than ls_round_max_age_hours = {max_age_hours:g}")
        for round_id in old
    ]
