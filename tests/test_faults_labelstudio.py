"""A hostile Label Studio: a fake server on 127.0.0.1 answering 401, 404 with HTML, 500, too
slowly, or resetting the connection mid-pull; the real server (tests/lsserver.py) with
annotations naming unknown classes, tasks duplicated by someone else, and kill -9 during
push, pull and sync. Every scenario ends with no token anywhere at rest or in any output.

(Two concurrent `sync` processes: `test_sync.py::test_two_concurrent_syncs_one_runs_one_says_locked`.)
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa

from faults_support import (
    check_invariants,
    child_env,
    exported_task,
    fake_label_studio,
    kill_after_ready,
    kill_when,
    run_alkit,
    snapshot,
    start_alkit,
    write_npz,
)
from lsserver import annotate, annotate_all, connected_project, project_tasks, pushed_project, select_first_unlabelled

FAKE_TOKEN = "fake-token-0123456789abcdefSECRET"


def assert_no_token(project_dir: Path, token: str, *texts: str) -> None:
    """The token is in no file of the project (DB, WAL, alkit.toml, .alkit/) and no output."""
    for path in Path(project_dir).rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
    for text in texts:
        assert token not in (text or "")


# -- a fake, hostile server --------------------------------------------------------------------


@pytest.fixture
def fake_project(tmp_path, make_images):
    """A project with 3 pushed images whose alkit.toml points at a fake server (set per test)."""
    from alkit.project import init_project, open_project
    from alkit.settings import write_config_file
    from alkit.workflows.classes import set_classes
    from alkit.workflows.ingest import add_images

    directory = tmp_path / "fake-project"
    init_project(directory)
    project = open_project(directory)
    add_images(project, [str(p) for p in make_images(3)], show_progress=False)
    set_classes(project, ["cat", "dog"])
    from alkit.storage.db import utcnow
    from alkit.storage.schema import ls_tasks

    with project.engine.begin() as connection:  # pushed: keyless tasks count only when alkit recorded them
        connection.execute(ls_tasks.insert(), [
            {"image_id": i, "ls_project_id": 7, "task_id": 100 + i, "round_id": None, "pushed_at": utcnow()} for i in (1, 2, 3)
        ])

    def point_at(url: str):
        write_config_file(directory, {"ls_url": url, "ls_project_id": 7})
        return open_project(directory)

    return point_at


def _client(url: str, timeout_s: float = 5.0, attempts: int = 3):
    from alkit.labelstudio.client import LabelStudioClient, RetryPolicy

    return LabelStudioClient(url, FAKE_TOKEN, timeout_s=timeout_s, retry=RetryPolicy(attempts=attempts, base_delay_s=0.0), sleep=lambda s: None)


def _labels(project) -> list[tuple]:
    return snapshot(project.directory)["labels"]


EXPORT = [exported_task(101, 1, "cat", 1), exported_task(102, 2, "dog", 2), exported_task(103, 3, "cat", 3)]


@pytest.mark.parametrize(
    "mode, fragments",
    [
        ("401", ["refused the token", "401", "Invalid token"]),
        ("404html", ["not found", "404", "HTML error page"]),
    ],
)
def test_cli_pull_against_an_erroring_server_exits_6_with_one_line(fake_project, mode, fragments):
    with fake_label_studio(mode=mode, export=EXPORT) as fake:
        project = fake_project(fake.url)
        result = run_alkit(project.directory, "pull", env=child_env(ALKIT_LS_TOKEN=FAKE_TOKEN))
    assert result.returncode == 6, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and len(lines[0]) < 600, lines
    for fragment in fragments:
        assert fragment in lines[0]
    assert "<html" not in lines[0].lower()
    assert any(header == f"Token {FAKE_TOKEN}" for header in fake.auth_headers)  # it was really sent ...
    assert _labels(project) == []
    assert_no_token(project.directory, FAKE_TOKEN, result.stdout, result.stderr)  # ... and never echoed or stored


@pytest.mark.parametrize("mode", ["500", "slow", "reset"])
def test_failed_pull_is_a_clear_error_then_the_next_pull_is_complete(fake_project, mode):
    from alkit.errors import ExternalServiceError
    from alkit.storage.state import StateKey, read_state
    from alkit.workflows.pull import pull_annotations

    with fake_label_studio(mode=mode, export=EXPORT, slow_s=1.0) as fake:
        project = fake_project(fake.url)
        with pytest.raises(ExternalServiceError) as caught:
            pull_annotations(project, _client(fake.url, timeout_s=0.3, attempts=2))
        message = str(caught.value)
        expected = {"500": "failed to export", "slow": "ReadTimeout", "reset": "cannot reach Label Studio"}[mode]
        assert expected in message and "after 2 attempts" in message, message
        assert "\n" not in message and FAKE_TOKEN not in message
        assert sum("/export" in r for r in fake.requests) == 2  # retried: a GET is idempotent
        assert _labels(project) == []  # nothing half-applied, nothing wrong
        with project.engine.connect() as connection:
            assert read_state(connection, StateKey.PULL_CURSOR) is None  # the next pull starts over
        fake.mode = "ok"
        result = pull_annotations(project, _client(fake.url))
    assert result.labels_added == 3
    assert [(Path(p).name, c) for p, c, *_ in _labels(project)] == [("img_0000.png", "cat"), ("img_0001.png", "dog"), ("img_0002.png", "cat")]
    assert_no_token(project.directory, FAKE_TOKEN, message)


# -- the real server ---------------------------------------------------------------------------


def _alkit_ids(ls, pid) -> list[str]:
    return sorted(str(t.data.get("alkit_id")) for t in project_tasks(ls.client(), pid))


def test_unknown_class_annotations_are_conflicts_not_labels(ls, token_env, cli, make_images):
    project, pid = pushed_project(cli, ls, make_images, 3)
    client = ls.client()
    tasks = sorted(project_tasks(client, pid), key=lambda t: int(t.data["alkit_id"]))
    annotate(client, tasks[0].id, "cat")
    annotate(client, tasks[1].id, "zebra")  # Label Studio does not validate choices
    pulled = cli("pull", "--json")
    assert pulled.exit_code == 0, pulled.output
    result = json.loads(pulled.stdout)
    assert result["labels_added"] == 1
    assert [(c["image_id"], c["value"], c["reason"]) for c in result["conflicts"]] == [(2, ["zebra"], "unknown class")]
    assert [(Path(p).name, c) for p, c, *_ in snapshot(cli.project_dir)["labels"]] == [("img_0000.png", "cat")]
    human = cli("pull")
    assert "unknown classes: zebra" in human.stderr
    assert_no_token(cli.project_dir, ls.token, pulled.output, human.output)


def test_tasks_duplicated_by_someone_else_never_remove_or_change_labels(ls, token_env, cli, make_images):
    """Someone re-imports alkit's tasks (same data.alkit_id) outside alkit; the duplicates
    neither duplicate labels nor wipe the labels of the tasks alkit created."""
    project, pid = pushed_project(cli, ls, make_images, 3)
    client = ls.client()
    originals = sorted(project_tasks(client, pid), key=lambda t: int(t.data["alkit_id"]))
    annotate(client, originals[0].id, "dog")
    first = json.loads(cli("pull", "--json").stdout)
    assert first["labels_added"] == 1
    # After that pull: someone imports the same three tasks again (no annotations) ...
    client.projects.import_tasks(id=pid, request=[{"data": dict(t.data)} for t in originals], return_task_ids=True)
    assert len(project_tasks(client, pid)) == 6
    second = cli("pull", "--json")
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout)["unknown_tasks"] == 3  # reported, not applied
    assert [(Path(p).name, c) for p, c, *_ in snapshot(cli.project_dir)["labels"]] == [("img_0000.png", "dog")]
    # ... and alkit's own push stays idempotent: nothing is imported again.
    again = json.loads(cli("push", "--round", "1", "--json").stdout)
    assert again["imported"] == 0 and len(project_tasks(client, pid)) == 6
    # An annotator labels a duplicate differently: the label of alkit's own task stands.
    duplicates = [t for t in project_tasks(client, pid) if t.id not in {o.id for o in originals}]
    annotate(client, min(duplicates, key=lambda t: int(t.data["alkit_id"])).id, "cat")
    full = json.loads(cli("pull", "--full", "--json").stdout)
    assert full["labels_removed"] == 0 and full["labels_updated"] == 0
    assert [(Path(p).name, c) for p, c, *_ in snapshot(cli.project_dir)["labels"]] == [("img_0000.png", "dog")]
    assert check_invariants(cli.project_dir) == []
    assert_no_token(cli.project_dir, ls.token, second.output)


# -- kill -9 during push, pull and sync -------------------------------------------------------------


def _labels_count(directory) -> int:
    with sqlite3.connect(Path(directory) / "alkit.db", timeout=5) as connection:
        return connection.execute("SELECT count(*) FROM labels").fetchone()[0]


@pytest.mark.parametrize("seed", [21, 22])
def test_pull_killed_between_pages_then_rerun_has_every_label_once(ls, token_env, cli, make_images, seed):
    project, pid = pushed_project(cli, ls, make_images, 8)
    annotate_all(ls, pid, "bird")
    threshold = random.Random(seed).randint(1, 6)
    process = start_alkit(
        cli.project_dir, "pull", "--full",
        patches={"set": {"alkit.labelstudio.client:PAGE_SIZE": 2}, "slow": {"alkit.workflows.pull:apply_page": 0.08}},
    )
    assert kill_when(process, lambda: _labels_count(cli.project_dir) >= threshold), "pull finished before the kill"
    assert 0 < _labels_count(cli.project_dir) < 8
    rerun = cli("pull", "--json")
    assert rerun.exit_code == 0, rerun.output
    snap = snapshot(cli.project_dir)
    assert sorted(Path(p).name for p, c, *_ in snap["labels"]) == [f"img_{i:04d}.png" for i in range(8)]
    assert {c for _, c, *_ in snap["labels"]} == {"bird"} and snap["rounds"][0][0] == "labeled"
    assert_no_token(cli.project_dir, ls.token, rerun.output)


@pytest.mark.parametrize("seed", [31, 32])
def test_push_killed_at_a_random_point_then_rerun_has_every_task_once(ls, token_env, cli, make_images, tmp_path, seed):
    project = connected_project(cli, ls, make_images, 5)
    pid = project.settings.ls_project_id
    select_first_unlabelled(project, 5)
    ready = tmp_path / "ready"
    process = start_alkit(
        cli.project_dir, "push", ready_file=ready,
        patches={"slow": {"alkit.labelstudio.client:LabelStudioClient.import_tasks": 0.4}},
    )
    kill_after_ready(process, ready, random.Random(seed).uniform(0.2, 2.5))
    assert len(_alkit_ids(ls, pid)) in (0, 5)  # one bulk import: all or nothing
    rerun = cli("push", "--json")
    assert rerun.exit_code == 0, rerun.output
    assert _alkit_ids(ls, pid) == sorted(str(i) for i in range(1, 6))
    snap = snapshot(cli.project_dir)
    assert len(snap["ls_tasks"]) == 5 and snap["rounds"][0][0] == "pushed"
    assert check_invariants(cli.project_dir) == []


def _sync_project(cli, ls, make_images, tmp_path):
    project = connected_project(cli, ls, make_images, 12)
    with project.engine.connect() as connection:
        from alkit.storage.schema import images

        paths = list(connection.execute(sa.select(images.c.path).order_by(images.c.id)).scalars())
    npz = write_npz(tmp_path / "e.npz", paths, dim=8)
    assert cli("embed", "--from", str(npz), "--name", "imported").exit_code == 0
    first = json.loads(cli("sync", "--budget", "4", "--json").stdout)
    assert first["action"] == "selected-and-pushed"
    annotate_all(ls, project.settings.ls_project_id, "dog")
    return project


def _by_name(snap: dict) -> dict:
    name = lambda p: Path(p).name  # noqa: E731
    return {
        "images": sorted((name(p), s) for p, _, s, *_ in snap["images"]),
        "labels": sorted((name(p), c) for p, c, *_ in snap["labels"]),
        "rounds": [(status, sorted(map(name, items))) for status, items in snap["rounds"]],
        "ls_tasks": sorted(map(name, snap["ls_tasks"])),
    }


@pytest.fixture(scope="module")
def clean_sync(ls, tmp_path_factory):
    """The state after two clean syncs (the second after annotating the first round)."""
    from typer.testing import CliRunner

    from alkit_cli.main import app

    base = tmp_path_factory.mktemp("clean-sync")
    directory = base / "project"

    def cli(*args):
        return CliRunner().invoke(app, ["--project", str(directory), *map(str, args)], catch_exceptions=False)

    cli.project_dir = directory

    def make_images(count, folder):
        from conftest import write_png

        return [write_png(Path(folder) / f"img_{i:04d}.png", i, (16, 12)) for i in range(count)]

    import os

    os.environ["ALKIT_LS_TOKEN"] = ls.token
    try:
        project = _sync_project(cli, ls, make_images, base)
        second = json.loads(cli("sync", "--budget", "4", "--json").stdout)
    finally:
        del os.environ["ALKIT_LS_TOKEN"]
    assert second["action"] == "selected-and-pushed"
    return _by_name(snapshot(directory)), len(project_tasks(ls.client(), project.settings.ls_project_id))


@pytest.mark.parametrize("fault", ["sync_after_pull", "sync_after_refit"])  # push_after_import / sync_after_select: test_sync.py
def test_sync_killed_at_each_step_then_rerun_equals_a_clean_run(ls, token_env, cli, make_images, tmp_path, clean_sync, fault):
    clean, clean_tasks = clean_sync
    project = _sync_project(cli, ls, make_images, tmp_path)
    pid = project.settings.ls_project_id
    killed = run_alkit(cli.project_dir, "sync", "--budget", "4", "--json", crash=fault)
    assert killed.returncode == 137, killed.stderr
    rerun = cli("sync", "--budget", "4", "--json")
    assert rerun.exit_code == 0, rerun.output
    action = json.loads(rerun.stdout)["action"]
    assert action == "selected-and-pushed"
    assert _by_name(snapshot(cli.project_dir)) == clean
    ids = _alkit_ids(ls, pid)
    assert len(ids) == clean_tasks == len(set(ids))  # no task twice in Label Studio
    assert check_invariants(cli.project_dir) == []
    assert_no_token(cli.project_dir, ls.token, killed.stdout, killed.stderr, rerun.output)


# -- webhooks ------------------------------------------------------------------------------------


def test_webhook_burst_every_event_recorded_and_wrong_secrets_rejected(project):
    """60 posts from 12 threads at once, a third with a missing or wrong secret: every good one
    is answered 200 and counted, every bad one 403 and not counted; the pull trigger never
    runs two pulls at once."""
    from alkit.labelstudio.background import PullTrigger
    from alkit.workflows.ls_serve import labels_pending, make_webhook_server

    running, overlaps, calls = [0], [0], [0]
    guard = threading.Lock()

    def pull() -> None:
        with guard:
            running[0] += 1
            overlaps[0] = max(overlaps[0], running[0])
            calls[0] += 1
        threading.Event().wait(0.05)
        with guard:
            running[0] -= 1

    trigger = PullTrigger(pull)
    server = make_webhook_server(project, "burst-secret", "127.0.0.1", 0, trigger)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    port = server.server_address[1]

    def post(i: int) -> tuple[int, int]:
        secret = {0: "burst-secret", 1: "burst-secret", 2: None if i % 2 else "wrong"}[i % 3]
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/hook", data=json.dumps({"action": "ANNOTATION_CREATED", "task": {"id": i}}).encode(),
            headers={"Content-Type": "application/json", **({"X-Alkit-Secret": secret} if secret else {})},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return i, response.status
        except urllib.error.HTTPError as error:
            return i, error.code

    try:
        with ThreadPoolExecutor(12) as pool:
            codes = dict(pool.map(post, range(60)))
    finally:
        server.shutdown()
        server.server_close()
    assert {i: c for i, c in codes.items() if i % 3 == 2} == {i: 403 for i in range(60) if i % 3 == 2}
    assert {i: c for i, c in codes.items() if i % 3 != 2} == {i: 200 for i in range(60) if i % 3 != 2}
    mark = labels_pending(project)
    assert mark is not None and mark["events"] == 40
    deadline = threading.Event()
    for _ in range(100):
        if not trigger._running:
            break
        deadline.wait(0.05)
    assert overlaps[0] == 1 and 1 <= calls[0] <= 40 and trigger.errors == []
