"""A real Label Studio server for the integration tests (and the benchmark).

The server venv and a pre-migrated template data dir are built by
`.ci/install_labelstudio.sh`; the venv is `$ALKIT_LS_VENV` if set, else
`~/.cache/alkit/ls-venv`. A missing venv makes the fixture FAIL with the install command:
these tests are part of the suite, not optional extras.

Run as a script, this module is the driver of the subprocess sync tests:
`python tests/lsserver.py sync PROJECT_DIR BUDGET [SELECT_SLEEP_S] [--crash POINT]` runs
`alkit.workflows.sync.sync` with the injected test steps (see `injected_steps`) and prints its
JSON summary; with `--crash`, the process dies at that point (`faults_support.CRASH_POINTS`).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# Test-only credentials of a loopback server; must match .ci/install_labelstudio.sh.
LS_TEST_TOKEN = "alkit-test-token-0123456789abcdef01234567"
INSTALL_HINT = "bash .ci/install_labelstudio.sh"
READY_TIMEOUT_S = 120.0


def ls_venv() -> Path:
    return Path(os.environ.get("ALKIT_LS_VENV") or Path.home() / ".cache" / "alkit" / "ls-venv")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_env(data_dir: Path, files_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"USERNAME", "PASSWORD", "HOST", "PORT", "DEBUG"}}
    env.update(
        LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
        LABEL_STUDIO_USERNAME="admin@example.com",
        LABEL_STUDIO_PASSWORD="admin-pass-123",
        LABEL_STUDIO_USER_TOKEN=LS_TEST_TOKEN,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(files_root),
        LABEL_STUDIO_SSRF_PROTECTION_ENABLED="false",
        ML_BLOCK_LOCAL_IP="false",  # the ML backend under test listens on 127.0.0.1
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        COLLECT_ANALYTICS="false",
        LATEST_VERSION_CHECK="false",
        LOG_LEVEL="WARNING",
    )
    return env


@dataclass
class LabelStudioServer:
    """One server process on 127.0.0.1, its data dir and the local-files document root."""

    venv: Path
    workdir: Path
    port: int = 0
    process: subprocess.Popen | None = None
    token: str = LS_TEST_TOKEN
    start_seconds: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def files_root(self) -> Path:
        return self.workdir / "files"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def start(self) -> "LabelStudioServer":
        binary = self.venv / "bin" / "label-studio"
        template = self.venv / "template-data"
        if not binary.exists() or not (template / "label_studio.sqlite3").exists():
            raise RuntimeError(
                f"Label Studio server venv or template missing under {self.venv} "
                f"(ALKIT_LS_VENV); run `{INSTALL_HINT}` first"
            )
        if not self.data_dir.exists():
            shutil.copytree(template, self.data_dir)
        self.files_root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        started = time.monotonic()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(binary), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port)],
            env=_server_env(self.data_dir, self.files_root),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        log.close()
        deadline = started + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.process.returncode}; log: {self.log_path}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/", timeout=2) as response:
                    if response.status == 200:
                        self.start_seconds.append(time.monotonic() - started)
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"Label Studio not ready on {self.url} after {READY_TIMEOUT_S:.0f} s; log: {self.log_path}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- helpers for tests: act as the annotators ------------------------------------------

    def client(self):
        from label_studio_sdk import LabelStudio

        return LabelStudio(base_url=self.url, api_key=self.token, timeout=60, max_retries=0)


def start_server(workdir: Path | None = None) -> LabelStudioServer:
    venv = ls_venv()
    workdir = Path(workdir or tempfile.mkdtemp(prefix="alkit-ls-"))
    return LabelStudioServer(venv=venv, workdir=workdir).start()


_SHARED: LabelStudioServer | None = None


def shared_server() -> LabelStudioServer:
    """One server per test process (every test module uses the same one); stopped at exit.

    Raises (the fixtures turn that into a test failure, not a skip) when the venv is missing.
    """
    global _SHARED
    if _SHARED is None:
        server = LabelStudioServer(venv=ls_venv(), workdir=Path(tempfile.mkdtemp(prefix="alkit-ls-")))
        atexit.register(_stop_shared, server)
        server.start()
        _SHARED = server
    elif _SHARED.process is None:
        _SHARED.start()
    return _SHARED


def _stop_shared(server: LabelStudioServer) -> None:
    server.stop()
    shutil.rmtree(server.workdir, ignore_errors=True)


def annotate(client, task_id: int, choice: str | None, cancelled: bool = False, user: int | None = None) -> int:
    """Create one annotation as an annotator would in the UI (as `user`, default the admin); returns its id."""
    result = [] if choice is None else [
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}
    ]
    extra = {} if user is None else {"completed_by": user}
    annotation = client.annotations.create(id=task_id, result=result, was_cancelled=cancelled, lead_time=1.0, **extra)
    return annotation.id


def annotator(client, name: str) -> int:
    """The id of a second annotator account (created on first use)."""
    for user in client.users.list():
        if user.username == name:
            return user.id
    return client.users.create(username=name, email=f"{name}@example.com", password="annotator-pass-123").id


def project_tasks(client, project_id: int) -> list:
    return list(client.tasks.list(project=project_id, fields="task_only", page_size=1000))


# -- injected sync steps (the real fit/select are built elsewhere) --------------------------


def injected_steps(select_sleep: float = 0.0):
    """A refit that records its call and a select that takes the first B unlabelled images."""
    from alkit.workflows.sync import SyncSteps

    calls: list[str] = []

    def refit(project):
        calls.append("refit")
        return {"refit": len(calls)}

    def select(project, budget):
        calls.append("select")
        if select_sleep:
            time.sleep(select_sleep)
        return select_first_unlabelled(project, budget)

    return SyncSteps(refit=refit, select=select), calls


def select_first_unlabelled(project, budget: int) -> int | None:
    """Create an open round of the first `budget` images with no label and no round."""
    import sqlalchemy as sa

    from alkit.storage.db import utcnow
    from alkit.storage.classes import class_names
    from alkit.storage.schema import ImageStatus, images, labels, round_items, rounds

    with project.engine.begin() as connection:
        names = class_names(connection)
        taken = sa.select(round_items.c.image_id)
        labelled = sa.select(labels.c.image_id)
        ids = list(
            connection.execute(
                sa.select(images.c.id)
                .where(
                    images.c.id.not_in(taken),
                    images.c.id.not_in(labelled),
                    images.c.status != ImageStatus.REJECTED.value,
                )
                .order_by(images.c.id)
                .limit(budget)
            ).scalars()
        )
        if not ids:
            return None
        round_id = connection.execute(
            rounds.insert().values(strategy="first", settings={"budget": budget}, status="open", created_at=utcnow())
        ).inserted_primary_key[0]
        connection.execute(
            round_items.insert(),
            [
                {
                    "round_id": round_id,
                    "image_id": image_id,
                    "rank": rank,
                    "score": 1.0 / (rank + 1),
                    "components": {"predicted_class": names[rank % len(names)], "probability": 0.5 + 0.01 * rank},
                }
                for rank, image_id in enumerate(ids)
            ],
        )
        connection.execute(
            images.update().where(images.c.id.in_(ids)).values(status=ImageStatus.SELECTED.value, updated_at=utcnow())
        )
    return round_id


def _main(argv: list[str]) -> int:
    if argv[:1] != ["sync"]:
        print("usage: lsserver.py sync PROJECT_DIR BUDGET [SELECT_SLEEP_S] [--crash POINT]", file=sys.stderr)
        return 2
    if "--crash" in argv:
        from faults_support import install_crash

        at = argv.index("--crash")
        install_crash(argv[at + 1])
        argv = argv[:at] + argv[at + 2 :]
    from alkit.errors import AlkitError, LockedError
    from alkit.project import open_project
    from alkit.workflows.sync import sync

    project = open_project(Path(argv[1]))
    steps, _ = injected_steps(select_sleep=float(argv[3]) if len(argv) > 3 else 0.0)
    try:
        result = sync(project, budget=int(argv[2]), steps=steps)
    except LockedError as error:
        print(json.dumps({"locked": True, "message": str(error)}))
        return 0
    except AlkitError as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    print(json.dumps(result.as_json()))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(_main(sys.argv[1:]))


def connected_project(cli, server: LabelStudioServer, make_images, count: int, classes=("cat", "dog", "bird"), title=None):
    """An alkit project (through the CLI) with `count` images served by `server`, connected to
    a new Label Studio project; returns the opened Project. ALKIT_LS_TOKEN must be set."""
    from alkit.project import open_project

    folder = server.files_root / f"imgs-{cli.project_dir.parent.name}"
    make_images(count, folder=str(folder))
    for args in (("init",), ("add", str(folder)), ("classes", "set", *classes)):
        result = cli(*args)
        assert result.exit_code == 0, result.output
    result = cli(
        "ls", "connect", "--url", server.url, "--create", title or cli.project_dir.parent.name,
        "--local-files-root", str(server.files_root), "--json",
    )
    assert result.exit_code == 0, result.output
    return open_project(cli.project_dir)


def pushed_project(cli, server: LabelStudioServer, make_images, count: int):
    """`connected_project` with all `count` images selected as round 1 and pushed through the
    CLI; returns (the opened Project, its Label Studio project id)."""
    project = connected_project(cli, server, make_images, count)
    select_first_unlabelled(project, count)
    pushed = cli("push")
    assert pushed.exit_code == 0, pushed.output
    return project, project.settings.ls_project_id


def annotate_all(server: LabelStudioServer, project_id: int, choice: str) -> None:
    """Annotate every task of the project that has no annotation yet with `choice`."""
    client = server.client()
    for task in project_tasks(client, project_id):
        if not task.total_annotations:
            annotate(client, task.id, choice)
