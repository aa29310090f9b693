"""The one place alkit talks to Label Studio (label-studio-sdk 2.x), with retries and clean errors.

Every call goes through `_call` (`alkit.labelstudio.retry`): connection errors and 5xx answers
are retried with exponential backoff; 401/403 (bad token), 404 (missing project, JSON or HTML
body) and the rest become one-line `ExternalServiceError`s that never contain the token. Task import is
retried only when the request never reached the server, so a retry cannot duplicate
tasks (the push workflow reconciles by `data.alkit_key` anyway). The SDK (which imports
pandas) is imported on first use, never at `alkit --help`.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable, Iterator

from alkit.errors import ExternalServiceError
from alkit.labelstudio.config import DATA_TASK_KEY
from alkit.labelstudio.retry import RetryPolicy, call_with_retries

LOOKUP_CHUNK = 50  # task keys (~100 characters each) per regex filter when looking up existing tasks
PAGE_SIZE = 500
ID_PAGE_SIZE = 5000  # ids only: ~20 requests for 100k tasks


class LabelStudioClient:
    """A thin adapter over the SDK for the ~10 endpoints alkit uses."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout_s: float = 60.0,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not url:
            raise ExternalServiceError("no Label Studio URL; run `alkit ls connect --url URL --create TITLE` first")
        if not token:
            raise ExternalServiceError(
                "no Label Studio token; export ALKIT_LS_TOKEN=<Access Token from Account & Settings> or pass --token"
            )
        self.url = url.rstrip("/")
        self._token = token
        self._timeout_s = timeout_s
        self._retry = retry
        self._sleep = sleep
        self._sdk_client = None

    def __repr__(self) -> str:  # never show the token
        return f"LabelStudioClient(url={self.url!r})"

    @property
    def _sdk(self):
        if self._sdk_client is None:
            from label_studio_sdk import LabelStudio

            self._sdk_client = LabelStudio(
                base_url=self.url, api_key=self._token, timeout=self._timeout_s, max_retries=0
            )
        return self._sdk_client

    # -- error handling --------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._token, "***") if self._token else text

    def _call(self, what: str, fn: Callable[[], Any], idempotent: bool = True) -> Any:
        return call_with_retries(what, fn, self.url, self._retry, self._sleep, self._scrub, idempotent)

    # -- endpoints -------------------------------------------------------------------------

    def whoami(self) -> dict:
        user = self._call("check the token", lambda: self._sdk.users.whoami())
        return {"id": user.id, "email": getattr(user, "email", None)}

    def server_time(self):
        """The server's clock (HTTP `Date` header of /health/, 1 s resolution), None if absent."""
        import httpx
        from email.utils import parsedate_to_datetime

        response = self._call("read the server time", lambda: httpx.get(f"{self.url}/health/", timeout=self._timeout_s))
        try:
            return parsedate_to_datetime(response.headers["date"])
        except (KeyError, TypeError, ValueError):
            return None

    def create_project(self, title: str, label_config: str, description: str = "") -> int:
        project = self._call(
            "create a project",
            lambda: self._sdk.projects.create(title=title, label_config=label_config, description=description),
            idempotent=False,
        )
        return int(project.id)

    def get_project(self, project_id: int) -> dict:
        project = self._call(f"read project {project_id}", lambda: self._sdk.projects.get(id=project_id))
        return {"id": int(project.id), "title": project.title, "label_config": project.label_config}

    def set_label_config(self, project_id: int, label_config: str) -> None:
        self._call(
            f"update the labeling config of project {project_id}",
            lambda: self._sdk.projects.update(id=project_id, label_config=label_config),
        )

    def local_storage_paths(self, project_id: int) -> list[str]:
        storages = self._call(
            f"list local-files storages of project {project_id}",
            lambda: self._sdk.import_storage.local.list(project=project_id),
        )
        return [s.path for s in storages if s.path]

    def create_local_storage(self, project_id: int, path: str) -> None:
        self._call(
            f"create a local-files storage for {path} in project {project_id}",
            lambda: self._sdk.import_storage.local.create(
                project=project_id, path=path, use_blob_urls=True, title=f"alkit: {path}"
            ),
            idempotent=False,
        )

    def tasks_by_key(self, project_id: int, keys: list[str]) -> dict[str, list[tuple[int, Any]]]:
        """Existing tasks of the project whose `data.alkit_key` is one of `keys`:
        key -> [(task id, data.alkit_round)], lowest task id first."""
        found: dict[str, list[tuple[int, Any]]] = {}
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[start : start + LOOKUP_CHUNK]
            pattern = "^(" + "|".join(re.escape(key) for key in chunk) + ")$"
            query = {
                "filters": {
                    "conjunction": "and",
                    "items": [{"filter": f"filter:tasks:data.{DATA_TASK_KEY}", "operator": "regex", "type": "String", "value": pattern}],
                }
            }
            wanted = set(chunk)
            for task in self._pages(project_id, query, fields="task_only", include="id,data", what="look up pushed tasks"):
                key = (task.get("data") or {}).get(DATA_TASK_KEY)
                if key in wanted:
                    found.setdefault(key, []).append((task["id"], (task.get("data") or {}).get("alkit_round")))
        return {key: sorted(tasks, key=lambda t: t[0]) for key, tasks in found.items()}

    def task_data(self, project_id: int) -> Iterator[dict]:
        """Every task of the project as {id, data} (no annotations), page by page."""
        return self._pages(project_id, {}, fields="task_only", include="id,data", what="list tasks")

    def task_ids(self, project_id: int) -> set[int]:
        """The ids of every task of the project (to notice tasks deleted in Label Studio)."""
        pages = self._pages(project_id, {}, fields="task_only", include="id", what="list task ids", page_size=ID_PAGE_SIZE)
        return {task["id"] for task in pages}

    def delete_task(self, task_id: int) -> None:
        self._call(f"delete task {task_id}", lambda: self._sdk.tasks.delete(id=str(task_id)))

    def fetch_status(self, reference: str) -> tuple[int | None, str]:
        """(HTTP status, reason) of GETting what a task's image points at, as Label Studio's
        front end would: a server path (local files) with this client's token, a URL as is."""
        import httpx

        if reference.startswith("/"):
            url, headers = self.url + reference, {"Authorization": f"Token {self._token}"}
        else:
            url, headers = reference, {}
        try:
            with httpx.stream("GET", url, headers=headers, timeout=self._timeout_s, follow_redirects=True) as response:
                return response.status_code, response.reason_phrase
        except httpx.HTTPError as error:
            return None, self._scrub(f"{type(error).__name__}: {error}")

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """One bulk import; returns the new task ids in input order."""
        response = self._call(
            f"import {len(tasks)} tasks into project {project_id}",
            lambda: self._sdk.projects.import_tasks(id=project_id, request=tasks, return_task_ids=True),
            idempotent=False,
        )
        ids = [int(task_id) for task_id in (response.task_ids or [])]
        if len(ids) != len(tasks):
            raise ExternalServiceError(
                f"Label Studio returned {len(ids)} task ids for {len(tasks)} imported tasks; rerun `alkit push` "
                "(it finds tasks already created by their alkit_key)"
            )
        return ids

    def create_annotation(self, task_id: int, result: list[dict], lead_time: float = 1.0) -> int:
        """One annotation on a task, as an annotator would submit it (used by the demo's
        simulated annotator); returns the annotation id."""
        annotation = self._call(
            f"annotate task {task_id}",
            lambda: self._sdk.annotations.create(id=task_id, result=result, was_cancelled=False, lead_time=lead_time),
            idempotent=False,
        )
        return int(annotation.id)

    def task_count(self, project_id: int) -> int:
        page = self._call(
            f"count tasks of project {project_id}",
            lambda: self._sdk.tasks.list(project=project_id, page=1, page_size=1, fields="task_only", include="id"),
        )
        return int(page.response.total)

    def annotated_task_pages(self, project_id: int, updated_after: str | None) -> Iterator[list[dict]]:
        """Pages of tasks with their annotations: those updated after `updated_after` (server
        time, `%Y-%m-%dT%H:%M:%S.%fZ`) through the task list, or, when None, every annotated
        task through the JSON export (about twice as fast as listing with annotations)."""
        if updated_after is None:
            raw = self._call(
                f"export annotated tasks of project {project_id}",
                lambda: b"".join(self._sdk.projects.exports.download_sync(id=project_id, export_type="JSON")),
            )
            try:
                tasks = json.loads(raw)
            except ValueError:
                raise ExternalServiceError(
                    f"Label Studio at {self.url} returned an export of project {project_id} that is not JSON; rerun `alkit pull`"
                ) from None
            for start in range(0, len(tasks), PAGE_SIZE):
                yield [_task_dict(task) for task in tasks[start : start + PAGE_SIZE]]
            return
        items = [{"filter": "filter:tasks:updated_at", "operator": "greater", "type": "Datetime", "value": updated_after}]
        query = {"filters": {"conjunction": "and", "items": items}}
        page: list[dict] = []
        for task in self._pages(project_id, query, fields="all", what="fetch annotated tasks"):
            page.append(task)
            if len(page) == PAGE_SIZE:
                yield page
                page = []
        if page:
            yield page

    def _pages(
        self, project_id: int, query: dict, fields: str, what: str, include: str | None = None, page_size: int = PAGE_SIZE
    ) -> Iterator[dict]:
        """Every task matching `query`, page by page (each page retried on its own)."""
        seen, number = 0, 1
        extra = {"include": include} if include else {}
        while True:
            pager = self._call(
                f"{what} in project {project_id} (page {number})",
                lambda: self._sdk.tasks.list(
                    project=project_id, page=number, page_size=page_size, fields=fields,
                    query=json.dumps(query), **extra,
                ),
            )
            items = list(pager.items or [])
            for task in items:
                yield _task_dict(task)
            seen += len(items)
            total = int(getattr(pager.response, "total", 0) or 0)
            if not items or seen >= total:
                return
            number += 1

    def create_webhook(self, project_id: int, url: str, secret_header: dict[str, str]) -> int:
        hook = self._call(
            f"register a webhook for project {project_id}",
            lambda: self._sdk.webhooks.create(
                url=url, project=project_id, send_payload=True, send_for_all_actions=False,
                actions=["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED"], headers=secret_header,
            ),
            idempotent=False,
        )
        return int(hook.id)

    def authorize_backend_webhooks(self, project_id: int, user: str, authorization: str) -> list[int]:
        """Add `Authorization` to the webhooks Label Studio made for the project's ML backends
        registered with basic-auth user `user` (`<backend url>/webhook`, created without
        credentials); returns the ids of the webhooks updated."""
        backends = self._call(f"list ML backends of project {project_id}", lambda: self._sdk.ml.list(project=project_id))
        urls = {
            str(b.url).rstrip("/") + "/webhook" for b in backends or [] if b.url and getattr(b, "basic_auth_user", None) == user
        }
        hooks = self._call(f"list webhooks of project {project_id}", lambda: self._sdk.webhooks.list(project=str(project_id)))
        updated = []
        for hook in hooks or []:
            headers = dict(hook.headers or {}) if isinstance(hook.headers, dict) else {}
            if str(hook.url).rstrip("/") not in urls or headers.get("Authorization") == authorization:
                continue
            headers["Authorization"] = authorization
            extra = {"actions": list(hook.actions)} if hook.actions else {}
            self._call(
                f"add credentials to webhook {hook.id}",
                lambda hook=hook, headers=headers, extra=extra: self._sdk.webhooks.update(
                    id=hook.id, url=hook.url, headers=headers, send_for_all_actions=bool(hook.send_for_all_actions),
                    send_payload=True, **extra,
                ),
            )
            updated.append(int(hook.id))
        return updated


def _task_dict(task: Any) -> dict:
    """A task (SDK model or exported dict) as a plain dict with the keys the mapping reads."""
    get = task.get if isinstance(task, dict) else lambda key, default=None: getattr(task, key, default)
    return {
        "id": int(get("id")),
        "data": get("data") or {},
        "annotations": list(get("annotations") or []),
        "updated_at": _iso(get("updated_at")),
    }


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if hasattr(value, "isoformat"):
        text = value.isoformat()
        return text.replace("+00:00", "Z")
    return str(value)
