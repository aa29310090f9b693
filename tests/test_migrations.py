"""Migrations: an empty database and an older one both reach exactly the schema in schema.py."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from alkit.storage.db import create_db_engine, utcnow
from alkit.storage.migrations import HEAD, MIGRATIONS, current_version, upgrade
from alkit.storage.schema import metadata


def schema_differences(engine) -> list:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection, opts={"include_name": lambda name, kind, parent: name != "alkit_migrations"}
        )
        return compare_metadata(context, metadata)


def test_empty_database_upgrades_to_head_matching_schema(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'a.db'}")
    assert upgrade(engine) == [m.version for m in MIGRATIONS]
    with engine.connect() as connection:
        assert current_version(connection) == HEAD
    assert schema_differences(engine) == []


def test_upgrade_is_idempotent(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'a.db'}")
    upgrade(engine)
    assert upgrade(engine) == []


def test_older_database_keeps_its_data(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, target=1)
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO images (path, content_hash, split, status, added_at, updated_at) "
                "VALUES ('/x.png', 'h1', 'pool', 'registered', :now, :now)"
            ),
            {"now": now},
        )
        connection.execute(
            sa.text("INSERT INTO rounds (strategy, settings, status, created_at) VALUES ('bald', '{}', 'open', :now)"),
            {"now": now},
        )
        assert current_version(connection) == 1
    assert upgrade(engine) == [v.version for v in MIGRATIONS[1:]]
    assert schema_differences(engine) == []
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT path FROM images")).scalar_one() == "/x.png"
        row = connection.execute(sa.text("SELECT strategy, posterior_version FROM rounds")).one()
        assert tuple(row) == ("bald", None)


def test_sqlite_pragmas(tmp_path):
    engine = create_db_engine(f"sqlite:///{tmp_path / 'p.db'}")
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
