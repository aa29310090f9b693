"""`alkit ls connect`, `alkit push`, `alkit pull`, the webhook receiver and the ML backend.

Tasks belong to one alkit project: their key (`data.alkit_key`) is the project's UUID plus
the image's content hash, and push, pull and recovery match on it. Push is idempotent
across crashes: task ids are recorded right after the bulk import, and before importing,
the project is searched for tasks of this round that already carry the keys about to be
pushed (left by a run killed between import and bookkeeping). Pull is
incremental (tasks updated after a cursor; the first pull reads the JSON export), commits page by page
and advances its cursor only after the last page, so a failure loses nothing: the next
pull redoes the work idempotently.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa

from alkit.errors import ConfigError, ExternalServiceError, InputError, IntegrityError, StateError
from alkit.labelstudio.config import (
    config_differences,
    image_reference,
    label_config,
    relative_to_root,
    storage_directories,
)
from alkit.labelstudio.mapping import (
    VotePolicy,
    build_task,
    image_id_of,
    prediction_of,
    split_task_key,
    task_key,
    task_outcome,
)
from alkit.project import Project
from alkit.settings import write_config_file
from alkit.storage.db import utcnow
from alkit.storage.identity import project_uuid
from alkit.storage.pool import class_names, insert_ignoring_conflicts
from alkit.storage.schema import (
    ImageStatus,
    LabelSource,
    RoundItemOutcome,
    classes,
    images,
    labels,
    ls_tasks,
    round_items,
    rounds,
    state,
)
from alkit.workflows.labels import mark_labeled
from alkit.storage.schema import RoundStatus
from alkit.workflows.rounds import complete_rounds, release_items

FAULT_ENV = "ALKIT_FAULT"  # test hook: ALKIT_FAULT=<point> makes the process die at that point
CURSOR_KEY = "labelstudio.pull_cursor"
CONFLICTS_KEY = "labelstudio.conflicts"
PENDING_KEY = "labelstudio.labels_pending"
CURSOR_MARGIN = timedelta(seconds=5)  # the next pull re-reads tasks updated this long before this one began


def fault_point(name: str) -> None:
    """Die like `kill -9` here when ALKIT_FAULT names this point (crash-recovery tests)."""
    if os.environ.get(FAULT_ENV) == name:
        os._exit(137)


# -- state table helpers ----------------------------------------------------------------------


def read_state(connection, key: str) -> Any:
    return connection.execute(sa.select(state.c.value).where(state.c.key == key)).scalar()


def write_state(connection, key: str, value: Any) -> None:
    if value is None:
        connection.execute(state.delete().where(state.c.key == key))
        return
    updated = connection.execute(state.update().where(state.c.key == key).values(value=value, updated_at=utcnow()))
    if updated.rowcount == 0:
        connection.execute(state.insert().values(key=key, value=value, updated_at=utcnow()))


def ls_project_id(project: Project) -> int:
    if not project.settings.ls_url or not project.settings.ls_project_id:
        raise ConfigError(
            "no Label Studio project configured (ls_url / ls_project_id unset); run "
            "`alkit ls connect --url URL --create TITLE` or `--project-id ID` first"
        )
    return int(project.settings.ls_project_id)


def client_for(project: Project, token: str | None):
    """The client for the project's configured server; the token is never stored."""
    from alkit.labelstudio.client import LabelStudioClient
    from alkit.settings import label_studio_token

    ls_project_id(project)
    return LabelStudioClient(project.settings.ls_url, label_studio_token(token))


# -- connect ----------------------------------------------------------------------------------


@dataclass
class ConnectResult:
    url: str
    project_id: int
    created: bool
    user: str | None
    local_files_root: str | None
    image_url_prefix: str | None
    storages_created: list[str] = field(default_factory=list)
    config_written: bool = False
    adopted_foreign_tasks: int = 0  # tasks of other alkit projects left in place with --adopt (never pulled)

    def as_json(self) -> dict:
        return asdict(self)


def ensure_local_storage(client, project_id: int, paths: list[str], root: str) -> list[str]:
    """Create Local Files storages so the server serves `paths` (one per top sub-directory of root)."""
    existing = [os.path.realpath(p) for p in client.local_storage_paths(project_id)]
    created = []
    for directory in storage_directories(paths, root):
        if not any(os.path.commonpath([directory, p]) == p for p in existing):
            client.create_local_storage(project_id, directory)
            existing.append(directory)
            created.append(directory)
    return created


