"""Push and pull throughput (tasks/s) against a real local Label Studio server.

    python -m benchmarks.labelstudio --n 2000

Starts a server from `.ci/install_labelstudio.sh`'s venv (tests/lsserver.py), registers N
tiny images under its local-files root (not timed), then times:
  * push: one selection round of N images -> look-up by alkit_id + one bulk import (with
    predictions) + bookkeeping; then the idempotent re-push (nothing to import);
  * pull: N tasks already annotated in Label Studio (imported with inline annotations into a
    second project, not timed) -> a full pull storing N labels (JSON export); then an
    incremental pull that finds nothing new (tasks updated before the cursor's 5 s window).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from lsserver import select_first_unlabelled, start_server  # noqa: E402

    from alkit.labelstudio.client import LabelStudioClient
    from alkit.labelstudio.mapping import choice_result
    from alkit.project import init_project, open_project
    from alkit.settings import write_config_file
    from alkit.storage.schema import images
    from alkit.workflows.classes import set_classes
    from alkit.workflows.ingest import add_images
    from alkit.workflows.ls_connect import connect
    from alkit.workflows.pull import pull_annotations
    from alkit.workflows.push import push_round
    from benchmarks.ingest import generate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server, start_s = timed(lambda: start_server(tmp / "ls"))
        try:
            folder = server.files_root / "bench"
            generate(folder, args.n)
            init_project(tmp / "project")
            project = open_project(tmp / "project")
            add_images(project, [str(folder)], show_progress=False)
            set_classes(project, ["cat", "dog", "bird"])
            client = LabelStudioClient(server.url, server.token)
            connect(project, client, create_title="bench-push", local_files_root=str(server.files_root))
            project = open_project(tmp / "project")
            round_id = select_first_unlabelled(project, args.n)

            pushed, push_s = timed(lambda: push_round(project, client, round_id))
            assert pushed.imported == args.n, pushed
            again, repush_s = timed(lambda: push_round(project, client, round_id))
            assert again.imported == 0 and again.already_recorded == args.n

            # Annotated tasks for the pull: same alkit ids, inline annotations, a second project.
            import sqlalchemy as sa

            with project.engine.connect() as connection:
                ids = list(connection.execute(sa.select(images.c.id).order_by(images.c.id)).scalars())
            pull_pid = client.create_project("bench-pull", open_label_config(client, project))
            names = ["cat", "dog", "bird"]
            tasks = [
                {"data": {"image": "/x.png", "alkit_id": str(i)}, "annotations": [{"result": choice_result(names[i % 3])}]}
                for i in ids
            ]
            for start in range(0, len(tasks), 1000):
                client.import_tasks(pull_pid, tasks[start : start + 1000])
            time.sleep(6)  # annotations older than the cursor's 5 s safety window, as in steady use
            write_config_file(project.directory, {"ls_project_id": pull_pid})
            project = open_project(tmp / "project")
            pulled, pull_s = timed(lambda: pull_annotations(project, client))
            assert pulled.labels_added == args.n, pulled.as_json()
            quiet, incremental_s = timed(lambda: pull_annotations(project, client))
            assert quiet.new_labels == 0, quiet.as_json()
            print("incremental pull:", {k: v for k, v in quiet.as_json().items() if k in ("incremental", "tasks_seen")})
        finally:
            server.stop()

    n = args.n
    print(f"server start (template copy + start): {start_s:.1f} s")
    print(f"push   {n} tasks with predictions: {push_s:.2f} s  ({n / push_s:.0f} tasks/s)")
    print(f"re-push (idempotent, nothing to import): {repush_s:.3f} s")
    print(f"pull   {n} annotated tasks -> {pulled.labels_added} labels: {pull_s:.2f} s  ({n / pull_s:.0f} tasks/s)")
    print(f"incremental pull, nothing new: {incremental_s:.3f} s")


def open_label_config(client, project) -> str:
    return client.get_project(project.settings.ls_project_id)["label_config"]


if __name__ == "__main__":
    main()
