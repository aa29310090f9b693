"""`alkit ls serve-backend` as the ML backend of a real Label Studio project, and the shared
HTTP stack's request checks (credentials first, body limit, JSON objects only)."""

from __future__ import annotations

import base64
import http.client
import json
import time

import numpy as np
import pytest
import sqlalchemy as sa

from lsserver import annotate, connected_project, project_tasks, select_first_unlabelled

pytestmark = pytest.mark.labelstudio
AUTH = ("alkit-backend", "backend-pass-123")


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else {})
    finally:
        connection.close()


def wait_for(condition, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    return condition()


@pytest.fixture
def fitted_project(ls, token_env, cli, make_images, tmp_path):
    """5 images under the server's files root, imported embeddings with class text embeddings,
    a zero-shot posterior, connected to a new Label Studio project."""
    project = connected_project(cli, ls, make_images, 5, classes=("cat", "dog"))
    folder = ls.files_root / f"imgs-{cli.project_dir.parent.name}"
    paths = sorted(str(p) for p in folder.iterdir())
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(2, 8))
    vectors = centres[np.arange(5) % 2] + 0.3 * rng.normal(size=(5, 8))
    npz = tmp_path / "emb.npz"
    np.savez(npz, paths=np.array(paths), embeddings=vectors.astype(np.float32), text_embeddings=centres.astype(np.float32))
    assert cli("embed", "--from", str(npz), "--name", "tiny").exit_code == 0
    fitted = cli("fit", "--json")
    assert fitted.exit_code == 0, fitted.output
    from alkit.project import open_project

    return open_project(cli.project_dir)


def test_registered_as_ml_backend_label_studio_stores_its_predictions_and_annotations_reach_it(ls, fitted_project, cli):
    from alkit.labelstudio.client import LabelStudioClient
    from alkit.storage.schema import labels, posteriors
    from alkit.labelstudio.background import PullTrigger
    from alkit.workflows.ls_predict import posterior_predictions
    from alkit.workflows.ls_serve import make_backend_server
    from alkit.workflows.pull import pull_annotations
    from alkit.workflows.sync import default_refit

    project = fitted_project
    pid = project.settings.ls_project_id
    select_first_unlabelled(project, 3)
    assert cli("push", "--no-pre-annotate").exit_code == 0  # no predictions: the backend gives them
    client = ls.client()
    tasks = {int(t.data["alkit_id"]): t.id for t in project_tasks(client, pid)}
    expected = posterior_predictions(project, sorted(tasks))
    alkit_client = LabelStudioClient(ls.url, ls.token)

    def pull_then_refit():
        if pull_annotations(project, alkit_client).new_labels:
            default_refit(project)

    trigger = PullTrigger(pull_then_refit, debounce_s=0.2)
    server = make_backend_server(project, "127.0.0.1", 0, trigger, auth=AUTH, client=alkit_client).start()
    port = server.server_address[1]
    try:
        # Registered through Label Studio's own API, with basic auth as LS sends it.
        backend = client.ml.create(
            project=pid, url=f"http://127.0.0.1:{port}", title="alkit", auth_method="BASIC_AUTH",
            basic_auth_user=AUTH[0], basic_auth_pass=AUTH[1], auto_update=True,
        )
        assert client.ml.get(id=backend.id).state in {"CO", "CONNECTED"}, client.ml.get(id=backend.id)
        # Label Studio asks the backend when a task is opened, and stores what it answers.
        image_id = min(tasks)
        client.tasks.get(id=str(tasks[image_id]))
        stored = wait_for(lambda: list(client.predictions.list(task=tasks[image_id])))
        assert len(stored) == 1, stored
        prediction = stored[0]
        assert prediction.model_version == "alkit-posterior-v1"
        assert prediction.result[0]["value"]["choices"] == [expected[image_id][0]]
        assert prediction.score == pytest.approx(expected[image_id][1])

        # Annotation events: /setup gave the webhook Label Studio made for the backend our credentials.
        def hook_headers():
            hooks = [h for h in client.webhooks.list(project=str(pid)) if h.url.rstrip("/").endswith(f":{port}/webhook")]
            return hooks[0].headers if len(hooks) == 1 and hooks[0].headers else None

        assert wait_for(hook_headers) == {"Authorization": basic(*AUTH)}
        annotate(client, tasks[image_id], "dog")
        assert wait_for(lambda: len(_rows(project, sa.select(labels))) == 1)  # the pull ran
        assert wait_for(lambda: _rows(project, sa.select(sa.func.max(posteriors.c.version)))[0][0] == 2)  # the refit ran
        assert trigger.errors == []

        # A task the team made in Label Studio itself (no alkit fields): matched by its image file.
        from alkit.storage.schema import images

        own_id, own_path = _rows(project, sa.select(images.c.id, images.c.path).where(images.c.id.not_in(list(tasks))))[0]
        relative = own_path[len(str(ls.files_root.resolve())) + 1 :]
        made = client.tasks.create(project=pid, data={"image": f"/data/local-files/?d={relative}"})
        client.tasks.get(id=str(made.id))
        (theirs,) = wait_for(lambda: list(client.predictions.list(task=made.id)))
        assert theirs.model_version == "alkit-posterior-v2" and theirs.result[0]["value"]["choices"][0] in {"cat", "dog"}
        annotate(client, made.id, "cat")
        assert wait_for(lambda: own_id in {r.image_id for r in _rows(project, sa.select(labels.c.image_id))})
        assert trigger.errors == []
    finally:
        server.shutdown()
        server.server_close()