def connect_command(url: str, project_id: int | str, project: Project | None = None, extra: str = "") -> str:
    """The `alkit ls connect` command line that reconnects this project (a fix hint that runs as printed)."""
    parts = ["alkit"]
    if project is not None:
        parts += ["--project", str(project.directory)]
    parts += ["ls", "connect", "--url", url, "--project-id", str(project_id)]
    if project is not None and project.settings.ls_local_files_root:
        parts += ["--local-files-root", str(project.settings.ls_local_files_root)]
    if project is not None and project.settings.ls_image_url_prefix:
        parts += ["--image-url-prefix", str(project.settings.ls_image_url_prefix)]
    return " ".join(parts) + (f" {extra}" if extra else "")


def check_label_config(project: Project, client, pid: int, names: list[str], when: str) -> None:
    """Raise IntegrityError naming each difference between the project's config and the class list."""
    differences = config_differences(client.get_project(pid).get("label_config") or "", names)
    if differences:
        raise IntegrityError(
            f"the labeling config of Label Studio project {pid} does not match alkit's classes "
            f"({'; '.join(differences)}); {when}. Restore it in Label Studio (Settings > Labeling Interface) "
            f"or overwrite it with alkit's: `{connect_command(client.url, pid, project, '--write-config')}`"
        )


def foreign_tasks(client, pid: int, uuid: str, own_task_ids: set[int]) -> list[int]:
    """Ids of tasks in the Label Studio project that belong to another alkit project: a key
    with another project's UUID, or an alkit id without a key that this project never pushed."""
    found = []
    for task in client.task_data(pid):
        data = task.get("data") or {}
        key = split_task_key(data)
        if key is not None:
            if key[0] != uuid:
                found.append(task["id"])
        elif image_id_of(data) is not None and task["id"] not in own_task_ids:
            found.append(task["id"])
    return found


