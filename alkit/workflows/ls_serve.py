"""`alkit ls serve-webhook` and `alkit ls serve-backend`: the use cases behind alkit's HTTP endpoints.

The endpoints themselves live in `alkit.labelstudio.server` (an adapter); this module passes
them their callbacks: record the "labels pending" mark, trigger a pull (under the project
lock, never waiting: a busy lock leaves the mark for the next pull or sync), answer
/predict and /setup.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from alkit.errors import LockedError
from alkit.labelstudio.background import authorize_webhooks_later
from alkit.locking import project_lock
from alkit.project import Project
from alkit.storage.db import utcnow
from alkit.storage.state import StateKey, read_state, write_state
from alkit.workflows.ls_predict import Predictor, backend_predictions, model_version
from alkit.workflows.ls_project import LOCK_NAME
from alkit.workflows.pull import pull_annotations

LOCK_BUSY_NOTE = "pull skipped: another alkit process holds the lock (the labels-pending mark stays for it)"

_PENDING_LOCK = threading.Lock()  # the receiver's threads: read-modify-write of the mark, one at a time


def _now() -> str:
    return utcnow().isoformat()


def mark_labels_pending(project: Project, action: str, task_id: Any) -> None:
    """Count one annotation event in the "labels pending" mark (a pull clears it)."""
    with _PENDING_LOCK, project.engine.begin() as connection:
        mark = dict(read_state(connection, StateKey.LABELS_PENDING) or {"since": _now(), "events": 0})
        mark.update(events=int(mark.get("events", 0)) + 1, last_action=action, last_task_id=task_id, last_at=_now())
        write_state(connection, StateKey.LABELS_PENDING, mark)


def labels_pending(project: Project) -> dict | None:
    """The "labels pending" mark, or None when every event has been pulled."""
    with project.engine.connect() as connection:
        return read_state(connection, StateKey.LABELS_PENDING)


def pull_on_event(project: Project, client, report: Callable[[str], None], refit: bool = False) -> Callable[[], None]:
    """A pull for an event trigger: takes the project lock without waiting, pulls, and with
    `refit` refits the posterior when labels changed; says what it did through `report`."""

    def run() -> None:
        try:
            with project_lock(project, LOCK_NAME):
                result = pull_annotations(project, client)
                report(f"pulled: {result.new_labels} label changes, {result.images_labeled} images labelled")
                if refit and result.new_labels:
                    from alkit.workflows.sync import default_refit

                    default_refit(project)
                    report("refitted the posterior")
        except LockedError:
            report(LOCK_BUSY_NOTE)

    return run


def make_webhook_server(project: Project, secret: str, host: str, port: int, on_pending: Callable[[], None]):
    """A server (Starlette on uvicorn) for Label Studio webhooks: checks the shared secret header
    first, records the "labels pending" mark and calls `on_pending` (which should trigger a
    pull), replying fast. Returns a handle with `serve_forever()`, `shutdown()`, `server_address`."""
    from alkit.labelstudio.server import ServerHandle, webhook_app

    app = webhook_app(lambda action, task_id: mark_labels_pending(project, action, task_id), secret, on_pending)
    return ServerHandle(app, host, port)


def make_backend_server(
    project: Project,
    host: str,
    port: int,
    on_event: Callable[[], None],
    auth: tuple[str, str] | None = None,
    predictor: Predictor | None = None,
    client=None,
):
    """alkit as a Label Studio ML backend (see alkit.labelstudio.server); returns a server handle.

    With `client` and `auth`, each /setup (Label Studio calls it when the backend is
    registered) also gives Label Studio's `<backend>/webhook` webhook the credentials."""
    from alkit.labelstudio.server import ServerHandle, backend_app

    def setup(payload: dict) -> dict:
        if client is not None and auth and project.settings.ls_project_id:
            authorize_webhooks_later(client, int(project.settings.ls_project_id), auth)
        return {"model_version": model_version(project)}

    app = backend_app(
        predict=lambda tasks: backend_predictions(project, tasks, predictor),
        setup=setup,
        record=lambda action, task_id: mark_labels_pending(project, action, task_id),
        on_event=on_event,
        auth=auth,
    )
    return ServerHandle(app, host, port)
