"""Which image of this project a Label Studio task speaks for (pull and the ML backend ask alike).

A task names its image by its key (project UUID + content hash, or `id-N`), by being a task
alkit recorded, or, for tasks made in Label Studio itself without alkit fields, by the image
file it points at.
"""

from __future__ import annotations

import os
from enum import StrEnum

from alkit.labelstudio.config import DATA_IMAGE_KEY, path_of_reference
from alkit.labelstudio.mapping import image_id_of, split_task_key
from alkit.project import Project
from alkit.storage.images import ids_by_hash, ids_by_path

ID_KEY_PREFIX = "id-"  # key of an image without a content hash: "id-<image id>"


class TaskMatch(StrEnum):
    """How a task was matched to an image."""

    KEY = "key"  # its key names this project
    RECORDED = "recorded"  # keyless, pushed by this project
    REFERENCE = "reference"  # made in Label Studio itself, no alkit fields: its image file is one of this project's
    FOREIGN = "foreign"  # another project's key
    UNKNOWN = "unknown"


def _reference_path(project: Project, data: dict) -> str | None:
    settings = project.settings
    return path_of_reference(data.get(DATA_IMAGE_KEY), settings.ls_local_files_root, settings.ls_image_url_prefix)


def image_of_task(
    task: dict, uuid: str, by_hash: dict[str, int], task_images: dict[int, int], by_path: dict[str, int] | None = None,
    project: Project | None = None,
) -> tuple[int | None, TaskMatch]:
    """(image id, how) for one task."""
    data = task.get("data") or {}
    key = split_task_key(data)
    if key is not None:
        if key[0] != uuid:
            return None, TaskMatch.FOREIGN
        image_part = key[1]
        if image_part.startswith(ID_KEY_PREFIX):
            try:
                return int(image_part[len(ID_KEY_PREFIX):]), TaskMatch.KEY
            except ValueError:
                return None, TaskMatch.UNKNOWN
        image_id = by_hash.get(image_part)
        return (image_id, TaskMatch.KEY) if image_id is not None else (None, TaskMatch.UNKNOWN)
    if task["id"] in task_images:
        return task_images[task["id"]], TaskMatch.RECORDED
    if by_path and project is not None and image_id_of(data) is None:
        path = _reference_path(project, data)
        if path in by_path:
            return by_path[path], TaskMatch.REFERENCE
    return None, TaskMatch.UNKNOWN


def _images_by_reference(connection, project: Project, tasks: list[dict]) -> dict[str, int]:
    """path -> image id for the files that tasks without alkit fields point at."""
    paths = {
        p for p in (_reference_path(project, t.get("data") or {}) for t in tasks
                    if split_task_key(t.get("data")) is None and image_id_of(t.get("data")) is None)
        if p
    }
    found = ids_by_path(connection, paths)
    return {os.path.realpath(path): image_id for path, image_id in found.items()}


def images_of_tasks(
    connection, project: Project, tasks: list[dict], uuid: str, task_images: dict[int, int]
) -> list[tuple[int | None, TaskMatch]]:
    """(image id, how) for each of `tasks`, in order."""
    hashes = [key[1] for key in (split_task_key(task.get("data")) for task in tasks) if key is not None and key[0] == uuid]
    by_hash = ids_by_hash(connection, hashes)
    by_path = _images_by_reference(connection, project, tasks)
    return [
        image_of_task({"id": task.get("id"), "data": task.get("data")}, uuid, by_hash, task_images, by_path, project)
        for task in tasks
    ]