def connect(
    project: Project,
    client,
    project_id: int | None = None,
    create_title: str | None = None,
    local_files_root: str | None = None,
    image_url_prefix: str | None = None,
    adopt: bool = False,
    write_config: bool = False,
) -> ConnectResult:
    """Check URL, token, images and labeling config, then create or verify the project and
    store url/project id in alkit.toml. Everything that can fail is checked before anything
    is created in Label Studio."""
    if (project_id is None) == (create_title is None):
        raise InputError("pass exactly one of --project-id ID (an existing project) or --create TITLE")
    if local_files_root is None and image_url_prefix is None:  # neither given: keep how images are served now
        local_files_root = project.settings.ls_local_files_root
        image_url_prefix = project.settings.ls_image_url_prefix
    if local_files_root is not None:
        local_files_root = str(Path(local_files_root).expanduser().resolve())
        if not Path(local_files_root).is_dir():
            raise InputError(f"--local-files-root {local_files_root} is not a directory; pass the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    with project.engine.connect() as connection:
        names = class_names(connection)
        paths = list(
            connection.execute(sa.select(images.c.path).where(images.c.status != ImageStatus.REJECTED.value)).scalars()
        )
        own_tasks = set(connection.execute(sa.select(ls_tasks.c.task_id)).scalars())
    config = label_config(names)  # no classes: a clear error before anything is created
    if local_files_root and paths:
        if image_url_prefix:
            for path in paths:
                relative_to_root(path, local_files_root)
        else:
            storage_directories(paths, local_files_root)  # every image must be servable
    user = client.whoami()
    uuid = project_uuid(project.engine)
    created = create_title is not None
    foreign: list[int] = []
    if created:
        project_id = client.create_project(create_title, config, description="created by alkit ls connect")
    else:
        client.get_project(project_id)
        if write_config:
            client.set_label_config(project_id, config)
        else:
            differences = config_differences(client.get_project(project_id).get("label_config") or "", names)
            if differences:
                extra = " ".join(filter(None, [
                    f"--local-files-root {local_files_root}" if local_files_root else "",
                    f"--image-url-prefix {image_url_prefix}" if image_url_prefix else "",
                    "--write-config",
                ]))
                raise IntegrityError(
                    f"the labeling config of Label Studio project {project_id} does not match alkit's classes "
                    f"({'; '.join(differences)}); nothing was saved. Fix it in Label Studio (Settings > Labeling "
                    f"Interface) or overwrite it with alkit's: `alkit --project {project.directory} ls connect "
                    f"--url {client.url} --project-id {project_id} {extra}`"
                )
        foreign = foreign_tasks(client, project_id, uuid, own_tasks)
        if foreign and not adopt:
            extra = " ".join(filter(None, [
                f"--local-files-root {local_files_root}" if local_files_root else "",
                f"--image-url-prefix {image_url_prefix}" if image_url_prefix else "",
                "--adopt",
            ]))
            raise StateError(
                f"Label Studio project {project_id} holds {len(foreign)} tasks of another alkit project "
                f"(e.g. task {foreign[0]}); labels would go to the wrong images. Use a new project "
                f"(`alkit --project {project.directory} ls connect --url {client.url} --create TITLE`) or share "
                f"this one on purpose (their tasks are never pulled): `alkit --project {project.directory} ls connect "
                f"--url {client.url} --project-id {project_id} {extra}`"
            )
    storages: list[str] = []
    if local_files_root and not image_url_prefix and paths:
        storages = ensure_local_storage(client, project_id, paths, local_files_root)
    write_config_file(
        project.directory,
        {
            "ls_url": client.url,
            "ls_project_id": project_id,
            "ls_local_files_root": local_files_root,
            "ls_image_url_prefix": image_url_prefix,
        },
    )
    return ConnectResult(
        url=client.url, project_id=int(project_id), created=created, user=user.get("email"),
        local_files_root=local_files_root, image_url_prefix=image_url_prefix, storages_created=storages,
        config_written=bool(write_config and not created), adopted_foreign_tasks=len(foreign),
    )


# -- push -------------------------------------------------------------------------------------


@dataclass
class PushResult:
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

    def as_json(self) -> dict:
        return asdict(self)


def _round_to_push(connection, round_id: int | None) -> sa.Row | None:
    """The round to push: `round_id`, else the newest open one; None when every round is pushed."""
    if round_id is not None:
        row = connection.execute(sa.select(rounds).where(rounds.c.id == round_id)).first()
        if row is None:
            raise InputError(f"round {round_id} does not exist; `alkit rounds` lists the rounds")
        return row
    return connection.execute(
        sa.select(rounds).where(rounds.c.status == RoundStatus.OPEN).order_by(rounds.c.id.desc()).limit(1)
    ).first()


def _finite_or_fail(round_id: int, items: list) -> None:
    """Non-finite scores or probabilities can be neither sent (JSON) nor trusted: name the images."""
    bad = []
    for item in items:
        values = [item.score, (item.components or {}).get("probability")]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            bad.append(f"{item.image_id} ({Path(item.path).name})")
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise StateError(
            f"round {round_id} holds non-finite scores or probabilities for {len(bad)} images: {shown}; nothing was "
            f"sent. Close the round and select again: `alkit rounds close {round_id} --requeue`"
        )


def _check_image_fetch(client, project: Project, reference: str, path: str) -> None:
    status, reason = client.fetch_status(reference)
    if status == 200:
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


def push_round(
    project: Project, client, round_id: int | None = None, pre_annotate: bool | None = None, check_images: bool = True
) -> PushResult:
    """Push one selection round as tasks (one bulk import); safe to rerun after a crash anywhere.

    Each task's data carries the task key (project UUID + content hash) and the acquisition
    facts; with `pre_annotate` (default: the `ls_pre_annotate` setting) the predicted class is
    sent as a prediction. Pushing when every round is already pushed does nothing (not an error).
    """
    pid = ls_project_id(project)
    settings = project.settings
    pre_annotate = settings.ls_pre_annotate if pre_annotate is None else pre_annotate
    uuid = project_uuid(project.engine)
    with project.engine.connect() as connection:
        round_row = _round_to_push(connection, round_id)
        if round_row is None:
            return PushResult(
                round_id=None, ls_project_id=pid, pre_annotate=pre_annotate,
                message="nothing to push: every selection round is already pushed",
            )
        names = class_names(connection)
        items = connection.execute(
            sa.select(
                round_items.c.image_id, round_items.c.components, round_items.c.score, round_items.c.rank,
                images.c.path, images.c.content_hash,
            )
            .join(images, images.c.id == round_items.c.image_id)
            .where(round_items.c.round_id == round_row.id, round_items.c.outcome.is_(None))
            .order_by(round_items.c.rank)
        ).all()
        recorded = set(
            connection.execute(
                sa.select(ls_tasks.c.image_id).where(
                    ls_tasks.c.ls_project_id == pid, ls_tasks.c.image_id.in_([item.image_id for item in items])
                )
            ).scalars()
        )
    result = PushResult(
        round_id=round_row.id, ls_project_id=pid, items=len(items), already_recorded=len(recorded), pre_annotate=pre_annotate
    )
    pending = [item for item in items if item.image_id not in recorded]
    if pending:
        _finite_or_fail(round_row.id, pending)
        check_label_config(project, client, pid, names, "nothing was pushed")
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
        _record_tasks(project, pid, round_row.id, found)
        result.recovered = len(found)
        done = {image_id for image_id, _ in found}
        to_import = [item for item in pending if item.image_id not in done]
        if to_import:
            if settings.ls_local_files_root and not settings.ls_image_url_prefix:
                result.storages_created = ensure_local_storage(
                    client, pid, [item.path for item in to_import], settings.ls_local_files_root
                )
            if check_images:
                _check_image_fetch(client, project, references[to_import[0].image_id], to_import[0].path)
            version = (
                f"alkit-posterior-v{round_row.posterior_version}" if round_row.posterior_version else f"alkit-round-{round_row.id}"
            )
            tasks = []
            for item in to_import:
                prediction = prediction_of(item.components, names) if pre_annotate else None
                result.with_prediction += prediction is not None
                facts = {
                    "score": item.score, "rank": item.rank, "round": round_row.id, "strategy": round_row.strategy,
                    "posterior_version": round_row.posterior_version,
                    "confidence": prediction[1] if prediction else None,
                }
                tasks.append(build_task(item.image_id, references[item.image_id], prediction, version, keys[item.image_id], facts))
            task_ids = client.import_tasks(pid, tasks)
            fault_point("push_after_import")
            _record_tasks(project, pid, round_row.id, list(zip([item.image_id for item in to_import], task_ids)))
            result.imported = len(task_ids)
    with project.engine.begin() as connection:
        connection.execute(
            images.update()
            .where(
                images.c.id.in_([item.image_id for item in items]),
                images.c.status.not_in([ImageStatus.LABELED.value, ImageStatus.REJECTED.value]),
            )
            .values(status=ImageStatus.PUSHED.value, updated_at=utcnow())
        )
        connection.execute(
            rounds.update().where(rounds.c.id == round_row.id, rounds.c.status == RoundStatus.OPEN).values(status=RoundStatus.PUSHED)
        )
    result.message = (
        f"round {result.round_id}: {result.items} items -> Label Studio project {pid}: {result.imported} imported "
        f"({result.with_prediction} with predictions), {result.recovered} recovered from an interrupted push, "
        f"{result.already_recorded} already there"
    )
    return result


def _record_tasks(project: Project, pid: int, round_id: int, pairs: list[tuple[int, int]]) -> None:
    if not pairs:
        return
    now = utcnow()
    with project.engine.begin() as connection:
        insert_ignoring_conflicts(
            connection,
            ls_tasks,
            [{"image_id": i, "ls_project_id": pid, "task_id": t, "round_id": round_id, "pushed_at": now} for i, t in pairs],
        )


# -- pull -------------------------------------------------------------------------------------


@dataclass
class PullResult:
    ls_project_id: int
    policy: str
    incremental: bool
    tasks_seen: int = 0
    labels_added: int = 0
    labels_updated: int = 0
    labels_removed: int = 0
    images_labeled: int = 0  # images that became `labeled` in this pull
    skipped: int = 0  # cancelled annotations
    empty: int = 0  # annotations with no choice
    unknown_tasks: int = 0  # tasks alkit did not create (no alkit key, not recorded)
    foreign_tasks: int = 0  # tasks of another alkit project (another UUID in their key): never pulled
    skipped_items: list[int] = field(default_factory=list)  # images whose task was skipped: they left their round
    deleted_items: list[int] = field(default_factory=list)  # images whose task was deleted in Label Studio
    excluded: list[int] = field(default_factory=list)  # images skipped ls_max_skips times: excluded from selection
    conflicts: list[dict] = field(default_factory=list)
    disagreements: list[dict] = field(default_factory=list)
    rounds_closed: list[int] = field(default_factory=list)

    @property
    def new_labels(self) -> int:
        return self.labels_added + self.labels_updated + self.labels_removed

    @property
    def changes(self) -> int:
        """Label changes plus items that left a round: what a sync counts as progress."""
        return self.new_labels + len(self.skipped_items) + len(self.deleted_items)

    def as_json(self) -> dict:
        return {**asdict(self), "new_labels": self.new_labels}


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

    Only tasks of this project count (their key carries its UUID; keyless tasks only when
    alkit recorded them). A task whose every annotation is a skip makes its item leave the
    round; a recorded task missing from Label Studio (deleted there) does too. The labeling
    config is checked before anything is written: a drift is an error, never empty labels.
    """
    pid = ls_project_id(project)
    uuid = project_uuid(project.engine)
    with project.engine.connect() as connection:
        cursor = read_state(connection, CURSOR_KEY) or {}
        pending_at_start = read_state(connection, PENDING_KEY)
        task_images = dict(
            connection.execute(sa.select(ls_tasks.c.task_id, ls_tasks.c.image_id).where(ls_tasks.c.ls_project_id == pid)).all()
        )
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
            check_label_config(project, client, pid, names, "no annotation was stored")
            checked = True
        _apply_page(project, page, policy, task_images, result, uuid, pid)
        for task in page:
            seen = _parse_time(task.get("updated_at"))
            if seen is not None and (newest is None or seen > newest):
                newest = seen
    if not checked:
        check_label_config(project, client, pid, names, "no annotation was stored")
    if began is None and newest is not None:  # no Date header: newest - elapsed bounds the start
        began = newest - timedelta(seconds=time.monotonic() - started)
    _release_deleted_tasks(project, client, pid, result)
    with project.engine.begin() as connection:
        if began is not None:
            candidate = began - CURSOR_MARGIN
            previous = _parse_time(after)
            if previous is None or candidate > previous:
                write_state(connection, CURSOR_KEY, {"ls_project_id": pid, "updated_after": _server_time(candidate)})
        result.rounds_closed = complete_rounds(connection)
        if read_state(connection, PENDING_KEY) == pending_at_start:  # a webhook during the pull keeps its mark
            write_state(connection, PENDING_KEY, None)
    return result


def _waiting_tasks(connection, pid: int) -> dict[int, tuple[int, int]]:
    """task id -> (image id, round id) of recorded tasks whose item still waits in an active round."""
    query = (
        sa.select(ls_tasks.c.task_id, ls_tasks.c.image_id, ls_tasks.c.round_id)
        .join(
            round_items,
            (round_items.c.round_id == ls_tasks.c.round_id) & (round_items.c.image_id == ls_tasks.c.image_id),
        )
        .join(rounds, rounds.c.id == ls_tasks.c.round_id)
        .where(
            ls_tasks.c.ls_project_id == pid,
            rounds.c.status.in_([RoundStatus.OPEN, RoundStatus.PUSHED]),
            round_items.c.outcome.is_(None),
            ls_tasks.c.image_id.not_in(sa.select(labels.c.image_id)),
        )
    )
    return {row.task_id: (row.image_id, row.round_id) for row in connection.execute(query)}


def _release_deleted_tasks(project: Project, client, pid: int, result: PullResult) -> None:
    """Recorded tasks of waiting items that Label Studio no longer has: their images go back to the pool."""
    with project.engine.connect() as connection:
        waiting = _waiting_tasks(connection, pid)
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
            release_items(connection, round_id, image_ids, RoundItemOutcome.DELETED, "task deleted in Label Studio")
    result.deleted_items = sorted(i for ids in by_round.values() for i in ids)


def _image_of_task(
    task: dict, uuid: str, by_hash: dict[str, int], task_images: dict[int, int], by_path: dict[str, int] | None = None,
    project: Project | None = None,
) -> tuple[int | None, str]:
    """(image id, how) for one task: "key" (its key names this project), "recorded" (keyless, pushed
    by this project), "reference" (made in Label Studio itself, no alkit fields: its image file is
    one of this project's), "foreign" (another project's key) or "unknown"."""
    data = task.get("data") or {}
    key = split_task_key(data)
    if key is not None:
        if key[0] != uuid:
            return None, "foreign"
        image_part = key[1]
        if image_part.startswith("id-"):
            try:
                return int(image_part[3:]), "key"
            except ValueError:
                return None, "unknown"
        image_id = by_hash.get(image_part)
        return (image_id, "key") if image_id is not None else (None, "unknown")
    if task["id"] in task_images:
        return task_images[task["id"]], "recorded"
    if by_path and project is not None and image_id_of(data) is None:
        path = _reference_path(project, data)
        if path in by_path:
            return by_path[path], "reference"
    return None, "unknown"


def _reference_path(project: Project, data: dict) -> str | None:
    from alkit.labelstudio.config import DATA_IMAGE_KEY, path_of_reference

    settings = project.settings
    return path_of_reference(data.get(DATA_IMAGE_KEY), settings.ls_local_files_root, settings.ls_image_url_prefix)


def _images_by_reference(connection, project: Project, tasks: list[dict]) -> dict[str, int]:
    """path -> image id for the files that tasks without alkit fields point at."""
    paths = {
        p for p in (_reference_path(project, t.get("data") or {}) for t in tasks
                    if split_task_key(t.get("data")) is None and image_id_of(t.get("data")) is None)
        if p
    }
    if not paths:
        return {}
    found = dict(connection.execute(sa.select(images.c.path, images.c.id).where(images.c.path.in_(sorted(paths)))).all())
    return {os.path.realpath(path): image_id for path, image_id in found.items()}


def _apply_page(
    project: Project, page: list[dict], policy: VotePolicy, task_images: dict[int, int], result: PullResult, uuid: str, pid: int
) -> None:
    """Reconcile the `labelstudio` labels of the images of one page of tasks, in one transaction."""
    now = utcnow()
    max_skips = int(project.settings.ls_max_skips or 0)
    with project.engine.begin() as connection:
        class_ids = dict(connection.execute(sa.select(classes.c.name, classes.c.id)).all())
        conflicts = dict(read_state(connection, CONFLICTS_KEY) or {})
        hashes = [
            key[1] for key in (split_task_key(task.get("data")) for task in page) if key is not None and key[0] == uuid
        ]
        by_hash = dict(
            connection.execute(sa.select(images.c.content_hash, images.c.id).where(images.c.content_hash.in_(hashes))).all()
        ) if hashes else {}
        by_path = _images_by_reference(connection, project, page)
        image_of = {task["id"]: _image_of_task(task, uuid, by_hash, task_images, by_path, project) for task in page}
        known_images = set(
            connection.execute(
                sa.select(images.c.id).where(images.c.id.in_([i for i, _ in image_of.values() if i is not None]))
            ).scalars()
        )
        recorded_task = {image_id: task_id for task_id, image_id in task_images.items()}
        waiting = _waiting_tasks(connection, pid)
        touched: set[int] = set()
        skipped_by_round: dict[int, list[int]] = {}
        for task in page:
            result.tasks_seen += 1
            image_id, how = image_of[task["id"]]
            if how == "foreign":
                result.foreign_tasks += 1
                continue
            if image_id not in known_images or recorded_task.get(image_id, task["id"]) != task["id"]:
                # No alkit image, or a copy of alkit's task made outside alkit (same key):
                # only the task alkit pushed speaks for its image, so a duplicate can neither
                # wipe nor override its labels.
                result.unknown_tasks += 1
                continue
            outcome = task_outcome(task, class_ids, policy, image_id=image_id)
            result.skipped += outcome.skipped
            result.empty += outcome.empty
            key = str(outcome.task_id)
            conflicts.pop(key, None)
            if outcome.conflicts:
                conflicts[key] = [{"task_id": outcome.task_id, "image_id": image_id, **c} for c in outcome.conflicts]
            if outcome.disagreement:
                result.disagreements.append({"task_id": outcome.task_id, "image_id": image_id, **outcome.disagreement})
            desired = {annotator: (class_ids[name], str(annotation_id)) for annotator, (name, annotation_id) in outcome.labels.items()}
            stored = {
                row.annotator: (row.class_id, row.external_id)
                for row in connection.execute(
                    sa.select(labels.c.annotator, labels.c.class_id, labels.c.external_id).where(
                        labels.c.image_id == image_id, labels.c.source == LabelSource.LABEL_STUDIO.value
                    )
                )
            }
            mine = (labels.c.image_id == image_id) & (labels.c.source == LabelSource.LABEL_STUDIO.value)
            for annotator, (class_id, external_id) in desired.items():
                if annotator not in stored:
                    connection.execute(
                        labels.insert().values(
                            image_id=image_id, class_id=class_id, source=LabelSource.LABEL_STUDIO.value,
                            annotator=annotator, external_id=external_id, created_at=now,
                        )
                    )
                    result.labels_added += 1
                elif stored[annotator] != (class_id, external_id):
                    connection.execute(
                        labels.update().where(mine, labels.c.annotator == annotator).values(
                            class_id=class_id, external_id=external_id, created_at=now
                        )
                    )
                    result.labels_updated += 1
            gone = [annotator for annotator in stored if annotator not in desired]
            if gone:
                connection.execute(labels.delete().where(mine, labels.c.annotator.in_(gone)))
                result.labels_removed += len(gone)
            touched.add(image_id)
            only_skips = outcome.skipped and not desired and not outcome.conflicts and not outcome.empty
            if only_skips and task["id"] in waiting:
                skipped_by_round.setdefault(waiting[task["id"]][1], []).append(image_id)
        write_state(connection, CONFLICTS_KEY, conflicts or None)
        result.conflicts = [c for entries in conflicts.values() for c in entries]
        labelled = set(
            connection.execute(sa.select(labels.c.image_id).where(labels.c.image_id.in_(touched)).distinct()).scalars()
        )
        newly = set(
            connection.execute(
                sa.select(images.c.id).where(images.c.id.in_(labelled), images.c.status != ImageStatus.LABELED.value)
            ).scalars()
        )
        mark_labeled(connection, sorted(labelled))
        result.images_labeled += len(newly)
        unlabelled = touched - labelled  # every label withdrawn: back to waiting in Label Studio
        if unlabelled:
            connection.execute(
                images.update()
                .where(images.c.id.in_(unlabelled), images.c.status == ImageStatus.LABELED.value)
                .values(status=ImageStatus.PUSHED.value, updated_at=now)
            )
        for round_id, image_ids in skipped_by_round.items():
            result.excluded += release_items(
                connection, round_id, image_ids, RoundItemOutcome.SKIPPED, "skipped in Label Studio", max_skips=max_skips
            )
            result.skipped_items += image_ids


# -- webhook receiver and ML backend ------------------------------------------------------------


_PENDING_LOCK = threading.Lock()  # the receiver's threads: read-modify-write of the mark, one at a time


def mark_labels_pending(project: Project, action: str, task_id: Any) -> None:
    with _PENDING_LOCK, project.engine.begin() as connection:
        mark = dict(read_state(connection, PENDING_KEY) or {"since": utcnow().isoformat(), "events": 0})
        mark.update(events=int(mark.get("events", 0)) + 1, last_action=action, last_task_id=task_id, last_at=utcnow().isoformat())
        write_state(connection, PENDING_KEY, mark)


def labels_pending(project: Project) -> dict | None:
    with project.engine.connect() as connection:
        return read_state(connection, PENDING_KEY)


class PullTrigger:
    """Runs `pull` in a background thread, one at a time: events during a running pull cause
    one more pull; with `debounce_s`, a burst of events within that time is one pull."""

    def __init__(self, pull: Callable[[], Any], debounce_s: float = 0.0) -> None:
        self._pull = pull
        self._debounce_s = debounce_s
        self._lock = threading.Lock()
        self._running = False
        self._again = False
        self.errors: list[str] = []
        self.runs = 0

    def __call__(self) -> None:
        with self._lock:
            if self._running:
                self._again = True
                return
            self._running = True
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            if self._debounce_s:
                time.sleep(self._debounce_s)
            try:
                self._pull()
            except Exception as error:  # reported, never fatal: the mark stays for the next sync
                self.errors.append(str(error))
            self.runs += 1
            with self._lock:
                if not self._again:
                    self._running = False
                    return
                self._again = False


def make_webhook_server(project: Project, secret: str, host: str, port: int, on_pending: Callable[[], None]):
    """A server (Starlette on uvicorn) for Label Studio webhooks: checks the shared secret header
    first, records the "labels pending" mark and calls `on_pending` (which should trigger a
    pull), replying fast. Returns a handle with `serve_forever()`, `shutdown()`, `server_address`."""
    from alkit.labelstudio.server import ServerHandle, webhook_app

    app = webhook_app(lambda action, task_id: mark_labels_pending(project, action, task_id), secret, on_pending)
    return ServerHandle(app, host, port)


def _model_version(project: Project) -> str:
    from alkit.storage.schema import posteriors

    with project.engine.connect() as connection:
        version = connection.execute(sa.select(sa.func.max(posteriors.c.version))).scalar()
    return f"alkit-posterior-v{version}" if version else "alkit-no-posterior"


def posterior_predictions(project: Project, image_ids: list[int]) -> dict[int, tuple[str, float]]:
    """(predicted class, its probability) per image from the current posterior."""
    from alkit.storage.vectors import load_vectors_in_order
    from alkit.workflows.fit import POSTERIOR_FEATURES
    from alkit.workflows.predict import current_posterior

    if not image_ids:
        return {}
    context, _, posterior = current_posterior(project)
    kind = POSTERIOR_FEATURES.get(posterior.kind) or "embedding"
    probs = posterior.predict(load_vectors_in_order(project, context.spec.id, image_ids, kind=kind))
    best = probs.argmax(axis=1)
    return {
        image_id: (context.class_names[int(best[row])], float(probs[row, best[row]]))
        for row, image_id in enumerate(image_ids)
    }


def backend_predictions(
    project: Project, tasks: list[dict], predictor: Callable[[list[int]], dict[int, tuple[str, float]]] = None
) -> list[dict]:
    """One ML-backend result per task, in order: the current posterior's predicted class (score:
    its probability) and the image's latest acquisition score, for tasks of this project whose
    image is in the pool; an empty result with a reason for the others."""
    from alkit.labelstudio.mapping import choice_result
    from alkit.storage.schema import Split

    predictor = predictor or (lambda ids: posterior_predictions(project, ids))
    uuid = project_uuid(project.engine)
    version = _model_version(project)
    with project.engine.connect() as connection:
        task_images = dict(connection.execute(sa.select(ls_tasks.c.task_id, ls_tasks.c.image_id)).all())
        hashes = [k[1] for k in (split_task_key(t.get("data")) for t in tasks) if k is not None and k[0] == uuid]
        by_hash = dict(
            connection.execute(sa.select(images.c.content_hash, images.c.id).where(images.c.content_hash.in_(hashes))).all()
        ) if hashes else {}
        by_path = _images_by_reference(connection, project, tasks)
        resolved = [
            _image_of_task({"id": t.get("id"), "data": t.get("data")}, uuid, by_hash, task_images, by_path, project) for t in tasks
        ]
        ids = [i for i, _ in resolved if i is not None]
        rows = {
            row.id: row
            for row in connection.execute(sa.select(images.c.id, images.c.split, images.c.status).where(images.c.id.in_(ids)))
        }
        scores = {}
        for row in connection.execute(
            sa.select(round_items.c.image_id, round_items.c.score, rounds.c.strategy, rounds.c.id)
            .join(rounds, rounds.c.id == round_items.c.round_id)
            .where(round_items.c.image_id.in_(ids))
            .order_by(rounds.c.id)
        ):
            scores[row.image_id] = {"acquisition_score": row.score, "strategy": row.strategy, "round": row.id}
    eligible = [
        i for i in ids if i in rows and rows[i].split == Split.POOL.value and rows[i].status != ImageStatus.REJECTED.value
    ]
    try:
        predicted = predictor(sorted(set(eligible)))
        failure = None
    except Exception as error:  # reported per task: Label Studio shows no prediction, not a crash
        predicted, failure = {}, str(error)
    results = []
    for (image_id, how), task in zip(resolved, tasks):
        reason = None
        if how == "foreign":
            reason = "task of another alkit project"
        elif image_id is None or image_id not in rows:
            reason = "not an image of this alkit project"
        elif image_id not in eligible:
            reason = f"image is not in the pool (split {rows[image_id].split}, status {rows[image_id].status})"
        elif failure is not None:
            reason = f"no prediction: {failure}"
        elif image_id not in predicted:
            reason = "no prediction for this image"
        if reason is not None:
            results.append({"result": [], "model_version": version, "alkit": {"reason": reason}})
            continue
        name, probability = predicted[image_id]
        facts = scores.get(image_id, {})
        score = facts.get("acquisition_score")
        results.append({
            "result": choice_result(name),
            "score": probability if math.isfinite(probability) else None,
            "model_version": version,
            "alkit": {"image_id": image_id, **{k: v for k, v in facts.items() if not (isinstance(v, float) and not math.isfinite(v))},
                      "acquisition_score": score if isinstance(score, float) and math.isfinite(score) else None},
        })
    return results


def authorize_webhooks_later(client, pid: int, auth: tuple[str, str], delay_s: float = 1.0, errors: list | None = None) -> None:
    """In the background (Label Studio waits for our /setup answer before it saves the
    backend and its webhook): give the backend's webhook our basic-auth credentials."""
    import base64

    header = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()

    def run() -> None:
        for _ in range(3):
            time.sleep(delay_s)
            try:
                if client.authorize_backend_webhooks(pid, auth[0], header):
                    return
            except Exception as error:  # reported, never fatal: the README says how to add the header by hand
                if errors is not None:
                    errors.append(str(error))

    threading.Thread(target=run, daemon=True).start()


def make_backend_server(
    project: Project,
    host: str,
    port: int,
    on_event: Callable[[], None],
    auth: tuple[str, str] | None = None,
    predictor: Callable[[list[int]], dict[int, tuple[str, float]]] | None = None,
    client=None,
):
    """alkit as a Label Studio ML backend (see alkit.labelstudio.server); returns a server handle.

    With `client` and `auth`, each /setup (Label Studio calls it when the backend is
    registered) also gives Label Studio's `<backend>/webhook` webhook the credentials."""
    from alkit.labelstudio.server import ServerHandle, backend_app

    def setup(payload: dict) -> dict:
        if client is not None and auth and project.settings.ls_project_id:
            authorize_webhooks_later(client, int(project.settings.ls_project_id), auth)
        return {"model_version": _model_version(project)}

    app = backend_app(
        predict=lambda tasks: backend_predictions(project, tasks, predictor),
        setup=setup,
        record=lambda action, task_id: mark_labels_pending(project, action, task_id),
        on_event=on_event,
        auth=auth,
    )
    return ServerHandle(app, host, port)
