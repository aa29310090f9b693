"""Ordered, recorded schema migrations (Alembic operations, no Alembic env/ini files).

Each migration is a function of an `alembic.operations.Operations` object. Applied
versions are recorded in `alkit_migrations`; `upgrade()` applies the missing ones in
order, each in its own transaction, so a database of any older version (or an empty one)
reaches the newest schema. Migrations spell out the tables as they were at that version:
never import `schema.py` here, because it describes only the newest state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine


def _now_column(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def _m0001_foundation(op) -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("path", sa.Text, nullable=False, unique=True),
        sa.Column("content_hash", sa.String(64), nullable=True, unique=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=True),
        sa.Column("width", sa.Integer, nullable=True),
        sa.Column("height", sa.Integer, nullable=True),
        sa.Column("format", sa.String(16), nullable=True),
        sa.Column("split", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_reason", sa.Text, nullable=True),
        _now_column("added_at"),
        _now_column("updated_at"),
    )
    op.create_index("ix_images_status_split", "images", ["status", "split"])
    op.create_table(
        "classes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
    )
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("class_id", sa.Integer, sa.ForeignKey("classes.id", ondelete="CASCADE"), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("annotator", sa.String(200), nullable=False),
        sa.Column("external_id", sa.String(64), nullable=True),
        _now_column("created_at"),
        sa.UniqueConstraint("image_id", "source", "annotator", name="uq_labels_image_source_annotator"),
    )
    op.create_index("ix_labels_image", "labels", ["image_id"])
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("strategy", sa.String(64), nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("seed", sa.Integer, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        _now_column("created_at"),
    )
    op.create_table(
        "round_items",
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("rank", sa.Integer, nullable=False),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("components", sa.JSON, nullable=True),
    )
    op.create_index("ix_round_items_image", "round_items", ["image_id"])
    op.create_table(
        "ls_tasks",
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("ls_project_id", sa.Integer, primary_key=True),
        sa.Column("task_id", sa.BigInteger, nullable=False),
        sa.Column("round_id", sa.Integer, sa.ForeignKey("rounds.id"), nullable=True),
        _now_column("pushed_at"),
    )
    op.create_table(
        "state",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.JSON, nullable=True),
        _now_column("updated_at"),
    )


def _m0002_embeddings_and_posteriors(op) -> None:
    op.create_table(
        "embedding_specs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("phi_dim", sa.Integer, nullable=True),
        sa.Column("is_current", sa.Boolean, nullable=False),
        _now_column("created_at"),
    )
    op.create_table(
        "embeddings",
        sa.Column(
            "spec_id", sa.Integer, sa.ForeignKey("embedding_specs.id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("shard", sa.Integer, nullable=False),
        sa.Column("row", sa.Integer, nullable=False),
        _now_column("created_at"),
    )
    op.create_table(
        "posteriors",
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("spec_id", sa.Integer, sa.ForeignKey("embedding_specs.id"), nullable=False),
        sa.Column("classes_key", sa.String(64), nullable=False),
        sa.Column("parent_version", sa.Integer, nullable=True),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("curvature_source", sa.Text, nullable=False),
        sa.Column("labels_used", sa.Integer, nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        _now_column("created_at"),
    )
    # Rounds now record which vectors and which posterior chose them.
    op.add_column("rounds", sa.Column("embedding_spec_id", sa.Integer, nullable=True))
    op.add_column("rounds", sa.Column("posterior_version", sa.Integer, nullable=True))


def _m0003_label_studio_rounds(op) -> None:
    # Rounds that always finish: an item leaves its round (skipped, task deleted, closed by
    # hand) with an outcome; a round records when and why it was closed; every such event of
    # a Label Studio task is kept (skip counts, deleted tasks, requeues).
    op.add_column("round_items", sa.Column("outcome", sa.String(16), nullable=True))
    op.add_column("rounds", sa.Column("closed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("rounds", sa.Column("closed_reason", sa.Text, nullable=True))
    op.create_table(
        "ls_task_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image_id", sa.Integer, sa.ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
        sa.Column("round_id", sa.Integer, nullable=True),
        sa.Column("ls_project_id", sa.Integer, nullable=True),
        sa.Column("task_id", sa.BigInteger, nullable=True),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        _now_column("created_at"),
    )
    op.create_index("ix_ls_task_events_image", "ls_task_events", ["image_id"])


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    apply: Callable[..., None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "foundation: images, classes, labels, rounds, Label Studio tasks", _m0001_foundation),
    Migration(2, "embedding specs, vector rows, posterior versions", _m0002_embeddings_and_posteriors),
    Migration(3, "Label Studio: round item outcomes, round closing, task events", _m0003_label_studio_rounds),
)
HEAD = MIGRATIONS[-1].version

_migrations_table = sa.Table(
    "alkit_migrations",
    sa.MetaData(),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)


def current_version(connection: Connection) -> int:
    """Newest applied migration, 0 for an empty database."""
    if not sa.inspect(connection).has_table("alkit_migrations"):
        return 0
    value = connection.execute(sa.select(sa.func.max(_migrations_table.c.version))).scalar()
    return int(value or 0)


def upgrade(engine: Engine, target: int = HEAD) -> list[int]:
    """Apply every missing migration up to `target`; returns the versions applied."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    applied: list[int] = []
    with engine.begin() as connection:
        _migrations_table.create(connection, checkfirst=True)
    for migration in MIGRATIONS:
        if migration.version > target:
            break
        with engine.begin() as connection:
            if migration.version <= current_version(connection):
                continue
            operations = Operations(MigrationContext.configure(connection))
            migration.apply(operations)
            connection.execute(
                _migrations_table.insert().values(
                    version=migration.version, name=migration.name, applied_at=datetime.now(timezone.utc)
                )
            )
            applied.append(migration.version)
    return applied
