"""`alkit ls connect`, `alkit push`, `alkit pull` and the webhook receiver.

Push is idempotent across crashes: task ids are recorded right after the bulk import,
and before importing, the project is searched for tasks that already carry the alkit ids
about to be pushed (left by a run killed between import and bookkeeping). Pull is
incremental (tasks updated after a cursor; the first pull reads the JSON export), commits page by page
and advances its cursor only after the last page, so a failure loses nothing: the next
pull redoes the work idempotently.
"""

from __future__ import annotations

import hmac
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import sqlalchemy as sa

from alkit.errors import ConfigError, InputError, StateError
from alkit.labelstudio.config import image_reference, label_config, storage_directories
from alkit.labelstudio.mapping import VotePolicy, alkit_id, build_task, image_id_of, prediction_of, task_outcome
from alkit.project import Project
from alkit.settings import write_config_file
from alkit.storage.db import utcnow
from alkit.storage.pool import class_names, insert_ignoring_conflicts
from alkit.storage.schema import ImageStatus, LabelSource, classes, images, labels, ls_tasks, round_items, rounds, state
from alkit.workflows.labels import mark_labeled

FAULT_ENV = "ALKIT_FAULT"  # test hook: ALKIT_FAULT=<point> makes the process die at that point
CURSOR_KEY = "labelstudio.pull_cursor"
CONFLICTS_KEY = "labelstudio.conflicts"
PENDING_KEY = "labelstudio.labels_pending"
CURSOR_MARGIN = timedelta(seconds=5)  # the next pull re-reads tasks updated this long before this one began
WEBHOOK_SECRET_HEADER = "X-Alkit-Secret"
WEBHOOK_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED"})


class RoundStatus:
    OPEN = "open"  # selected, not (completely) pushed
    PUSHED = "pushed"  # every item is a task in Label Studio
    LABELED = "labeled"  # every item has a label: the round is closed


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


def connect(
    project: Project,
    client,
    project_id: int | None = None,
    create_title: str | None = None,
    local_files_root: str | None = None,
    image_url_prefix: str | None = None,
) -> ConnectResult:
    """Check URL and token, create or verify the project, store url/project id in alkit.toml."""
    if (project_id is None) == (create_title is None):
        raise InputError("pass exactly one of --project-id ID (an existing project) or --create TITLE")
    if local_files_root is not None:
        local_files_root = str(Path(local_files_root).expanduser().resolve())
        if not Path(local_files_root).is_dir():
            raise InputError(f"--local-files-root {local_files_root} is not a directory; pass the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    user = client.whoami()
    with project.engine.connect() as connection:
        names = class_names(connection)
        paths = list(
            connection.execute(sa.select(images.c.path).where(images.c.status != ImageStatus.REJECTED.value)).scalars()
        )
    created = create_title is not None
    if created:
        project_id = client.create_project(create_title, label_config(names), description="created by alkit ls connect")
    else:
        client.get_project(project_id)
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
    )


# -- push -------------------------------------------------------------------------------------


@dataclass
class PushResult:
    round_id: int
    ls_project_id: int
    items: int = 0
    already_recorded: int = 0  # tasks alkit had recorded before this run
    recovered: int = 0  # tasks found in Label Studio by alkit_id but not recorded (a crashed push)
    imported: int = 0
    with_prediction: int = 0
    storages_created: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        return asdict(self)


def _round_to_push(connection, round_id: int | None) -> sa.Row:
    if round_id is not None:
        row = connection.execute(sa.select(rounds).where(rounds.c.id == round_id)).first()
        if row is None:
            raise InputError(f"round {round_id} does not exist; `alkit status` lists rounds")
        return row
    row = connection.execute(
        sa.select(rounds).where(rounds.c.status == RoundStatus.OPEN).order_by(rounds.c.id.desc()).limit(1)
    ).first()
    if row is None:
        raise StateError("no open selection round to push; run `alkit select --budget B` (or pass --round R)")
    return row


