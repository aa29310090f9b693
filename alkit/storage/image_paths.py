"""Paths of images by id, for messages that name files (path -> id lookups: `alkit.storage.images`)."""

from __future__ import annotations

from typing import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.storage.schema import images


def paths_of(connection: Connection, image_ids: Iterable[int]) -> dict[int, str]:
    """image id -> path for the given ids (ids not registered are left out)."""
    wanted = [int(i) for i in image_ids]
    if not wanted:
        return {}
    rows = connection.execute(sa.select(images.c.id, images.c.path).where(images.c.id.in_(wanted)))
    return {int(image_id): str(path) for image_id, path in rows}
