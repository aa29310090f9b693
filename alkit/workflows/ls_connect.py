"""`alkit ls connect`: check URL, token, images and labeling config, then create or verify the
Label Studio project and store its url and id in alkit.toml (never the token).

Everything that can fail is checked before anything is created in Label Studio.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alkit.errors import InputError, StateError
from alkit.jsonable import JsonResult
from alkit.labelstudio.config import config_differences, label_config, relative_to_root, storage_directories
from alkit.labelstudio.mapping import image_id_of, split_task_key
from alkit.project import Project
from alkit.settings import write_config_file
from alkit.storage.identity import project_uuid
from alkit.storage.images import usable_paths
from alkit.storage.classes import class_names
from alkit.storage.tasks import recorded_task_ids
from alkit.workflows.ls_project import ensure_local_storage, label_config_mismatch

CREATED_DESCRIPTION = "created by alkit ls connect"


@dataclass
class ConnectResult(JsonResult):
    url: str
    project_id: int
    created: bool
    user: str | None
    local_files_root: str | None
    image_url_prefix: str | None
    storages_created: list[str] = field(default_factory=list)
    config_written: bool = False
    adopted_foreign_tasks: int = 0  # tasks of other alkit projects left in place with --adopt (never pulled)


def foreign_tasks(client, pid: int, uuid: str, own_task_ids: set[int]) -> list[int]:
    """Ids of tasks in the Label Studio project that belong to another alkit project: a key
    with another project's UUID, or an alkit id without a key that this project never pushed."""
    found = []
    for task in client.task_data(pid):
        data = task.get("data") or {}
        key = split_task_key(data)
        if key is not None:
            if key[0] != uuid:
                found.append(task["id"])
        elif image_id_of(data) is not None and task["id"] not in own_task_ids:
            found.append(task["id"])
    return found


def _flags(local_files_root: str | None, image_url_prefix: str | None, last: str) -> str:
    """The image-serving flags of a fix hint, then `last`."""
    return " ".join(filter(None, [
        f"--local-files-root {local_files_root}" if local_files_root else "",
        f"--image-url-prefix {image_url_prefix}" if image_url_prefix else "",
        last,
    ]))


def _check_existing(project: Project, client, project_id: int, names: list[str], uuid: str, own_tasks: set[int],
                    local_files_root: str | None, image_url_prefix: str | None, adopt: bool, write_config: bool) -> list[int]:
    """Check (or overwrite) an existing project's labeling config and look for other projects' tasks."""
    client.get_project(project_id)
    if write_config:
        client.set_label_config(project_id, label_config(names))
    else:
        differences = config_differences(client.get_project(project_id).get("label_config") or "", names)
        if differences:
            command = (
                f"alkit --project {project.directory} ls connect --url {client.url} --project-id {project_id} "
                f"{_flags(local_files_root, image_url_prefix, '--write-config')}"
            )
            raise label_config_mismatch(project_id, differences, "nothing was saved", "Fix it", command)
    foreign = foreign_tasks(client, project_id, uuid, own_tasks)
    if foreign and not adopt:
        raise StateError(
            f"Label Studio project {project_id} holds {len(foreign)} tasks of another alkit project "
            f"(e.g. task {foreign[0]}); labels would go to the wrong images. Use a new project "
            f"(`alkit --project {project.directory} ls connect --url {client.url} --create TITLE`) or share "
            f"this one on purpose (their tasks are never pulled): `alkit --project {project.directory} ls connect "
            f"--url {client.url} --project-id {project_id} {_flags(local_files_root, image_url_prefix, '--adopt')}`"
        )
    return foreign


def connect(
    project: Project,
    client,
    project_id: int | None = None,
    create_title: str | None = None,
    local_files_root: str | None = None,
    image_url_prefix: str | None = None,
    adopt: bool = False,
    write_config: bool = False,
) -> ConnectResult:
    """Check URL, token, images and labeling config, then create or verify the project and
    store url/project id in alkit.toml. Everything that can fail is checked before anything
    is created in Label Studio."""
    if (project_id is None) == (create_title is None):
        raise InputError("pass exactly one of --project-id ID (an existing project) or --create TITLE")
    if local_files_root is None and image_url_prefix is None:  # neither given: keep how images are served now
        local_files_root = project.settings.ls_local_files_root
        image_url_prefix = project.settings.ls_image_url_prefix
    if local_files_root is not None:
        local_files_root = str(Path(local_files_root).expanduser().resolve())
        if not Path(local_files_root).is_dir():
            raise InputError(f"--local-files-root {local_files_root} is not a directory; pass the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")
    with project.engine.connect() as connection:
        names = class_names(connection)
        paths = usable_paths(connection)
        own_tasks = recorded_task_ids(connection)
    config = label_config(names)  # no classes: a clear error before anything is created
    if local_files_root and paths:
        if image_url_prefix:
            for path in paths:
                relative_to_root(path, local_files_root)
        else:
            storage_directories(paths, local_files_root)  # every image must be servable
    user = client.whoami()
    uuid = project_uuid(project.engine)
    created = create_title is not None
    foreign: list[int] = []
    if created:
        project_id = client.create_project(create_title, config, description=CREATED_DESCRIPTION)
    else:
        foreign = _check_existing(
            project, client, project_id, names, uuid, own_tasks, local_files_root, image_url_prefix, adopt, write_config
        )
    storages: list[str] = []
    if local_files_root and not image_url_prefix and paths:
        storages = ensure_local_storage(client, project_id, paths, local_files_root)
    write_config_file(
        project.directory,
        {
            "ls_url": client.url,
            "ls_project_id": project_id,
            "ls_local_files_root": local_files_root,
            "ls_image_url_prefix": image_url_prefix,
        },
    )
    return ConnectResult(
        url=client.url, project_id=int(project_id), created=created, user=user.get("email"),
        local_files_root=local_files_root, image_url_prefix=image_url_prefix, storages_created=storages,
        config_written=bool(write_config and not created), adopted_foreign_tasks=len(foreign),
    )
