"""The project's key-value state store (the `state` table): every key named here, one reader, one writer.

Values are JSON. Writing `None` deletes the key, so "absent" and "cleared" read the same.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.storage.db import utcnow
from alkit.storage.inserts import insert_ignoring_conflicts
from alkit.storage.schema import state


class StateKey(StrEnum):
    """Every key of the state store."""

    PROJECT_UUID = "project.uuid"  # the project's identity (see storage/identity.py)
    PULL_CURSOR = "labelstudio.pull_cursor"  # {ls_project_id, updated_after}: where the next incremental pull starts
    CONFLICTS = "labelstudio.conflicts"  # task id -> annotations not stored as labels (unknown classes)
    LABELS_PENDING = "labelstudio.labels_pending"  # the webhook's mark: annotation events since the last pull
    LAST_REFIT = "sync.last_refit"  # {labels, at}: the label count sync last refitted on
    EVAL_HISTORY = "eval_history"  # one entry per `alkit eval`


def read_state(connection: Connection, key: StateKey) -> Any:
    """The value stored under `key`, or None."""
    return connection.execute(sa.select(state.c.value).where(state.c.key == key.value)).scalar()


def write_state(connection: Connection, key: StateKey, value: Any) -> None:
    """Store `value` under `key` (None deletes it)."""
    if value is None:
        connection.execute(state.delete().where(state.c.key == key.value))
        return
    updated = connection.execute(state.update().where(state.c.key == key.value).values(value=value, updated_at=utcnow()))
    if updated.rowcount == 0:
        connection.execute(state.insert().values(key=key.value, value=value, updated_at=utcnow()))


def write_state_once(connection: Connection, key: StateKey, value: Any) -> Any:
    """Store `value` unless `key` already holds one; returns what is stored (two racing writers agree)."""
    insert_ignoring_conflicts(connection, state, [{"key": key.value, "value": value, "updated_at": utcnow()}])
    return read_state(connection, key)
