"""Rounds that always finish, against the real Label Studio server: skipped tasks, deleted
tasks, `alkit rounds` / `alkit rounds close`, rounds closed by age, skip limits, `status`."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from lsserver import annotate, connected_project, injected_steps, project_tasks

pytestmark = pytest.mark.labelstudio


def rows(project, query):
    with project.engine.connect() as connection:
        return connection.execute(query).all()


def tasks_by_image(ls, pid) -> dict[int, int]:
    return {int(t.data["alkit_id"]): t.id for t in project_tasks(ls.client(), pid)}


def rounds_json(cli) -> list[dict]:
    result = cli("rounds", "--json")
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.strip()]


def test_skipped_and_labelled_later_round_completes_and_sync_moves_on(ls, token_env, cli, make_images):
    from alkit.storage.schema import images, ls_task_events, round_items
    from alkit.workflows.sync import sync

    project = connected_project(cli, ls, make_images, 5)
    pid = project.settings.ls_project_id
    steps, calls = injected_steps()
    first = sync(project, budget=2, steps=steps)
    assert first.action == "selected-and-pushed" and first.push["imported"] == 2
    by_image = tasks_by_image(ls, pid)
    skipped_image, later_image = sorted(by_image)
    annotate(ls.client(), by_image[skipped_image], None, cancelled=True)  # the annotator presses "Skip"

    waiting = sync(project, budget=2, steps=steps)
    assert waiting.action == "waiting", waiting.message
    assert waiting.pull["skipped_items"] == [skipped_image]
    (progress,) = rounds_json(cli)
    assert (progress["status"], progress["labelled"], progress["skipped"], progress["waiting"]) == ("pushed", 0, 1, 1)
    status = json.loads(cli("status", "--json").output)
    assert status["open_rounds"] == [1]  # a pushed round waiting in Label Studio is open
    assert dict(rows(project, sa.select(images.c.id, images.c.status)))[skipped_image] == "registered"  # back in the pool
    assert rows(project, sa.select(ls_task_events.c.image_id, ls_task_events.c.event)) == [(skipped_image, "skipped")]

    annotate(ls.client(), by_image[later_image], "dog")  # the other task is labelled later
    moved = sync(project, budget=2, steps=steps)
    assert moved.action == "selected-and-pushed", moved.message
    assert moved.pull["rounds_closed"] == [1] and moved.steps == ["pull", "refit", "select", "push"]
    progress = rounds_json(cli)
    assert [(p["round_id"], p["status"], p["labelled"], p["skipped"], p["waiting"]) for p in progress] == [
        (1, "labeled", 1, 1, 0), (2, "pushed", 0, 0, 2),
    ]
    assert json.loads(cli("status", "--json").output)["open_rounds"] == [2]
    outcomes = dict(rows(project, sa.select(round_items.c.image_id, round_items.c.outcome).where(round_items.c.round_id == 1)))
    assert outcomes == {skipped_image: "skipped", later_image: None}
    table = cli("rounds")
    assert table.exit_code == 0 and "labelled" in table.output and "waiting" in table.output


def test_rounds_close_requeue_returns_images_to_the_pool(ls, token_env, cli, make_images):
    from alkit.storage.schema import images, ls_task_events, ls_tasks, rounds
    from alkit.workflows.sync import sync

    project = connected_project(cli, ls, make_images, 4)
    pid = project.settings.ls_project_id
    steps, _ = injected_steps()
    assert sync(project, budget=3, steps=steps).action == "selected-and-pushed"
    by_image = tasks_by_image(ls, pid)
    labelled = min(by_image)
    annotate(ls.client(), by_image[labelled], "cat")
    assert cli("pull").exit_code == 0
    stuck = sync(project, budget=3, steps=steps)
    assert stuck.action == "nothing-to-do" and "alkit rounds close 1 --requeue" in stuck.message

    closed = cli("rounds", "close", "1", "--requeue", "--json")
    assert closed.exit_code == 0, closed.output
    requeued = sorted(set(by_image) - {labelled})
    assert sorted(json.loads(closed.output)["requeued"]) == requeued
    status = dict(rows(project, sa.select(images.c.id, images.c.status)))
    assert [status[i] for i in requeued] == ["registered", "registered"] and status[labelled] == "labeled"
    assert rows(project, sa.select(rounds.c.status, rounds.c.closed_reason)) == [("closed", "closed by hand")]
    assert {r.image_id for r in rows(project, sa.select(ls_tasks.c.image_id))} == {labelled}
    assert sorted(r.image_id for r in rows(project, sa.select(ls_task_events.c.image_id).where(ls_task_events.c.event == "requeued"))) == requeued
    again = cli("rounds", "close", "1")
    assert again.exit_code == 5 and "already closed" in again.output
    missing = cli("rounds", "close", "9")
    assert missing.exit_code == 4 and "does not exist" in missing.output
    assert sync(project, budget=3, steps=steps).action == "selected-and-pushed"  # sync moves on


def test_deleted_task_returns_its_image_to_the_pool_and_sync_moves_on(ls, token_env, cli, make_images):
    from alkit.storage.schema import images, ls_task_events
    from alkit.workflows.sync import sync

    project = connected_project(cli, ls, make_images, 4)
    pid = project.settings.ls_project_id
    steps, _ = injected_steps()
    assert sync(project, budget=2, steps=steps).action == "selected-and-pushed"
    by_image = tasks_by_image(ls, pid)
    deleted, kept = sorted(by_image)
    ls.client().tasks.delete(id=str(by_image[deleted]))  # someone deletes a task in Label Studio
    annotate(ls.client(), by_image[kept], "bird")
    result = sync(project, budget=2, steps=steps)
    assert result.pull["deleted_items"] == [deleted] and result.pull["rounds_closed"] == [1]
    assert result.action == "selected-and-pushed", result.message
    assert dict(rows(project, sa.select(images.c.id, images.c.status)))[deleted] == "registered"
    assert rows(project, sa.select(ls_task_events.c.image_id, ls_task_events.c.event, ls_task_events.c.task_id)) == [
        (deleted, "deleted", by_image[deleted])
    ]
    assert [p["deleted"] for p in rounds_json(cli)] == [1, 0]
    push_again = cli("push", "--round", "1", "--json")  # the deleted item is not "already recorded"
    assert push_again.exit_code == 0 and json.loads(push_again.output)["items"] == 1


def test_skip_limit_excludes_with_reason_and_old_rounds_close(ls, token_env, cli, make_images):
    from alkit.settings import write_config_file
    from alkit.storage.schema import images, rounds
    from alkit.workflows.sync import sync

    project = connected_project(cli, ls, make_images, 4)
    write_config_file(cli.project_dir, {"ls_max_skips": 1})
    from alkit.project import open_project

    project = open_project(cli.project_dir)
    pid = project.settings.ls_project_id
    steps, _ = injected_steps()
    assert sync(project, budget=2, steps=steps).action == "selected-and-pushed"
    by_image = tasks_by_image(ls, pid)
    skipped, waiting = sorted(by_image)
    annotate(ls.client(), by_image[skipped], None, cancelled=True)
    pulled = json.loads(cli("pull", "--json").output)
    assert pulled["excluded"] == [skipped]
    status, reason = rows(project, sa.select(images.c.status, images.c.error_reason).where(images.c.id == skipped))[0]
    assert status == "rejected" and "skipped 1 times" in reason and "ls_max_skips = 1" in reason

    write_config_file(cli.project_dir, {"ls_round_max_age_hours": 0.0})  # every pushed round is too old
    project = open_project(cli.project_dir)
    result = sync(project, budget=2, steps=steps)
    assert result.rounds_closed_by_age == [1] and result.action == "selected-and-pushed", result.message
    assert rows(project, sa.select(rounds.c.status, rounds.c.closed_reason).where(rounds.c.id == 1)) == [
        ("closed", "older than ls_round_max_age_hours = 0")
    ]
    assert dict(rows(project, sa.select(images.c.id, images.c.status)))[waiting] == "registered"  # requeued
