"""The project's identity: a UUID recorded once in the state store (at `alkit init`, or on
first use for projects made before it existed). Label Studio tasks carry it, so tasks of
another alkit project (or of a re-initialised one) are never taken for this project's."""

from __future__ import annotations

import uuid

from sqlalchemy.engine import Engine

from alkit.storage.state import StateKey, read_state, write_state_once


def project_uuid(engine: Engine) -> str:
    """This project's UUID (hex, 32 characters), created on first call; two racing callers agree."""
    with engine.connect() as connection:
        value = read_state(connection, StateKey.PROJECT_UUID)
    if value:
        return str(value)
    with engine.begin() as connection:
        return str(write_state_once(connection, StateKey.PROJECT_UUID, uuid.uuid4().hex))
