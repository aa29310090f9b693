"""Uncertainty visible in Label Studio, pre-annotation on/off, non-finite numbers, exit-code
contracts and fix hints that run as printed: against the real Label Studio server."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import sqlalchemy as sa

from lsserver import annotate, connected_project, project_tasks, select_first_unlabelled

pytestmark = pytest.mark.labelstudio


def rows(project, query):
    with project.engine.connect() as connection:
        return connection.execute(query).all()


def run_hints(cli, message: str, **values) -> list:
    """Every backticked `alkit ...` command of an error message, placeholders (URL, ID, DIR,
    TITLE, R, ...) filled in, run as printed in the project directory (the `cli` fixture adds
    only `--project`); returns [(command, result)]."""
    commands = [c for c in re.findall(r"`([^`]+)`", message) if c.startswith("alkit ")]
    assert commands, message
    results = []
    for command in commands:
        words = [str(values.get(word, word)) for word in command.split()[1:]]
        assert not [w for w in words if w.isupper() and len(w) > 1], (command, words)  # every placeholder filled
        results.append((command, cli(*words)))
    return results


def test_task_data_carries_the_acquisition_facts_and_no_pre_annotate_sends_no_prediction(ls, token_env, cli, make_images):
    from alkit.storage.schema import round_items, rounds

    project = connected_project(cli, ls, make_images, 6)
    pid = project.settings.ls_project_id
    first = select_first_unlabelled(project, 3)
    with project.engine.begin() as connection:
        connection.execute(rounds.update().values(strategy="bald", posterior_version=None))
    assert cli("push").exit_code == 0
    client = ls.client()
    scores = dict(rows(project, sa.select(round_items.c.image_id, round_items.c.score).where(round_items.c.round_id == first)))
    ranks = dict(rows(project, sa.select(round_items.c.image_id, round_items.c.rank).where(round_items.c.round_id == first)))
    from alkit.storage.identity import project_uuid

    uuid = project_uuid(project.engine)
    for task in project_tasks(client, pid):
        full = client.tasks.get(id=str(task.id))
        data, image_id = full.data, int(full.data["alkit_id"])
        assert data["alkit_score"] == pytest.approx(scores[image_id]) and data["alkit_rank"] == ranks[image_id]
        assert (data["alkit_round"], data["alkit_strategy"], data["alkit_project"]) == (first, "bald", uuid)
        assert data["alkit_key"].startswith(f"{uuid}:") and len(data["alkit_key"]) == len(uuid) + 1 + 64
        assert len(full.predictions) == 1 and data["alkit_confidence"] == pytest.approx(full.predictions[0].score)
    # The data manager sorts by the acquisition score (a data column).
    ordered = client.tasks.list(project=pid, fields="task_only", query=json.dumps({"ordering": ["-tasks:data.alkit_score"]}))
    assert [t.data["alkit_score"] for t in ordered] == sorted(scores.values(), reverse=True)

    second = select_first_unlabelled(project, 3)
    pushed = cli("push", "--no-pre-annotate", "--json")
    assert pushed.exit_code == 0 and json.loads(pushed.output)["with_prediction"] == 0
    new_tasks = [t for t in project_tasks(client, pid) if t.data["alkit_round"] == second]
    assert len(new_tasks) == 3
    for task in new_tasks:
        assert client.tasks.get(id=str(task.id)).predictions == [] and "alkit_confidence" not in task.data
        assert len(client.predictions.list(task=task.id)) == 0

    again = cli("push", "--json")  # a second push when every round is pushed: exit 0, no tasks
    assert again.exit_code == 0 and "already pushed" in json.loads(again.output)["message"]
    assert len(project_tasks(client, pid)) == 6


def test_project_setting_turns_pre_annotation_off(ls, token_env, cli, make_images):
    from alkit.settings import write_config_file

    project = connected_project(cli, ls, make_images, 2)
    write_config_file(cli.project_dir, {"ls_pre_annotate": False})
    select_first_unlabelled(project, 2)
    pushed = cli("push", "--json")
    assert pushed.exit_code == 0 and json.loads(pushed.output)["pre_annotate"] is False
    assert all(not ls.client().tasks.get(id=str(t.id)).predictions for t in project_tasks(ls.client(), project.settings.ls_project_id))
    assert json.loads(cli("push", "--round", "1", "--pre-annotate", "--json").output)["already_recorded"] == 2


def test_non_finite_numbers_are_never_sent_and_the_hint_unblocks(ls, token_env, cli, make_images):
    from alkit.storage.schema import images, round_items

    project = connected_project(cli, ls, make_images, 3)
    pid = project.settings.ls_project_id
    round_id = select_first_unlabelled(project, 3)
    with project.engine.begin() as connection:
        bad = connection.execute(sa.select(round_items.c.image_id).order_by(round_items.c.rank).limit(1)).scalar()
        connection.execute(
            round_items.update().where(round_items.c.image_id == bad).values(components={"predicted_class": "cat", "probability": float("nan")})
        )
    name = rows(project, sa.select(images.c.path).where(images.c.id == bad))[0][0].rsplit("/", 1)[-1]
    failed = cli("push")
    assert failed.exit_code == 5 and f"{bad} ({name})" in failed.output and "non-finite" in failed.output
    assert project_tasks(ls.client(), pid) == []
    ((command, closed),) = run_hints(cli, failed.output, R=round_id)
    assert command == f"alkit rounds close {round_id} --requeue"
    assert closed.exit_code == 0, closed.output
    assert cli("push").exit_code == 0  # unblocked: nothing left to push


def test_sync_on_an_exhausted_pool_is_an_outcome(ls, token_env, cli, make_images, tmp_path):
    project = connected_project(cli, ls, make_images, 4, classes=("cat", "dog"))
    folder = ls.files_root / f"imgs-{cli.project_dir.parent.name}"
    paths = sorted(str(p) for p in folder.iterdir())
    rng = np.random.default_rng(0)
    npz = tmp_path / "emb.npz"
    np.savez(npz, paths=np.array(paths), embeddings=rng.normal(size=(4, 8)).astype(np.float32),
             text_embeddings=rng.normal(size=(2, 8)).astype(np.float32))
    assert cli("embed", "--from", str(npz), "--name", "tiny").exit_code == 0
    csv = tmp_path / "labels.csv"
    csv.write_text("path,label\n" + "".join(f"{p},{'cat' if i % 2 else 'dog'}\n" for i, p in enumerate(paths)))
    assert cli("labels", "import", str(csv)).exit_code == 0
    result = cli("sync", "--budget", "2", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.splitlines()[-1])
    assert summary["action"] == "pool-exhausted" and summary["steps"] == ["pull", "refit"]
    assert project_tasks(ls.client(), project.settings.ls_project_id) == []


def test_fix_hints_run_as_printed(ls, token_env, cli, make_images, tmp_path):
    from alkit.errors import AlkitError
    from alkit.labelstudio.client import LabelStudioClient
    from alkit.labelstudio.config import image_reference
    from alkit.workflows.sync import sync

    project = connected_project(cli, ls, make_images, 3)
    pid = project.settings.ls_project_id
    root = str(ls.files_root)
    values = {"URL": ls.url, "ID": pid, "DIR": root, "TITLE": "hint-made"}
    messages = []
    with pytest.raises(AlkitError) as no_url:
        LabelStudioClient("", ls.token)
    messages.append(str(no_url.value))
    outside = tmp_path / "elsewhere.png"
    with pytest.raises(AlkitError) as outside_root:
        image_reference(str(outside), root, None)
    messages.append(str(outside_root.value))
    with pytest.raises(AlkitError) as no_root:
        image_reference(str(outside), None, None)
    messages.append(str(no_root.value))
    with pytest.raises(AlkitError) as missing_project:
        LabelStudioClient(ls.url, ls.token).get_project(987654)
    messages.append(str(missing_project.value))
    for message in messages:
        for command, result in run_hints(cli, message, **values):
            assert result.exit_code == 0, (command, result.output)
    # A stuck round: sync's hint closes it (the hints left the project connected to "hint-made").
    from alkit.project import open_project

    project = open_project(cli.project_dir)
    assert project.settings.ls_local_files_root == str(ls.files_root.resolve())
    pid = project.settings.ls_project_id
    select_first_unlabelled(project, 2)
    assert cli("push").exit_code == 0
    annotate(ls.client(), project_tasks(ls.client(), pid)[0].id, "cat")
    cli("pull")
    from lsserver import injected_steps

    steps, _ = injected_steps()
    stuck = sync(project, budget=1, steps=steps)
    ((command, closed),) = run_hints(cli, stuck.message)
    assert command.startswith("alkit rounds close") and closed.exit_code == 0, closed.output
    assert sync(project, budget=1, steps=steps).action == "selected-and-pushed"


def test_push_checks_that_label_studio_can_fetch_an_image_first(ls, token_env, cli, make_images):
    from lsserver import free_port

    project = connected_project(cli, ls, make_images, 2)
    pid = project.settings.ls_project_id
    dead = f"http://127.0.0.1:{free_port()}/images"
    assert cli("ls", "connect", "--url", ls.url, "--project-id", pid, "--local-files-root", ls.files_root, "--image-url-prefix", dead).exit_code == 0
    select_first_unlabelled(project, 2)
    failed = cli("push")
    assert failed.exit_code == 6 and "cannot show the images" in failed.output and dead in failed.output
    assert "nothing was imported" in failed.output and project_tasks(ls.client(), pid) == []
    ((command, fixed),) = run_hints(cli, failed.output.replace(f"--image-url-prefix {dead}", ""))
    assert fixed.exit_code == 0, fixed.output  # back to local files: the push goes through
    assert json.loads(cli("push", "--json").output)["imported"] == 2
