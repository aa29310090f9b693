"""Engine creation for the pool database: SQLite (WAL, foreign keys, busy timeout) or any
SQLAlchemy URL such as PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from alkit.errors import AlkitError, ConfigError, LockedError

DEFAULT_DB_FILE = "alkit.db"
SQLITE_BUSY_TIMEOUT_MS = 30_000
IN_LIST_IDS = 10_000  # ids per `IN (...)` list (below every backend's bound-parameter limit)


def database_error(error: BaseException) -> AlkitError | None:
    """An AlkitError for the database's environmental failures: locked by another writer beyond
    the busy timeout, a full or read-only disk; None for anything else (a bug)."""
    if not (type(error).__module__.startswith("sqlalchemy") and type(error).__name__ == "OperationalError"):
        return None
    reason = str(getattr(error, "orig", None) or error).splitlines()[0]
    if "locked" in reason or "busy" in reason:
        return LockedError(
            f"the database is locked by another writer ({reason}; waited the {SQLITE_BUSY_TIMEOUT_MS} ms busy "
            "timeout); rerun when the other process has finished"
        )
    if "disk is full" in reason or "readonly" in reason or "read-only" in reason or "unable to open" in reason:
        return ConfigError(
            f"cannot write the database ({reason}); free disk space or fix permissions of the project "
            "directory, then rerun (work committed so far is kept)"
        )
    return None


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def resolve_db_url(url: str | None, project_dir: Path) -> str:
    """Turn a setting into a SQLAlchemy URL; bare file names and relative SQLite paths are
    relative to the project directory."""
    if not url:
        url = DEFAULT_DB_FILE
    if "://" not in url:
        path = Path(url).expanduser()
        if not path.is_absolute():
            path = project_dir / path
        return f"sqlite:///{path}"
    try:
        parsed = make_url(url)
    except Exception as error:  # sqlalchemy.exc.ArgumentError
        raise ConfigError(f"database URL {url!r} is not valid ({error}); use e.g. sqlite:///alkit.db or postgresql://user@host/db") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database).expanduser()
        if not path.is_absolute():
            parsed = parsed.set(database=str(project_dir / path))
        return parsed.render_as_string(hide_password=False)
    return url


def _configure_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_db_engine(url: str) -> Engine:
    """An engine with alkit's connection settings; does not touch the schema."""
    try:
        parsed = make_url(url)
    except Exception as error:
        raise ConfigError(f"database URL {url!r} is not valid ({error})") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        # psycopg 3 is the driver we ship as the `postgres` extra.
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        engine = sa.create_engine(parsed, future=True)
    except ModuleNotFoundError as error:
        raise ConfigError(
            f"no database driver for {backend} ({error.name} missing); pip install 'alkit[postgres]'"
        ) from None
    except (sa.exc.NoSuchModuleError, sa.exc.ArgumentError) as error:
        shown = parsed.render_as_string(hide_password=True)
        reason = str(error).splitlines()[0]
        raise ConfigError(
            f"database URL {shown!r} names no known database ({reason}); use a file name, sqlite:///FILE or postgresql://user@host/db"
        ) from None
    if backend == "sqlite":
        sa.event.listen(engine, "connect", _configure_sqlite)
    return engine


def check_connection(engine: Engine) -> None:
    """Fail early with a clear message when the database cannot be opened."""
    try:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as error:
        reason = str(error.orig) if error.orig is not None else str(error)
        raise ConfigError(
            f"cannot open database {engine.url.render_as_string(hide_password=True)}: {reason.splitlines()[0]}; "
            "check the path/URL and the permissions of the project directory (SQLite writes alkit.db-wal/-shm beside it)"
        ) from None
