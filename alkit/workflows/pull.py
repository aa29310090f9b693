"""`alkit pull`: new and updated Label Studio annotations -> labels (source `labelstudio`).

Pull is incremental (tasks updated after a cursor; the first pull reads the JSON export),
commits page by page and advances its cursor only after the last page, so a failure loses
nothing: the next pull redoes the work idempotently.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from alkit.labelstudio.mapping import VotePolicy
from alkit.locking import project_lock
from alkit.project import Project
from alkit.storage.identity import project_uuid
from alkit.storage.classes import class_names
from alkit.storage.rounds import complete_rounds
from alkit.storage.schema import RoundItemOutcome
from alkit.storage.state import StateKey, read_state, write_state
from alkit.storage.tasks import task_images as recorded_task_images
from alkit.storage.tasks import waiting_tasks
from alkit.workflows.ls_project import LOCK_NAME, check_label_config, client_for, ls_project_id
from alkit.workflows.pull_page import PullResult, apply_page
from alkit.workflows.rounds import release_items

CURSOR_MARGIN = timedelta(seconds=5)  # the next pull re-reads tasks updated this long before this one began
DELETED_REASON = "task deleted in Label Studio"
NOTHING_STORED = "no annotation was stored"


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def _server_time(moment: datetime) -> str:
    """The only Datetime format Label Studio's task filters accept."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pull_annotations(project: Project, client, policy: VotePolicy = VotePolicy.MAJORITY, full: bool = False) -> PullResult:
    """Fetch new and updated annotations and store them as labels (source `labelstudio`).
    The caller holds the project lock (`pull`, `sync` and the webhook pulls do).

    Only tasks of this project count (their key carries its UUID; keyless tasks only when
    alkit recorded them). A task whose every annotation is a skip makes its item leave the
    round; a recorded task missing from Label Studio (deleted there) does too. The labeling
    config is checked before anything is written: a drift is an error, never empty labels.
    """
    pid = ls_project_id(project)
    uuid = project_uuid(project.engine)
    with project.engine.connect() as connection:
        cursor = read_state(connection, StateKey.PULL_CURSOR) or {}
        pending_at_start = read_state(connection, StateKey.LABELS_PENDING)
        task_images = recorded_task_images(connection, pid)
        names = class_names(connection)
    after = None if full or cursor.get("ls_project_id") != pid else cursor.get("updated_after")
    result = PullResult(ls_project_id=pid, policy=policy.value, incremental=after is not None)
    # Everything updated before the server's clock at the start is read by this pull; a task
    # updated while it runs may sit on a page already read, so the next pull starts there.
    began = client.server_time()
    started = time.monotonic()
    newest: datetime | None = None
    checked = False
    for page in client.annotated_task_pages(pid, after):
        if not checked:  # after the first read, before the first write
            check_label_config(project, client, pid, names, NOTHING_STORED)
            checked = True
        apply_page(project, page, policy, task_images, result, uuid, pid)
        for task in page:
            seen = _parse_time(task.get("updated_at"))
            if seen is not None and (newest is None or seen > newest):
                newest = seen
    if not checked:
        check_label_config(project, client, pid, names, NOTHING_STORED)
    if began is None and newest is not None:  # no Date header: newest - elapsed bounds the start
        began = newest - timedelta(seconds=time.monotonic() - started)
    _release_deleted_tasks(project, client, pid, result)
    with project.engine.begin() as connection:
        if began is not None:
            candidate = began - CURSOR_MARGIN
            previous = _parse_time(after)
            if previous is None or candidate > previous:
                write_state(connection, StateKey.PULL_CURSOR, {"ls_project_id": pid, "updated_after": _server_time(candidate)})
        result.rounds_closed = complete_rounds(connection)
        if read_state(connection, StateKey.LABELS_PENDING) == pending_at_start:  # a webhook during the pull keeps its mark
            write_state(connection, StateKey.LABELS_PENDING, None)
    return result


def _release_deleted_tasks(project: Project, client, pid: int, result: PullResult) -> None:
    """Recorded tasks of waiting items that Label Studio no longer has: their images go back to the pool."""
    with project.engine.connect() as connection:
        waiting = waiting_tasks(connection, pid)
    if not waiting:
        return
    gone = sorted(set(waiting) - client.task_ids(pid))
    if not gone:
        return
    by_round: dict[int, list[int]] = {}
    for task_id in gone:
        image_id, round_id = waiting[task_id]
        by_round.setdefault(round_id, []).append(image_id)
    with project.engine.begin() as connection:
        for round_id, image_ids in by_round.items():
            release_items(connection, round_id, image_ids, RoundItemOutcome.DELETED, DELETED_REASON)
    result.deleted_items = sorted(i for ids in by_round.values() for i in ids)


def pull(project: Project, token: str | None = None, policy: VotePolicy = VotePolicy.MAJORITY, full: bool = False,
         wait: bool = False, client=None) -> PullResult:
    """`alkit pull`: `pull_annotations` under the project lock (LockedError when another push/pull/sync runs, unless `wait`)."""
    client = client or client_for(project, token)
    with project_lock(project, LOCK_NAME, wait=wait):
        return pull_annotations(project, client, policy, full=full)