def push_round(project: Project, client, round_id: int | None = None) -> PushResult:
    """Push one selection round as tasks (one bulk import); safe to rerun after a crash anywhere."""
    pid = ls_project_id(project)
    settings = project.settings
    with project.engine.connect() as connection:
        round_row = _round_to_push(connection, round_id)
        names = class_names(connection)
        items = connection.execute(
            sa.select(round_items.c.image_id, round_items.c.components, images.c.path)
            .join(images, images.c.id == round_items.c.image_id)
            .where(round_items.c.round_id == round_row.id)
            .order_by(round_items.c.rank)
        ).all()
        recorded = set(
            connection.execute(
                sa.select(ls_tasks.c.image_id).where(
                    ls_tasks.c.ls_project_id == pid, ls_tasks.c.image_id.in_([item.image_id for item in items])
                )
            ).scalars()
        )
    result = PushResult(round_id=round_row.id, ls_project_id=pid, items=len(items), already_recorded=len(recorded))
    pending = [item for item in items if item.image_id not in recorded]
    if pending:
        # Build every task first: a bad path fails before anything is sent.
        references = {
            item.image_id: image_reference(item.path, settings.ls_local_files_root, settings.ls_image_url_prefix)
            for item in pending
        }
        existing = client.task_ids_by_alkit_id(pid, [alkit_id(item.image_id) for item in pending])
        found = [(item.image_id, existing[alkit_id(item.image_id)]) for item in pending if alkit_id(item.image_id) in existing]
        _record_tasks(project, pid, round_row.id, found)
        result.recovered = len(found)
        to_import = [item for item in pending if alkit_id(item.image_id) not in existing]
        if to_import:
            if settings.ls_local_files_root and not settings.ls_image_url_prefix:
                result.storages_created = ensure_local_storage(
                    client, pid, [item.path for item in to_import], settings.ls_local_files_root
                )
            version = (
                f"alkit-posterior-v{round_row.posterior_version}" if round_row.posterior_version else f"alkit-round-{round_row.id}"
            )
            tasks = []
            for item in to_import:
                prediction = prediction_of(item.components, names)
                result.with_prediction += prediction is not None
                tasks.append(build_task(item.image_id, references[item.image_id], prediction, version))
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
    unknown_tasks: int = 0  # tasks alkit did not create (no alkit_id, not recorded)
    conflicts: list[dict] = field(default_factory=list)
    disagreements: list[dict] = field(default_factory=list)
    rounds_closed: list[int] = field(default_factory=list)

    @property
    def new_labels(self) -> int:
        return self.labels_added + self.labels_updated + self.labels_removed

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
    """Fetch new and updated annotations and store them as labels (source `labelstudio`)."""
    pid = ls_project_id(project)
    with project.engine.connect() as connection:
        cursor = read_state(connection, CURSOR_KEY) or {}
        pending_at_start = read_state(connection, PENDING_KEY)
        task_images = dict(
            connection.execute(sa.select(ls_tasks.c.task_id, ls_tasks.c.image_id).where(ls_tasks.c.ls_project_id == pid)).all()
        )
    after = None if full or cursor.get("ls_project_id") != pid else cursor.get("updated_after")
    result = PullResult(ls_project_id=pid, policy=policy.value, incremental=after is not None)
    # Everything updated before the server's clock at the start is read by this pull; a task
    # updated while it runs may sit on a page already read, so the next pull starts there.
    began = client.server_time()
    started = time.monotonic()
    newest: datetime | None = None
    for page in client.annotated_task_pages(pid, after):
        _apply_page(project, page, policy, task_images, result)
        for task in page:
            seen = _parse_time(task.get("updated_at"))
            if seen is not None and (newest is None or seen > newest):
                newest = seen
    if began is None and newest is not None:  # no Date header: newest - elapsed bounds the start
        began = newest - timedelta(seconds=time.monotonic() - started)
    with project.engine.begin() as connection:
        if began is not None:
            candidate = began - CURSOR_MARGIN
            previous = _parse_time(after)
            if previous is None or candidate > previous:
                write_state(connection, CURSOR_KEY, {"ls_project_id": pid, "updated_after": _server_time(candidate)})
        result.rounds_closed = close_labelled_rounds(connection)
        if read_state(connection, PENDING_KEY) == pending_at_start:  # a webhook during the pull keeps its mark
            write_state(connection, PENDING_KEY, None)
    return result


