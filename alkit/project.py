"""An alkit project: a directory with alkit.toml, the pool database and `.alkit/` artefacts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping

from alkit.errors import ConfigError, IntegrityError, ProjectNotFoundError
from alkit.settings import CONFIG_FILE, Settings, load_settings, write_config_file

PROJECT_ENV = "ALKIT_PROJECT"
ARTEFACTS_DIR = ".alkit"


def project_dir_from(flag_value: str | os.PathLike | None, environ: Mapping[str, str] | None = None) -> Path:
    """`--project` > `ALKIT_PROJECT` > working directory."""
    environ = os.environ if environ is None else environ
    raw = flag_value or environ.get(PROJECT_ENV) or "."
    return Path(raw).expanduser().resolve()


@dataclass
class Project:
    directory: Path
    settings: Settings

    @property
    def artefacts_dir(self) -> Path:
        return self.directory / ARTEFACTS_DIR

    def stored_path(self, path: str | os.PathLike) -> str:
        """How an artefact path is stored in the database: relative to the project directory when
        inside it (so a moved or copied project keeps pointing at its own files), else absolute."""
        absolute = Path(path).absolute()
        try:
            return absolute.relative_to(self.directory.absolute()).as_posix()
        except ValueError:
            return str(absolute)

    def resolve_stored(self, stored: str | os.PathLike) -> Path:
        """The inverse of `stored_path`. Rows written before paths were relative hold absolute
        paths of wherever the project was then: one inside an `.alkit/` folder is read from this
        project's `.alkit/` when that copy exists (a copied project never reads the original's)."""
        path = Path(stored)
        if not path.is_absolute():
            return self.directory / path
        parts = path.parts
        if ARTEFACTS_DIR in parts:
            local = self.directory.joinpath(*parts[parts.index(ARTEFACTS_DIR):])
            if local.exists() or not path.exists():
                return local
        return path

    def artefact_path(self, *parts: str) -> Path:
        path = self.artefacts_dir.joinpath(*parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def db_url(self) -> str:
        from alkit.storage.db import resolve_db_url

        return resolve_db_url(self.settings.db, self.directory)

    @cached_property
    def engine(self):
        from alkit.storage.db import check_connection, create_db_engine

        engine = create_db_engine(self.db_url)
        check_connection(engine)
        return engine

    def ensure_schema(self) -> list[int]:
        """Apply pending migrations; refuse a database written by a newer alkit."""
        from alkit.storage.migrations import HEAD, current_version, upgrade

        with self.engine.connect() as connection:
            version = current_version(connection)
        if version > HEAD:
            raise IntegrityError(
                f"database schema is v{version} but this alkit knows up to v{HEAD}; upgrade alkit"
            )
        return upgrade(self.engine) if version < HEAD else []


def open_project(
    directory: Path, flags: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Project:
    """Open an existing project (migrating its database if it is older than this alkit)."""
    if not (directory / CONFIG_FILE).is_file():
        raise ProjectNotFoundError(
            f"no alkit project in {directory} ({CONFIG_FILE} missing); run `alkit init` there or pass --project DIR"
        )
    project = Project(directory=directory, settings=load_settings(directory, flags, environ))
    project.ensure_schema()
    return project


@dataclass(frozen=True)
class InitResult:
    directory: Path
    config_path: Path
    db_url: str
    created: bool
    migrations_applied: list[int]


def init_project(directory: Path, db: str | None = None, environ: Mapping[str, str] | None = None) -> InitResult:
    """Create alkit.toml and the database; running it again is harmless."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create project directory {directory}: {error.strerror}") from None
    config_path = directory / CONFIG_FILE
    created = not config_path.exists()
    if created or db is not None:
        if not os.access(directory, os.W_OK):
            raise ConfigError(f"project directory {directory} is not writable; fix permissions or choose another --project")
        write_config_file(directory, {"db": db} if db is not None else {"db": "alkit.db"})
    project = Project(directory=directory, settings=load_settings(directory, {}, environ))
    applied = project.ensure_schema()
    from alkit.storage.db import resolve_db_url
    from alkit.storage.identity import project_uuid

    project_uuid(project.engine)  # recorded once: Label Studio tasks carry it

    return InitResult(
        directory=directory,
        config_path=config_path,
        db_url=resolve_db_url(project.settings.db, directory),
        created=created,
        migrations_applied=applied,
    )
