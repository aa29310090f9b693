"""`alkit push`: one selection round -> Label Studio tasks (one bulk import), safe to rerun after a crash.

Tasks belong to one alkit project: their key (`data.alkit_key`) is the project's UUID plus
the image's content hash. Task ids are recorded right after the bulk import, and before
importing, the project is searched for tasks of this round that already carry the keys about
to be pushed (left by a run killed between import and bookkeeping): they are recorded, not
imported again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from alkit.errors import ExternalServiceError, InputError, StateError
from alkit.jsonable import JsonResult
from alkit.labelstudio.config import image_reference
from alkit.labelstudio.mapping import build_task, prediction_of, task_key
from alkit.locking import project_lock
from alkit.project import Project
from alkit.storage.identity import project_uuid
from alkit.storage.images import mark_pushed
from alkit.storage.classes import class_names
from alkit.storage.rounds import items_to_push, mark_round_pushed, newest_round, round_row
from alkit.storage.schema import RoundStatus
from alkit.storage.tasks import images_with_tasks, record_tasks
from alkit.workflows.ls_project import LOCK_NAME, check_label_config, client_for, connect_command, ensure_local_storage, ls_project_id

HTTP_OK = 200
NAMED_IN_ERRORS = 5  # bad images named in an error message; the rest are counted


@dataclass
class PushResult(JsonResult):
    round_id: int | None
    ls_project_id: int
    items: int = 0
    already_recorded: int = 0  # tasks alkit had recorded before this run
    recovered: int = 0  # tasks found in Label Studio by their alkit_key but not recorded (a crashed push)
    imported: int = 0
    with_prediction: int = 0
    pre_annotate: bool = True
    storages_created: list[str] = field(default_factory=list)
    message: str = ""


def _round_to_push(connection, round_id: int | None):
    """The round to push: `round_id`, else the newest open one; None when every round is pushed."""
    if round_id is None:
        return newest_round(connection, RoundStatus.OPEN)
    row = round_row(connection, round_id)
    if row is None:
        raise InputError(f"round {round_id} does not exist; `alkit rounds` lists the rounds")
    return row


def _finite_or_fail(round_id: int, items: list) -> None:
    """Non-finite scores or probabilities can be neither sent (JSON) nor trusted: name the images."""
    bad = []
    for item in items:
        values = [item.score, (item.components or {}).get("probability")]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            bad.append(f"{item.image_id} ({Path(item.path).name})")
    if bad:
        more = len(bad) - NAMED_IN_ERRORS
        shown = ", ".join(bad[:NAMED_IN_ERRORS]) + (f" and {more} more" if more > 0 else "")
        raise StateError(
            f"round {round_id} holds non-finite scores or probabilities for {len(bad)} images: {shown}; nothing was "
            f"sent. Close the round and select again: `alkit rounds close {round_id} --requeue`"
        )


def _check_image_fetch(client, project: Project, reference: str, path: str) -> None:
    status, reason = client.fetch_status(reference)
    if status == HTTP_OK:
        return
    settings = project.settings
    where = f"{client.url}{reference}" if reference.startswith("/") else reference
    if settings.ls_image_url_prefix:
        fix = (
            f"serve the images under {settings.ls_image_url_prefix} or reconnect with the right prefix: "
            f"`{connect_command(client.url, settings.ls_project_id, project)}`"
        )
    else:
        fix = (
            "start Label Studio with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
            f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={settings.ls_local_files_root}, then rerun "
            f"`alkit --project {project.directory} push`"
        )
    raise ExternalServiceError(
        f"Label Studio cannot show the images of this batch: GET {where} (image {path}) answered "
        f"{status if status is not None else 'nothing'} {reason}; nothing was imported. Fix: {fix}"
    )


def _record(project: Project, pid: int, round_id: int, pairs: list[tuple[int, int]]) -> None:
    if pairs:
        with project.engine.begin() as connection:
            record_tasks(connection, pid, round_id, pairs)


def _send(project: Project, client, pid: int, round_row, pending: list, names: list[str], pre_annotate: bool,
          check_images: bool, uuid: str, result: PushResult) -> None:
    """Record the tasks a crashed push left in Label Studio, import the others, record them."""
    settings = project.settings
    # Build every task first: a bad path fails before anything is sent.
    references = {
        item.image_id: image_reference(item.path, settings.ls_local_files_root, settings.ls_image_url_prefix)
        for item in pending
    }
    keys = {item.image_id: task_key(uuid, item.content_hash, item.image_id) for item in pending}
    existing = client.tasks_by_key(pid, list(keys.values()))
    found = []
    for item in pending:
        same_round = [tid for tid, rid in existing.get(keys[item.image_id], []) if str(rid) == str(round_row.id)]
        if same_round:
            found.append((item.image_id, same_round[0]))
    _record(project, pid, round_row.id, found)
    result.recovered = len(found)
    done = {image_id for image_id, _ in found}
    to_import = [item for item in pending if item.image_id not in done]
    if not to_import:
        return
    if settings.ls_local_files_root and not settings.ls_image_url_prefix:
        result.storages_created = ensure_local_storage(client, pid, [item.path for item in to_import], settings.ls_local_files_root)
    if check_images:
        _check_image_fetch(client, project, references[to_import[0].image_id], to_import[0].path)
    version = f"alkit-posterior-v{round_row.posterior_version}" if round_row.posterior_version else f"alkit-round-{round_row.id}"
    tasks = []
    for item in to_import:
        prediction = prediction_of(item.components, names) if pre_annotate else None
        result.with_prediction += prediction is not None
        facts = {
            "score": item.score, "rank": item.rank, "round": round_row.id, "strategy": round_row.strategy,
            "posterior_version": round_row.posterior_version, "confidence": prediction[1] if prediction else None,
        }
        tasks.append(build_task(item.image_id, references[item.image_id], prediction, version, keys[item.image_id], facts))
    task_ids = client.import_tasks(pid, tasks)
    _record(project, pid, round_row.id, list(zip([item.image_id for item in to_import], task_ids)))
    result.imported = len(task_ids)


def push_round(
    project: Project, client, round_id: int | None = None, pre_annotate: bool | None = None, check_images: bool = True
) -> PushResult:
    """Push one selection round as tasks (one bulk import); safe to rerun after a crash anywhere.
    The caller holds the project lock (`push` and `sync` do).

    Each task's data carries the task key (project UUID + content hash) and the acquisition
    facts; with `pre_annotate` (default: the `ls_pre_annotate` setting) the predicted class is
    sent as a prediction. Pushing when every round is already pushed does nothing (not an error).
    """
    pid = ls_project_id(project)
    pre_annotate = project.settings.ls_pre_annotate if pre_annotate is None else pre_annotate
    uuid = project_uuid(project.engine)
    with project.engine.connect() as connection:
        row = _round_to_push(connection, round_id)
        if row is None:
            return PushResult(
                round_id=None, ls_project_id=pid, pre_annotate=pre_annotate,
                message="nothing to push: every selection round is already pushed",
            )
        names = class_names(connection)
        items = items_to_push(connection, row.id)
        recorded = images_with_tasks(connection, pid, [item.image_id for item in items])
    result = PushResult(round_id=row.id, ls_project_id=pid, items=len(items), already_recorded=len(recorded), pre_annotate=pre_annotate)
    pending = [item for item in items if item.image_id not in recorded]
    if pending:
        _finite_or_fail(row.id, pending)
        check_label_config(project, client, pid, names, "nothing was pushed")
        _send(project, client, pid, row, pending, names, pre_annotate, check_images, uuid, result)
    with project.engine.begin() as connection:
        mark_pushed(connection, [item.image_id for item in items])
        mark_round_pushed(connection, row.id)
    result.message = (
        f"round {result.round_id}: {result.items} items -> Label Studio project {pid}: {result.imported} imported "
        f"({result.with_prediction} with predictions), {result.recovered} recovered from an interrupted push, "
        f"{result.already_recorded} already there"
    )
    return result


def push(project: Project, token: str | None = None, round_id: int | None = None, pre_annotate: bool | None = None,
         wait: bool = False, client=None) -> PushResult:
    """`alkit push`: `push_round` under the project lock (LockedError when another push/pull/sync runs, unless `wait`)."""
    client = client or client_for(project, token)
    with project_lock(project, LOCK_NAME, wait=wait):
        return push_round(project, client, round_id, pre_annotate=pre_annotate)