def _apply_page(project: Project, page: list[dict], policy: VotePolicy, task_images: dict[int, int], result: PullResult) -> None:
    """Reconcile the `labelstudio` labels of the images of one page of tasks, in one transaction."""
    now = utcnow()
    with project.engine.begin() as connection:
        class_ids = dict(connection.execute(sa.select(classes.c.name, classes.c.id)).all())
        conflicts = dict(read_state(connection, CONFLICTS_KEY) or {})
        image_of = {task["id"]: image_id_of(task.get("data")) or task_images.get(task["id"]) for task in page}
        known_images = set(
            connection.execute(sa.select(images.c.id).where(images.c.id.in_([i for i in image_of.values() if i]))).scalars()
        )
        recorded_task = {image_id: task_id for task_id, image_id in task_images.items()}
        touched: set[int] = set()
        for task in page:
            result.tasks_seen += 1
            image_id = image_of[task["id"]]
            if image_id not in known_images or recorded_task.get(image_id, task["id"]) != task["id"]:
                # No alkit image, or a copy of alkit's task made outside alkit (same alkit_id):
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


def close_labelled_rounds(connection) -> list[int]:
    """Rounds whose every item has a label become `labeled` (closed); returns their ids."""
    unlabelled_item = (
        sa.select(round_items.c.round_id)
        .where(round_items.c.round_id == rounds.c.id, round_items.c.image_id.not_in(sa.select(labels.c.image_id)))
        .exists()
    )
    ids = list(
        connection.execute(
            sa.select(rounds.c.id).where(
                rounds.c.status.in_([RoundStatus.OPEN, RoundStatus.PUSHED]), ~unlabelled_item
            )
        ).scalars()
    )
    if ids:
        connection.execute(rounds.update().where(rounds.c.id.in_(ids)).values(status=RoundStatus.LABELED))
    return ids


# -- webhook receiver ---------------------------------------------------------------------------


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
    """Runs `pull` in a background thread; events during a running pull cause one more pull."""

    def __init__(self, pull: Callable[[], Any]) -> None:
        self._pull = pull
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


def make_webhook_server(project: Project, secret: str, host: str, port: int, on_pending: Callable[[], None]) -> ThreadingHTTPServer:
    """An HTTP server for Label Studio webhooks: checks the shared secret header, records the
    "labels pending" mark and calls `on_pending` (which should trigger a pull), replying fast."""
    if not secret:
        raise InputError("no webhook secret; pass --secret S or set ALKIT_LS_WEBHOOK_SECRET (the same value as the webhook's X-Alkit-Secret header)")
    expected = secret.encode()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            self._reply(200, {"status": "ok"})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            given = (self.headers.get(WEBHOOK_SECRET_HEADER) or "").encode()
            if not hmac.compare_digest(given, expected):
                self._reply(403, {"error": f"missing or wrong {WEBHOOK_SECRET_HEADER} header"})
                return
            try:
                payload = json.loads(raw or b"{}")
            except ValueError:
                self._reply(400, {"error": "body is not JSON"})
                return
            action = str(payload.get("action") or "")
            if action not in WEBHOOK_ACTIONS:
                self._reply(200, {"ignored": action})
                return
            task_id = (payload.get("task") or {}).get("id") if isinstance(payload.get("task"), dict) else None
            mark_labels_pending(project, action, task_id)
            self._reply(200, {"recorded": action})
            on_pending()

        def log_message(self, format: str, *args: Any) -> None:  # quiet: no request lines on stderr
            pass

    return ThreadingHTTPServer((host, port), Handler)
