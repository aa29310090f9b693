"""Posterior version rows: which fitted posteriors exist, and which one is current.

A posterior version is one row (kind, the embedding spec and class list it was fitted on, its
parent, where its files are) plus a directory written by `alkit.posterior.io`. The current
posterior of a project is the newest version fitted on the current spec AND the current class
list: a version of another spec or class list scores the wrong space or class order.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.storage.db import utcnow
from alkit.storage.schema import posteriors


def newest_posterior_row(connection: Connection, spec_id: int, classes_key: str) -> sa.Row | None:
    """The newest posterior version fitted on this spec and class list, or None."""
    query = (
        sa.select(posteriors)
        .where(posteriors.c.spec_id == spec_id, posteriors.c.classes_key == classes_key)
        .order_by(posteriors.c.version.desc())
        .limit(1)
    )
    return connection.execute(query).first()


def posterior_version_row(connection: Connection, version: int) -> sa.Row | None:
    """The row of one posterior version (any spec or class list), or None."""
    return connection.execute(sa.select(posteriors).where(posteriors.c.version == version)).first()


def record_posterior(
    connection: Connection, *, kind: str, spec_id: int, classes_key: str, parent_version: int | None, path: str,
    curvature_source: str, labels_used: int, settings: dict[str, Any],
) -> int:
    """Insert a posterior version row (its files must already exist); returns the new version."""
    return connection.execute(
        posteriors.insert()
        .values(
            kind=kind, spec_id=spec_id, classes_key=classes_key, parent_version=parent_version, path=path,
            curvature_source=curvature_source, labels_used=labels_used, settings=settings, created_at=utcnow(),
        )
        .returning(posteriors.c.version)
    ).scalar_one()
