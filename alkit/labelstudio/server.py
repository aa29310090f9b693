"""alkit's HTTP endpoints for Label Studio, on Starlette + uvicorn (`pip install 'alkit[backend]'`).

Two apps share the request handling:

* the webhook receiver (`alkit ls serve-webhook`): POST with the shared secret header
  `X-Alkit-Secret`; annotation events mark labels pending and trigger a pull;
* the ML backend (`alkit ls serve-backend`), Label Studio's ML backend protocol:
  `GET /health`, `POST /setup`, `POST /predict` (`{"tasks": [...], "project", "label_config",
  "params"}` -> `{"results": [{"result": [...], "score", "model_version"}]}`, one per task, in
  order), `POST /webhook` (annotation events, as Label Studio sends them to `<backend>/webhook`).
  Authentication: HTTP basic auth, as Label Studio sends it for an ML backend with
  "Basic auth" user and password set.

Every POST is checked in this order: credentials (before the body is read), declared and
actual body size (at most `max_body_bytes`, read in chunks), JSON that is an object (else 400).
Handlers never raise into the server: a failing pull is recorded and reported by the trigger.
"""

from __future__ import annotations

import base64
import hmac
import json
import threading
import time
from http import HTTPStatus
from typing import Any, Callable

from alkit.errors import ConfigError, InputError

WEBHOOK_SECRET_HEADER = "X-Alkit-Secret"
ANNOTATION_ACTIONS = frozenset({"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATIONS_DELETED"})
TRAIN_ACTIONS = ANNOTATION_ACTIONS | {"START_TRAINING"}
DEFAULT_MAX_BODY = 1 << 20  # webhook payloads: a task, an annotation and the project (~10 kB)
BACKEND_MAX_BODY = 32 << 20  # /predict may carry many tasks
LISTEN_BACKLOG = 128  # connections made before uvicorn starts wait in the backlog
SHUTDOWN_GRACE_S = 2  # uvicorn's graceful shutdown
START_TIMEOUT_S = 10.0  # `start()` waits this long for the server to accept connections
START_POLL_S = 0.02
STOP_TIMEOUT_S = 10.0


def _require_stack():
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError(
            "the Label Studio endpoints need starlette and uvicorn; install them with `pip install 'alkit[backend]'`"
        ) from None


