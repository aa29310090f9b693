"""What every Label Studio use case needs: the configured project, a client, the lock, the config check.

Push, pull and sync take the same project lock (`LOCK_NAME`), so one of them runs at a time.
The token is never stored: it comes from `--token` or ALKIT_LS_TOKEN on each run.
"""

from __future__ import annotations

import os

from alkit.errors import ConfigError, IntegrityError
from alkit.labelstudio.config import config_differences, storage_directories
from alkit.project import Project

LOCK_NAME = "labelstudio"  # `alkit push`, `alkit pull`, `alkit sync` and the webhook pulls share it


def ls_project_id(project: Project) -> int:
    if not project.settings.ls_url or not project.settings.ls_project_id:
        raise ConfigError(
            "no Label Studio project configured (ls_url / ls_project_id unset); run "
            "`alkit ls connect --url URL --create TITLE` or `--project-id ID` first"
        )
    return int(project.settings.ls_project_id)


def client_for(project: Project, token: str | None):
    """The client for the project's configured server; the token is never stored."""
    from alkit.labelstudio.client import LabelStudioClient
    from alkit.settings import label_studio_token

    ls_project_id(project)
    return LabelStudioClient(project.settings.ls_url, label_studio_token(token))


def connect_command(url: str, project_id: int | str, project: Project | None = None, extra: str = "") -> str:
    """The `alkit ls connect` command line that reconnects this project (a fix hint that runs as printed)."""
    parts = ["alkit"]
    if project is not None:
        parts += ["--project", str(project.directory)]
    parts += ["ls", "connect", "--url", url, "--project-id", str(project_id)]
    if project is not None and project.settings.ls_local_files_root:
        parts += ["--local-files-root", str(project.settings.ls_local_files_root)]
    if project is not None and project.settings.ls_image_url_prefix:
        parts += ["--image-url-prefix", str(project.settings.ls_image_url_prefix)]
    return " ".join(parts) + (f" {extra}" if extra else "")


def label_config_mismatch(pid: int, differences: list[str], consequence: str, by_hand: str, command: str) -> IntegrityError:
    """The error for a labeling config that differs from the class list: each difference, what
    was not done, and the two fixes (`by_hand` in Label Studio, or `command`)."""
    return IntegrityError(
        f"the labeling config of Label Studio project {pid} does not match alkit's classes "
        f"({'; '.join(differences)}); {consequence}. {by_hand} in Label Studio (Settings > Labeling Interface) "
        f"or overwrite it with alkit's: `{command}`"
    )


def check_label_config(project: Project, client, pid: int, names: list[str], when: str) -> None:
    """Raise IntegrityError naming each difference between the project's config and the class list."""
    differences = config_differences(client.get_project(pid).get("label_config") or "", names)
    if differences:
        raise label_config_mismatch(
            pid, differences, when, "Restore it", connect_command(client.url, pid, project, "--write-config")
        )


def ensure_local_storage(client, project_id: int, paths: list[str], root: str) -> list[str]:
    """Create Local Files storages so the server serves `paths` (one per top sub-directory of root)."""
    existing = [os.path.realpath(p) for p in client.local_storage_paths(project_id)]
    created = []
    for directory in storage_directories(paths, root):
        if not any(os.path.commonpath([directory, p]) == p for p in existing):
            client.create_local_storage(project_id, directory)
            existing.append(directory)
            created.append(directory)
    return created