def _rows(project, query):
    with project.engine.connect() as connection:
        return connection.execute(query).all()


def test_predict_answers_only_for_pool_images_of_this_project_and_checks_requests(ls, fitted_project):
    from alkit.storage.identity import project_uuid
    from alkit.storage.schema import images
    from alkit.workflows.ls_serve import make_backend_server

    project = fitted_project
    events = []
    server = make_backend_server(project, "127.0.0.1", 0, lambda: events.append("event"), auth=AUTH).start()
    port = server.server_address[1]
    good = {"Authorization": basic(*AUTH), "Content-Type": "application/json"}
    try:
        assert request(port, "GET", "/health")[0] == 401
        assert request(port, "GET", "/health", headers=good) == (200, {"status": "UP", "model_class": "alkit"})
        assert request(port, "POST", "/setup", json.dumps({"project": "1.1"}).encode(), good) == (200, {"model_version": "alkit-posterior-v1"})
        with project.engine.connect() as connection:
            (image_id, digest), (test_id, test_digest) = connection.execute(
                sa.select(images.c.id, images.c.content_hash).order_by(images.c.id).limit(2)
            ).all()
        with project.engine.begin() as connection:
            connection.execute(images.update().where(images.c.id == test_id).values(split="test"))
        uuid = project_uuid(project.engine)
        tasks = [
            {"id": 1, "data": {"alkit_key": f"{uuid}:{digest}"}},
            {"id": 2, "data": {"alkit_key": f"{'0' * 32}:{digest}"}},
            {"id": 3, "data": {"image": "/x.png"}},
            {"id": 4, "data": {"alkit_key": f"{uuid}:{test_digest}"}},
        ]
        status, body = request(port, "POST", "/predict", json.dumps({"tasks": tasks, "project": "1.1", "label_config": "", "params": {}}).encode(), good)
        assert status == 200 and len(body["results"]) == 4
        first, foreign, unknown, held_out = body["results"]
        assert first["result"][0]["value"]["choices"][0] in {"cat", "dog"} and 0.5 <= first["score"] <= 1
        assert first["model_version"] == "alkit-posterior-v1" and first["alkit"]["image_id"] == image_id
        assert (foreign["result"], foreign["alkit"]["reason"]) == ([], "task of another alkit project")
        assert (unknown["result"], unknown["alkit"]["reason"]) == ([], "not an image of this alkit project")
        assert held_out["result"] == [] and "not in the pool" in held_out["alkit"]["reason"]

        # Credentials are checked before the body is read; then size; then the JSON shape.
        huge = {"Content-Length": str(64 << 20), "Content-Type": "application/json"}
        assert request(port, "POST", "/predict", b"{}", {**huge, "Authorization": basic("x", "y")})[0] == 401
        assert request(port, "POST", "/webhook", b"[]", {"Authorization": basic(*AUTH)})[0] == 400
        assert request(port, "POST", "/predict", b"not json", good)[0] == 400
        status, body = request(port, "POST", "/webhook", b"x" * (2 << 20), {"Authorization": basic(*AUTH)})
        assert status == 413 and "limit" in body["error"]
        assert events == []
        ok = request(port, "POST", "/webhook", json.dumps({"action": "ANNOTATION_CREATED", "task": {"id": 1}}).encode(), good)
        assert ok == (200, {"recorded": "ANNOTATION_CREATED"}) and events == ["event"]
        assert request(port, "POST", "/webhook", json.dumps({"action": "PROJECT_UPDATED"}).encode(), good) == (200, {"ignored": "PROJECT_UPDATED"})
    finally:
        server.shutdown()
        server.server_close()


def test_webhook_receiver_checks_the_secret_before_the_body(project):
    from alkit.workflows.ls_serve import make_webhook_server

    events = []
    server = make_webhook_server(project, "s3cret", "127.0.0.1", 0, lambda: events.append(1)).start()
    port = server.server_address[1]
    try:
        huge = {"Content-Length": str(64 << 20)}
        assert request(port, "POST", "/hook", b"{}", huge)[0] == 403  # no secret: refused before reading
        assert request(port, "POST", "/hook", b"{}", {**huge, "X-Alkit-Secret": "s3cret"})[0] == 413
        assert request(port, "POST", "/hook", b'"a string"', {"X-Alkit-Secret": "s3cret"})[0] == 400
        assert request(port, "GET", "/")[0] == 200 and events == []
    finally:
        server.shutdown()
        server.server_close()


def test_serve_backend_command_answers_health_with_basic_auth_and_stops_on_sigint(ls, token_env, cli, make_images):
    import os
    import signal
    import subprocess
    import sys

    from lsserver import free_port

    connected_project(cli, ls, make_images, 1)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKIT_") or k == "ALKIT_LS_TOKEN"}
    env.update(ALKIT_BACKEND_USER=AUTH[0], ALKIT_BACKEND_PASSWORD=AUTH[1])
    process = subprocess.Popen(
        [sys.executable, "-m", "alkit_cli.main", "--project", str(cli.project_dir), "ls", "serve-backend", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        def healthy():
            try:
                return request(port, "GET", "/health", headers={"Authorization": basic(*AUTH)})
            except OSError:
                return None

        assert wait_for(healthy, timeout=60) == (200, {"status": "UP", "model_class": "alkit"})
        assert request(port, "GET", "/health")[0] == 401
    finally:
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    assert process.returncode in (0, 130), stderr
    assert "basic auth required" in stderr and AUTH[1] not in stderr and ls.token not in stderr
