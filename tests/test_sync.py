"""`alkit sync` end to end against the real Label Studio server: injected refit/select steps
where a test needs exact control of the calls, the real steps in
`test_sync_with_real_refit_and_select_steps`, real subprocesses for locks and kills."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from lsserver import annotate, annotate_all, connected_project, injected_steps, project_tasks

pytestmark = pytest.mark.labelstudio
DRIVER = [sys.executable, str(Path(__file__).with_name("lsserver.py")), "sync"]


def child_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALKIT_") or k == "ALKIT_LS_TOKEN"}
    return {**env, **extra}


def round_statuses(project):
    from alkit.storage.schema import rounds

    with project.engine.connect() as connection:
        return [r.status for r in connection.execute(sa.select(rounds.c.status).order_by(rounds.c.id))]


def test_sync_two_rounds_end_to_end(ls, token_env, cli, make_images):
    from alkit.workflows.sync import sync

    project = connected_project(cli, ls, make_images, 7)
    pid = project.settings.ls_project_id
    steps, calls = injected_steps()
    outputs = []

    first = sync(project, budget=3, steps=steps)
    assert first.action == "selected-and-pushed" and first.steps == ["pull", "select", "push"]  # no labels: no refit
    assert calls == ["select"] and first.push["imported"] == 3

    idle = cli("sync", "--json")  # the CLI, with the default steps: nothing to do, so they are never needed
    outputs.append(idle.output)
    assert idle.exit_code == 0 and json.loads(idle.output)["action"] == "nothing-to-do"
    assert "no new labels" in json.loads(idle.output)["message"]

    client = ls.client()
    annotate(client, project_tasks(client, pid)[0].id, "dog")
    waiting = sync(project, budget=3, steps=steps)
    assert waiting.action == "waiting" and waiting.pull["labels_added"] == 1 and calls == ["select"]

    annotate_all(ls, pid, "cat")
    second = sync(project, budget=3, steps=steps)
    assert second.action == "selected-and-pushed" and second.steps == ["pull", "refit", "select", "push"]
    assert second.pull["rounds_closed"] == [1] and calls == ["select", "refit", "select"]
    assert round_statuses(project) == ["labeled", "pushed"]
    assert len(project_tasks(client, pid)) == 6

    annotate_all(ls, pid, "bird")
    third = sync(project, budget=3, steps=steps)  # one image left: a round of one
    assert third.action == "selected-and-pushed" and third.push["imported"] == 1
    annotate_all(ls, pid, "bird")
    last = sync(project, budget=3, steps=steps)
    assert last.action == "pool-exhausted" and calls.count("refit") == 3
    assert round_statuses(project) == ["labeled", "labeled", "labeled"]
    again = sync(project, budget=3, steps=steps)  # labels unchanged since the last refit: no refit
    assert again.action == "pool-exhausted" and calls.count("refit") == 3

    # No secret at rest or in any output.
    text = cli("pull", "--json").output + cli("status", "--json").output + "".join(outputs)
    for path in [cli.project_dir / "alkit.toml", *cli.project_dir.glob("alkit.db*"), *cli.project_dir.joinpath(".alkit").rglob("*")]:
        if path.is_file():
            assert ls.token.encode() not in path.read_bytes(), path
    assert ls.token not in text
    assert "ls_url" in (cli.project_dir / "alkit.toml").read_text()


def test_two_concurrent_syncs_one_runs_one_says_locked(ls, token_env, cli, make_images):
    project = connected_project(cli, ls, make_images, 4)
    pid = project.settings.ls_project_id
    procs = [
        subprocess.Popen([*DRIVER, str(cli.project_dir), "3", "3.0"], env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [proc.communicate(timeout=120) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outs
    results = sorted((json.loads(out) for out, _ in outs), key=lambda r: "locked" in r)
    assert results[0]["action"] == "selected-and-pushed" and results[1]["locked"] is True
    assert "--wait" in results[1]["message"]
    assert len(project_tasks(ls.client(), pid)) == 3 and round_statuses(project) == ["pushed"]

    # The CLI while a sync holds the lock: exit 0 "locked"; with --wait it queues and then runs.
    holder = subprocess.Popen([*DRIVER, str(cli.project_dir), "3", "4.0"], env=child_env(), stdout=subprocess.PIPE, text=True)
    lock_file = cli.project_dir / ".alkit" / "labelstudio.lock"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and str(holder.pid) not in (lock_file.read_text() if lock_file.exists() else ""):
        time.sleep(0.1)
    cmd = [sys.executable, "-m", "alkit_cli.main", "--project", str(cli.project_dir), "sync", "--json"]
    locked = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=60)
    assert locked.returncode == 0 and json.loads(locked.stdout)["action"] == "locked", locked.stderr
    waited = subprocess.run([*cmd, "--wait"], env=child_env(), capture_output=True, text=True, timeout=120)
    assert holder.wait(timeout=60) == 0
    assert waited.returncode == 0 and json.loads(waited.stdout)["action"] == "nothing-to-do", waited.stderr


@pytest.mark.parametrize("fault", ["sync_after_select", "push_after_import"])
def test_sync_killed_mid_run_is_completed_by_the_next_run(ls, token_env, cli, make_images, fault):
    project = connected_project(cli, ls, make_images, 4)
    pid = project.settings.ls_project_id
    killed = subprocess.run([*DRIVER, str(cli.project_dir), "3", "--crash", fault], env=child_env(), capture_output=True, text=True, timeout=120)
    assert killed.returncode == 137, killed.stderr
    assert round_statuses(project) == ["open"]
    rerun = subprocess.run([*DRIVER, str(cli.project_dir), "3"], env=child_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    result = json.loads(rerun.stdout)
    assert result["action"] == "pushed-pending-round" and result["round_id"] == 1
    assert result["push"]["recovered"] == (3 if fault == "push_after_import" else 0)
    assert len(project_tasks(ls.client(), pid)) == 3 and round_statuses(project) == ["pushed"]


def test_default_steps_fail_with_a_clear_state_error_when_missing(monkeypatch, project):
    from alkit.errors import StateError
    from alkit.workflows import sync as sync_module

    monkeypatch.setitem(sys.modules, "alkit.workflows.fit", None)  # import -> ImportError
    monkeypatch.setitem(sys.modules, "alkit.workflows.select", None)
    with pytest.raises(StateError, match="fit_posterior is not available"):
        sync_module.default_refit(project)
    with pytest.raises(StateError, match="select_round is not available"):
        sync_module.default_select(project, 3)


def test_sync_with_real_refit_and_select_steps(ls, token_env, cli, make_images, tmp_path):
    """The default steps: zero-shot Laplace head from text embeddings, BALD selection, refit
    on the pulled labels; labelled images are never selected again."""
    import numpy as np

    project = connected_project(cli, ls, make_images, 12)
    pid = project.settings.ls_project_id
    from alkit.storage.schema import images

    with project.engine.connect() as connection:
        paths = list(connection.execute(sa.select(images.c.path).order_by(images.c.id)).scalars())
    rng = np.random.default_rng(0)
    text = rng.normal(size=(3, 8))
    npz = tmp_path / "e.npz"
    np.savez(npz, paths=np.array(paths), embeddings=rng.normal(size=(12, 8)).astype(np.float32),
             text_embeddings=text.astype(np.float32))
    assert cli("embed", "--from", str(npz), "--name", "imported").exit_code == 0

    first = json.loads(cli("sync", "--budget", "4", "--json").output)
    assert first["action"] == "selected-and-pushed" and first["push"]["imported"] == 4
    annotate_all(ls, pid, "dog")
    second = json.loads(cli("sync", "--budget", "4", "--json").output)
    assert second["action"] == "selected-and-pushed" and "refit" in second["steps"]
    assert second["refit"]["labels_used"] == 4 and second["refit"]["kind"] == "laplace_head"
    from alkit.storage.schema import labels, round_items

    with project.engine.connect() as connection:
        labelled = set(connection.execute(sa.select(labels.c.image_id)).scalars())
        second_round = set(connection.execute(sa.select(round_items.c.image_id).where(round_items.c.round_id == 2)).scalars())
    assert len(labelled) == 4 and len(second_round) == 4 and not labelled & second_round
    assert len(project_tasks(ls.client(), pid)) == 8
