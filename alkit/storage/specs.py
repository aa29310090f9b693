"""Embedding spec rows: which vector spaces the project has, which one is current, and the
folder each one's files live in (`<project>/.alkit/vectors/<spec key>/`).

A spec row is created once per key (architecture + weights + config, or an imported name)
and never changes its dimension: vectors of different specs never mix.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.errors import IntegrityError, StateError
from alkit.storage.db import utcnow
from alkit.storage.inserts import insert_ignoring_conflicts
from alkit.storage.schema import embedding_specs


def current_spec_or_none(connection: Connection) -> sa.Row | None:
    """The embedding spec marked current, or None before the first `alkit embed`."""
    return connection.execute(sa.select(embedding_specs).where(embedding_specs.c.is_current.is_(True))).first()


def current_spec(connection: Connection) -> sa.Row:
    """The embedding spec marked current; StateError when nothing was embedded yet."""
    row = current_spec_or_none(connection)
    if row is None:
        raise StateError("no embeddings yet; run alkit embed")
    return row


def spec_row(connection: Connection, spec_id: int) -> sa.Row:
    """The spec with this id; StateError naming `alkit status` when there is none."""
    row = connection.execute(sa.select(embedding_specs).where(embedding_specs.c.id == spec_id)).first()
    if row is None:
        raise StateError(f"no embedding spec with id {spec_id}; `alkit status` lists the specs")
    return row


def spec_by_key(connection: Connection, key: str) -> sa.Row | None:
    """The spec with this key, or None when that vector space was never embedded."""
    return connection.execute(sa.select(embedding_specs).where(embedding_specs.c.key == key)).first()


def ensure_spec(connection: Connection, key: str, kind: str, name: str, spec: dict, dim: int, phi_dim: int | None) -> sa.Row:
    """The spec row with `key`, created if new (dims of an existing one must agree)."""
    insert_ignoring_conflicts(
        connection,
        embedding_specs,
        [dict(key=key, kind=kind, name=name, spec=spec, dim=dim, phi_dim=phi_dim, is_current=False, created_at=utcnow())],
    )
    row = connection.execute(sa.select(embedding_specs).where(embedding_specs.c.key == key)).one()
    if row.dim != dim:
        raise IntegrityError(f"embedding spec {row.name!r} stores {row.dim}-dim vectors, got {dim}; use another --name")
    return row


def set_current(connection: Connection, spec_id: int) -> None:
    """Make `spec_id` the one current spec (every later stage reads its vectors)."""
    connection.execute(embedding_specs.update().where(embedding_specs.c.id != spec_id).values(is_current=False))
    connection.execute(embedding_specs.update().where(embedding_specs.c.id == spec_id).values(is_current=True))


def spec_directory(project, key: str) -> Path:
    """The folder of one spec's shards and tensor files, created if missing."""
    directory = project.artefact_path("vectors", key)
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def resolve_spec(engine, spec: int | sa.Row) -> sa.Row:
    """The spec row of `spec`, given as a row (returned as is) or as an id."""
    if isinstance(spec, int):
        with engine.connect() as connection:
            return spec_row(connection, spec)
    return spec
