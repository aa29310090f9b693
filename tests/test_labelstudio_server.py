"""push / pull / connect / webhook against a real Label Studio server on 127.0.0.1.

The server comes from `.ci/install_labelstudio.sh` (venv at $ALKIT_LS_VENV or
~/.cache/alkit/ls-venv); when it is missing these tests FAIL with the install command.
One server per test process, one Label Studio project per test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa

from faults_support import run_alkit as crash_alkit
from lsserver import annotate, annotator, connected_project, free_port, project_tasks, pushed_project, select_first_unlabelled

pytestmark = pytest.mark.labelstudio
REPO = Path(__file__).resolve().parents[1]
ALKIT = [sys.executable, "-m", "alkit_cli.main"]


def run_alkit(project_dir, *args, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKIT_") or k == "ALKIT_LS_TOKEN"}
    env.update(env_extra or {})
    return subprocess.run(
        [*ALKIT, "--project", str(project_dir), *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )


def rows(project, query):
    with project.engine.connect() as connection:
        return connection.execute(query).all()


def test_push_with_predictions_then_idempotent_repush(ls, token_env, cli, make_images):
    from alkit.storage.schema import images, ls_tasks, rounds

    project = connected_project(cli, ls, make_images, 8)
    pid = project.settings.ls_project_id
    round_id = select_first_unlabelled(project, 6)
    first = cli("push", "--json")
    assert first.exit_code == 0, first.output
    pushed = json.loads(first.output)
    assert pushed == {
        "round_id": round_id, "ls_project_id": pid, "items": 6, "already_recorded": 0, "recovered": 0,
        "imported": 6, "with_prediction": 6, "storages_created": [],  # `ls connect` made it
        "pre_annotate": True, "message": pushed["message"],
    }
    client = ls.client()
    (storage,) = client.import_storage.local.list(project=pid)  # the image folder under the document root
    assert storage.path == str((ls.files_root / f"imgs-{cli.project_dir.parent.name}").resolve())
    tasks = project_tasks(client, pid)
    assert len(tasks) == 6
    full = client.tasks.get(id=str(tasks[0].id))
    prediction = full.predictions[0]
    prediction = prediction if isinstance(prediction, dict) else prediction.dict()
    assert prediction["model_version"] == f"alkit-round-{round_id}" and 0.5 <= prediction["score"] < 0.6
    assert prediction["result"][0]["value"]["choices"][0] in {"cat", "dog", "bird"}
    recorded = dict(rows(project, sa.select(ls_tasks.c.task_id, ls_tasks.c.image_id)))
    assert {int(t.data["alkit_id"]) for t in tasks} == set(recorded.values())
    # The image is really served to annotators through the Local Files storage.
    request = urllib.request.Request(ls.url + tasks[0].data["image"], headers={"Authorization": f"Token {ls.token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        image_id = int(tasks[0].data["alkit_id"])
        (path,) = rows(project, sa.select(images.c.path).where(images.c.id == image_id))[0]
        assert response.read() == Path(path).read_bytes()
    again = cli("push", "--round", str(round_id), "--json")
    assert again.exit_code == 0, again.output
    assert json.loads(again.output)["imported"] == 0 and json.loads(again.output)["already_recorded"] == 6
    assert len(project_tasks(client, pid)) == 6  # task count = unique items
    assert rows(project, sa.select(rounds.c.status))[0][0] == "pushed"
    statuses = dict(rows(project, sa.select(images.c.status, sa.func.count()).group_by(images.c.status)))
    assert statuses == {"pushed": 6, "registered": 2}
    nothing = cli("push", "--json")  # every round pushed: an outcome, not an error
    assert nothing.exit_code == 0, nothing.output
    assert json.loads(nothing.output)["round_id"] is None and "already pushed" in json.loads(nothing.output)["message"]
    assert len(project_tasks(client, pid)) == 6


def test_pull_maps_annotations_to_labels_incrementally(ls, token_env, cli, make_images):
    from alkit.storage.schema import images, labels, rounds

    project, pid = pushed_project(cli, ls, make_images, 6)
    client = ls.client()
    by_image = {int(t.data["alkit_id"]): t.id for t in project_tasks(client, pid)}
    ids = sorted(by_image)
    second = annotator(client, "second-annotator")
    cat_annotation = annotate(client, by_image[ids[0]], "cat")
    annotate(client, by_image[ids[1]], "dog")
    annotate(client, by_image[ids[1]], "cat", user=second)  # a disagreement: a tie
    annotate(client, by_image[ids[2]], None, cancelled=True)  # skipped
    annotate(client, by_image[ids[3]], "zebra")  # not a class: a conflict, not a label
    annotate(client, by_image[ids[4]], "bird")
    annotate(client, by_image[ids[4]], "bird", user=second)

    result = cli("pull", "--json")
    assert result.exit_code == 0, result.output
    pulled = json.loads(result.output)
    assert pulled["incremental"] is False
    assert (pulled["labels_added"], pulled["skipped"], pulled["images_labeled"]) == (5, 1, 3)
    assert [(c["image_id"], c["value"], c["reason"]) for c in pulled["conflicts"]] == [(ids[3], ["zebra"], "unknown class")]
    assert [(d["image_id"], d["resolution"]) for d in pulled["disagreements"]] == [(ids[1], "tie")]
    stored = rows(project, sa.select(labels.c.image_id, labels.c.source, labels.c.external_id).order_by(labels.c.id))
    assert {r.image_id for r in stored} == {ids[0], ids[1], ids[4]} and {r.source for r in stored} == {"labelstudio"}
    assert str(cat_annotation) in {r.external_id for r in stored}
    status = dict(rows(project, sa.select(images.c.id, images.c.status)))
    # The skipped task's image left the round, back to the pool (no embeddings here: `registered`).
    assert [status[i] for i in ids] == ["labeled", "labeled", "registered", "pushed", "labeled", "pushed"]
    assert pulled["skipped_items"] == [ids[2]] and pulled["deleted_items"] == [] and pulled["excluded"] == []

    # Nothing new: an incremental pull changes nothing.
    quiet = json.loads(cli("pull", "--json").output)
    assert quiet["incremental"] is True and quiet["new_labels"] == 0

    # An annotator changes her mind, another fixes the conflict, the last task gets done.
    client.annotations.update(id=cat_annotation, result=[{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": ["dog"]}}])
    annotate(client, by_image[ids[3]], "cat", user=second)
    annotate(client, by_image[ids[2]], "bird", user=second)
    annotate(client, by_image[ids[5]], "dog")
    changed = json.loads(cli("pull", "--json").output)
    assert (changed["labels_updated"], changed["labels_added"]) == (1, 3)
    assert changed["rounds_closed"] == [1]
    assert len(changed["conflicts"]) == 1  # the zebra annotation is still there, still not a label
    assert rows(project, sa.select(rounds.c.status))[0][0] == "labeled"
    from alkit.storage.labels import resolved_labels

    with project.engine.connect() as connection:
        assert len(resolved_labels(connection, ids)) == 6

    # --policy unanimous withdraws the tie's labels; the image goes back to waiting.
    strict = json.loads(cli("pull", "--full", "--policy", "unanimous", "--json").output)
    assert strict["labels_removed"] == 2
    assert dict(rows(project, sa.select(images.c.id, images.c.status)))[ids[1]] == "pushed"


def test_pull_after_a_server_restart(ls, token_env, cli, make_images):
    project, pid = pushed_project(cli, ls, make_images, 3)
    client = ls.client()
    for task in project_tasks(client, pid):
        annotate(client, task.id, "dog")
    ls.restart()
    result = cli("pull", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["labels_added"] == 3 and json.loads(result.output)["rounds_closed"] == [1]


def test_killed_between_import_and_bookkeeping_then_rerun(ls, token_env, cli, make_images):
    from alkit.storage.schema import ls_tasks

    project = connected_project(cli, ls, make_images, 5)
    pid = project.settings.ls_project_id
    select_first_unlabelled(project, 5)
    crashed = crash_alkit(cli.project_dir, "push", crash="push_after_import")
    assert crashed.returncode == 137, crashed.stderr
    assert rows(project, sa.select(ls_tasks)) == []  # the tasks exist, alkit never recorded them
    assert len(project_tasks(ls.client(), pid)) == 5
    rerun = run_alkit(cli.project_dir, "push", "--json")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["recovered"] == 5 and json.loads(rerun.stdout)["imported"] == 0
    assert len(project_tasks(ls.client(), pid)) == 5  # no duplicates
    assert len(rows(project, sa.select(ls_tasks))) == 5


def test_bad_token_missing_project_and_server_down(ls, token_env, cli, make_images, monkeypatch):
    project = connected_project(cli, ls, make_images, 2)
    select_first_unlabelled(project, 2)
    wrong = "wrong-token-" + "x" * 20
    bad = run_alkit(cli.project_dir, "push", env_extra={"ALKIT_LS_TOKEN": wrong})
    assert bad.returncode == 6
    assert "refused the token" in bad.stderr and "401" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    assert wrong not in bad.stderr + bad.stdout

    from alkit.settings import write_config_file

    write_config_file(cli.project_dir, {"ls_project_id": 987654})
    missing = run_alkit(cli.project_dir, "push")
    assert missing.returncode == 6 and "not found" in missing.stderr and "404" in missing.stderr
    write_config_file(cli.project_dir, {"ls_url": f"http://127.0.0.1:{free_port()}"})
    started = time.monotonic()
    down = run_alkit(cli.project_dir, "pull")
    assert down.returncode == 6 and "cannot reach Label Studio" in down.stderr and "after 4 attempts" in down.stderr
    assert time.monotonic() - started < 30
    no_token = run_alkit(cli.project_dir, "pull", env_extra={"ALKIT_LS_TOKEN": ""})
    assert no_token.returncode == 6 and "ALKIT_LS_TOKEN" in no_token.stderr
    for result in (bad, missing, down):
        assert ls.token not in result.stdout + result.stderr


def test_webhook_receiver_checks_the_secret_and_triggers_a_pull(ls, token_env, cli, make_images):
    from alkit.labelstudio.client import LabelStudioClient
    from alkit.storage.schema import labels
    from alkit.labelstudio.background import PullTrigger
    from alkit.workflows.ls_serve import labels_pending, make_webhook_server
    from alkit.workflows.pull import pull_annotations

    project, pid = pushed_project(cli, ls, make_images, 2)
    client = LabelStudioClient(ls.url, ls.token)
    trigger = PullTrigger(lambda: pull_annotations(project, client))
    server = make_webhook_server(project, "s3cret", "127.0.0.1", 0, trigger)
    port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        def post(secret):
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/hook", data=json.dumps({"action": "ANNOTATION_CREATED", "task": {"id": 1}}).encode(),
                headers={"Content-Type": "application/json", **({"X-Alkit-Secret": secret} if secret else {})},
            )
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    return response.status
            except urllib.error.HTTPError as error:
                return error.code

        assert post("wrong") == 403 and post(None) == 403
        assert labels_pending(project) is None and trigger.runs == 0
        # The real server calls the receiver when an annotation is made.
        client.create_webhook(pid, f"http://127.0.0.1:{port}/hook", {"X-Alkit-Secret": "s3cret"})
        task = project_tasks(ls.client(), pid)[0]
        annotate(ls.client(), task.id, "bird")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not rows(project, sa.select(labels)):
            time.sleep(0.2)
        assert len(rows(project, sa.select(labels))) == 1 and trigger.errors == []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and labels_pending(project) is not None:
            time.sleep(0.1)
        assert labels_pending(project) is None  # the pull consumed the mark
    finally:
        server.shutdown()
        server.server_close()
