"""Inserts that race safely: the database, not a read-then-write, decides who wins."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def insert_ignoring_conflicts(connection: Connection, table: sa.Table, rows: list[dict]) -> int:
    """Insert rows, skipping any that violate a unique constraint; returns rows inserted.

    Used where two processes may register the same thing at once: the database, not a
    read-then-write race, decides who wins.
    """
    if not rows:
        return 0
    dialect = connection.dialect.name
    if dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:  # pragma: no cover - other backends fall back to row-by-row
        inserted = 0
        for row in rows:
            try:
                with connection.begin_nested():
                    connection.execute(table.insert().values(**row))
                inserted += 1
            except sa.exc.IntegrityError:
                pass
        return inserted
    # RETURNING counts reliably on both backends (executemany rowcount does not on psycopg).
    statement = insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)
    return len(connection.execute(statement, rows).all())
