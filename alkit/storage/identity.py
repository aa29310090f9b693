"""The project's identity: a UUID recorded once in the `state` table (at `alkit init`, or on
first use for projects made before it existed). Label Studio tasks carry it, so tasks of
another alkit project (or of a re-initialised one) are never taken for this project's."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from alkit.storage.db import utcnow
from alkit.storage.pool import insert_ignoring_conflicts
from alkit.storage.schema import state

PROJECT_UUID_KEY = "project.uuid"


def project_uuid(engine: Engine) -> str:
    """This project's UUID (hex, 32 characters), created on first call; two racing callers agree."""
    with engine.connect() as connection:
        value = connection.execute(sa.select(state.c.value).where(state.c.key == PROJECT_UUID_KEY)).scalar()
    if value:
        return str(value)
    with engine.begin() as connection:
        insert_ignoring_conflicts(connection, state, [{"key": PROJECT_UUID_KEY, "value": uuid.uuid4().hex, "updated_at": utcnow()}])
        return str(connection.execute(sa.select(state.c.value).where(state.c.key == PROJECT_UUID_KEY)).scalar())
