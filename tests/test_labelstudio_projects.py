"""Tasks belong to one alkit project, and the labeling config must match the class list:
against the real Label Studio server."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa

from lsserver import annotate, connected_project, project_tasks, pushed_project, select_first_unlabelled

pytestmark = pytest.mark.labelstudio


def rows(project, query):
    with project.engine.connect() as connection:
        return connection.execute(query).all()


@pytest.fixture
def second_cli(runner, tmp_path):
    """Like `cli`, for a second alkit project directory."""
    from alkit_cli.main import app

    directory = tmp_path / "second"

    def invoke(*args: str):
        return runner.invoke(app, ["--project", str(directory), *map(str, args)], catch_exceptions=False)

    invoke.project_dir = directory
    return invoke


def test_second_project_neither_recovers_nor_pulls_the_first_ones_tasks(ls, token_env, cli, second_cli, make_images):
    from alkit.project import open_project
    from alkit.storage.schema import labels

    first = connected_project(cli, ls, make_images, 4)
    pid = first.settings.ls_project_id
    select_first_unlabelled(first, 3)
    assert cli("push").exit_code == 0
    client = ls.client()
    first_tasks = {int(t.data["alkit_id"]): t.id for t in project_tasks(client, pid)}
    for task_id in list(first_tasks.values())[:2]:
        annotate(client, task_id, "cat")

    # The same images, a second (or re-initialised) alkit project, the same Label Studio project.
    folder = ls.files_root / f"imgs-{cli.project_dir.parent.name}"
    for args in (("init",), ("add", str(folder)), ("classes", "set", "cat", "dog", "bird")):
        assert second_cli(*args).exit_code == 0
    refused = second_cli("ls", "connect", "--url", ls.url, "--project-id", pid, "--local-files-root", ls.files_root)
    assert refused.exit_code == 5, refused.output
    assert "3 tasks of another alkit project" in refused.output and "--adopt" in refused.output
    adopted = second_cli("ls", "connect", "--url", ls.url, "--project-id", pid, "--local-files-root", ls.files_root, "--adopt", "--json")
    assert adopted.exit_code == 0, adopted.output
    assert json.loads(adopted.output)["adopted_foreign_tasks"] == 3
    second = open_project(second_cli.project_dir)
    select_first_unlabelled(second, 3)  # the same three images as the first project's round
    pushed = json.loads(second_cli("push", "--json").output)
    assert (pushed["recovered"], pushed["imported"]) == (0, 3)
    assert len(project_tasks(client, pid)) == 6
    pulled = json.loads(second_cli("pull", "--json").output)
    assert (pulled["labels_added"], pulled["foreign_tasks"]) == (0, 2)
    assert rows(second, sa.select(labels)) == []

    # Each project pulls its own: an annotation on the second one's task never reaches the first.
    second_task = next(t.id for t in project_tasks(client, pid) if t.id not in set(first_tasks.values()))
    annotate(client, second_task, "dog")
    from_first = json.loads(cli("pull", "--json").output)
    assert from_first["labels_added"] == 2 and from_first["foreign_tasks"] >= 1
    assert {r.class_id for r in rows(first, sa.select(labels.c.class_id))} == {1}  # only "cat" labels
    from_second = json.loads(second_cli("pull", "--json").output)
    assert from_second["labels_added"] == 1
    assert {r.class_id for r in rows(second, sa.select(labels.c.class_id))} == {2}


def _set_config(client, pid, old: str, new: str) -> None:
    config = client.projects.get(id=pid).label_config
    assert old in config
    client.projects.update(id=pid, label_config=config.replace(old, new))


def test_label_config_drift_makes_pull_fail_naming_it_and_no_label_is_lost_or_invented(ls, token_env, cli, make_images):
    from alkit.storage.schema import labels

    project, pid = pushed_project(cli, ls, make_images, 3)
    client = ls.client()
    tasks = [t.id for t in project_tasks(client, pid)]
    annotate(client, tasks[0], "cat")
    assert json.loads(cli("pull", "--json").output)["labels_added"] == 1
    before = rows(project, sa.select(labels.c.image_id, labels.c.class_id))

    # An added choice: annotations could name a class alkit does not have.
    _set_config(client, pid, '<Choice value="bird"/>', '<Choice value="bird"/>\n    <Choice value="zebra"/>')
    annotate(client, tasks[1], "zebra")
    failed = cli("pull")
    assert failed.exit_code == 7 and "'zebra'" in failed.output and "not alkit classes" in failed.output
    pushed = cli("push", "--round", "1")  # nothing left to push: no check needed, no harm
    assert pushed.exit_code == 0
    assert rows(project, sa.select(labels.c.image_id, labels.c.class_id)) == before

    # The fix hint is a command that runs as printed (with --write-config LS refuses a config
    # that drops a choice used by an annotation: remove that annotation first).
    hint = failed.output.split("`")[-2]
    assert hint.startswith("alkit --project ") and "--write-config" in hint
    for annotation in client.annotations.list(id=tasks[1]):
        client.annotations.delete(id=annotation.id)
    from alkit_cli.main import app
    from typer.testing import CliRunner

    fixed = CliRunner().invoke(app, hint.split()[1:], catch_exceptions=False)
    assert fixed.exit_code == 0, fixed.output
    assert "zebra" not in client.projects.get(id=pid).label_config
    assert cli("pull").exit_code == 0

    # A renamed Choices control: every annotation would look empty.
    _set_config(client, pid, 'name="label"', 'name="answer"')
    renamed = cli("pull", "--full")
    assert renamed.exit_code == 7 and "'answer'" in renamed.output and "'label'" in renamed.output
    assert rows(project, sa.select(labels.c.image_id, labels.c.class_id)) == before  # nothing lost
    connect = cli("ls", "connect", "--url", ls.url, "--project-id", pid, "--local-files-root", ls.files_root)
    assert connect.exit_code == 7 and "'answer'" in connect.output


def test_connect_create_validates_everything_before_creating_anything(ls, token_env, cli, make_images, tmp_path):
    make_images(2, folder="outside")  # not under the server's local-files root
    for args in (("init",), ("add", str(tmp_path / "outside")), ("classes", "set", "cat", "dog")):
        assert cli(*args).exit_code == 0
    before = len(list(ls.client().projects.list()))
    failed = cli("ls", "connect", "--url", ls.url, "--create", "never-created", "--local-files-root", ls.files_root)
    assert failed.exit_code == 4 and "outside the Label Studio local-files root" in failed.output
    assert len(list(ls.client().projects.list())) == before