class _Rejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _read_json_object(request, max_body: int) -> dict:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > max_body:
                raise _Rejected(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body of {declared} bytes exceeds the {max_body}-byte limit")
        except ValueError:
            raise _Rejected(HTTPStatus.BAD_REQUEST, "bad Content-Length header") from None
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > max_body:
            raise _Rejected(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body exceeds the {max_body}-byte limit")
    try:
        payload = json.loads(bytes(body) or b"{}")
    except ValueError:
        raise _Rejected(HTTPStatus.BAD_REQUEST, "body is not JSON") from None
    if not isinstance(payload, dict):
        raise _Rejected(HTTPStatus.BAD_REQUEST, f"body must be a JSON object, got {type(payload).__name__}")
    return payload


def secret_checker(secret: str) -> Callable[[Any], bool]:
    """Constant-time check of the `X-Alkit-Secret` header."""
    expected = secret.encode()
    return lambda request: hmac.compare_digest((request.headers.get(WEBHOOK_SECRET_HEADER) or "").encode(), expected)


def basic_auth_checker(user: str, password: str) -> Callable[[Any], bool]:
    """Constant-time check of an `Authorization: Basic ...` header."""
    expected = ("Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()).encode()
    return lambda request: hmac.compare_digest((request.headers.get("authorization") or "").encode(), expected)


def _json_endpoint(handler: Callable[[dict], tuple[int, dict]], authorized: Callable[[Any], bool] | None, max_body: int, auth_hint: str):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse

    async def endpoint(request):
        if authorized is not None and not authorized(request):
            headers = {"WWW-Authenticate": 'Basic realm="alkit"'} if auth_hint == "basic" else {}
            return JSONResponse({"error": f"missing or wrong credentials ({auth_hint})"}, status_code=HTTPStatus.UNAUTHORIZED if headers else HTTPStatus.FORBIDDEN, headers=headers)
        try:
            payload = await _read_json_object(request, max_body)
        except _Rejected as rejected:
            return JSONResponse({"error": str(rejected)}, status_code=rejected.status)
        status, body = await run_in_threadpool(handler, payload)
        return JSONResponse(body, status_code=status)

    return endpoint


def annotation_event_handler(record: Callable[[str, Any], None], on_event: Callable[[], None], actions=ANNOTATION_ACTIONS):
    """A handler for Label Studio webhook payloads: annotation actions are recorded, then `on_event`."""

    def handle(payload: dict) -> tuple[int, dict]:
        action = str(payload.get("action") or "")
        if action not in actions:
            return HTTPStatus.OK, {"ignored": action}
        task = payload.get("task")
        task_id = task.get("id") if isinstance(task, dict) else None
        record(action, task_id)
        on_event()
        return HTTPStatus.OK, {"recorded": action}

    return handle


def webhook_app(record: Callable[[str, Any], None], secret: str, on_event: Callable[[], None], max_body: int = DEFAULT_MAX_BODY):
    """The webhook receiver: POST any path with the secret header; GET answers health."""
    _require_stack()
    if not secret:
        raise InputError(
            "no webhook secret; pass --secret S or set ALKIT_LS_WEBHOOK_SECRET (the same value as the webhook's X-Alkit-Secret header)"
        )
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def health(request):
        return JSONResponse({"status": "ok"})

    post = _json_endpoint(annotation_event_handler(record, on_event), secret_checker(secret), max_body, WEBHOOK_SECRET_HEADER)
    return Starlette(routes=[Route("/{path:path}", post, methods=["POST"]), Route("/{path:path}", health, methods=["GET"])])


def backend_app(
    predict: Callable[[list[dict]], list[dict]],
    setup: Callable[[dict], dict],
    record: Callable[[str, Any], None],
    on_event: Callable[[], None],
    auth: tuple[str, str] | None = None,
    max_body: int = BACKEND_MAX_BODY,
):
    """Label Studio's ML backend API around `predict(tasks) -> results` and `setup(payload) -> dict`."""
    _require_stack()
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    authorized = basic_auth_checker(*auth) if auth else None

    async def health(request):
        if authorized is not None and not authorized(request):
            return JSONResponse({"error": "missing or wrong credentials (basic)"}, status_code=HTTPStatus.UNAUTHORIZED, headers={"WWW-Authenticate": 'Basic realm="alkit"'})
        return JSONResponse({"status": "UP", "model_class": "alkit"})

    def handle_predict(payload: dict) -> tuple[int, dict]:
        tasks = payload.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
            return HTTPStatus.BAD_REQUEST, {"error": "`tasks` must be a list of task objects"}
        return HTTPStatus.OK, {"results": predict(tasks)}

    def handle_setup(payload: dict) -> tuple[int, dict]:
        return HTTPStatus.OK, setup(payload)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/", health, methods=["GET"]),
        Route("/setup", _json_endpoint(handle_setup, authorized, max_body, "basic"), methods=["POST"]),
        Route("/predict", _json_endpoint(handle_predict, authorized, max_body, "basic"), methods=["POST"]),
        Route(
            "/webhook",
            _json_endpoint(annotation_event_handler(record, on_event, TRAIN_ACTIONS), authorized, DEFAULT_MAX_BODY, "basic"),
            methods=["POST"],
        ),
    ]
    return Starlette(routes=routes)


class ServerHandle:
    """A uvicorn server for one app, driven like `http.server`: `serve_forever()` (blocking),
    `shutdown()` from another thread, `server_address` once bound (port 0 picks a free one)."""

    def __init__(self, app, host: str, port: int) -> None:
        import socket

        import uvicorn

        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(LISTEN_BACKLOG)
        self.server_address = self._socket.getsockname()[:2]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=SHUTDOWN_GRACE_S)
        self._server = uvicorn.Server(config)
        self._stopped = threading.Event()

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        try:
            self._server.run(sockets=[self._socket])
        finally:
            self._stopped.set()

    def start(self) -> "ServerHandle":
        """Serve in a daemon thread; returns once the server accepts connections."""
        threading.Thread(target=self.serve_forever, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started and not self._stopped.is_set() and time.monotonic() < deadline:
            time.sleep(START_POLL_S)
        return self

    def shutdown(self) -> None:
        self._server.should_exit = True
        self._stopped.wait(timeout=STOP_TIMEOUT_S)

    def server_close(self) -> None:
        try:
            self._socket.close()
        except OSError:
            pass
