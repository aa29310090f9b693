"""The pool database schema as it stands after the newest migration.

Queries use these `Table` objects; `migrations.py` creates and alters them step by step,
and a test checks that the migrated database equals this metadata exactly.
Global ids only: `images.id` is the stable key everywhere (rounds, labels, Label Studio
tasks, vector shards, FAISS ids); positions never cross a command boundary.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()


class ImageStatus(StrEnum):
    """Lifecycle of one image in the pool."""

    REGISTERED = "registered"  # file checked and recorded, no vectors yet
    EMBEDDED = "embedded"  # vectors stored for the current embedding spec
    SELECTED = "selected"  # in an open selection round
    PUSHED = "pushed"  # sent to Label Studio, waiting for an annotation
    LABELED = "labeled"  # has at least one label
    REJECTED = "rejected"  # unusable file; `error_reason` says why


class Split(StrEnum):
    """What an image is for: the pool to select from, EPIG targets, or held-out test."""

    POOL = "pool"
    TARGET = "target"
    TEST = "test"


TRAINING_SPLITS = (Split.POOL, Split.TARGET)  # labels of these train posteriors; the test split is held out


class RoundItemOutcome(StrEnum):
    """Why an item left its round before being labelled (None in `round_items.outcome`: still in it)."""

    SKIPPED = "skipped"  # every annotation of its task was cancelled ("skipped") in Label Studio
    DELETED = "deleted"  # its task was deleted in Label Studio
    REQUEUED = "requeued"  # the round was closed by hand (or by age) with the item back in the pool
    DROPPED = "dropped"  # the round was closed without requeue; the task stays in Label Studio


class RoundStatus(StrEnum):
    """Lifecycle of one selection round."""

    OPEN = "open"  # selected, not (completely) pushed
    PUSHED = "pushed"  # every item is a task in Label Studio, some still waiting
    LABELED = "labeled"  # complete: every item labelled or left the round
    CLOSED = "closed"  # closed by hand or by age (`closed_reason` says why)


ACTIVE_ROUND_STATUSES = (RoundStatus.OPEN, RoundStatus.PUSHED)  # rounds that still hold their items


class LabelSource(StrEnum):
    FILE = "file"
    LABEL_STUDIO = "labelstudio"
    SIMULATED = "simulated"


images = Table(
    "images",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("path", Text, nullable=False, unique=True),
    Column("content_hash", String(64), nullable=True, unique=True),
    Column("size_bytes", BigInteger, nullable=True),
    Column("width", Integer, nullable=True),
    Column("height", Integer, nullable=True),
    Column("format", String(16), nullable=True),
    Column("split", String(16), nullable=False, default=Split.POOL.value),
    Column("status", String(16), nullable=False, default=ImageStatus.REGISTERED.value),
    Column("error_reason", Text, nullable=True),
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)
Index("ix_images_status_split", images.c.status, images.c.split)

classes = Table(
    "classes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("prompt", Text, nullable=False),
    Column("position", Integer, nullable=False),
)

labels = Table(
    "labels",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    Column("class_id", Integer, ForeignKey("classes.id", ondelete="CASCADE"), nullable=False),
    Column("source", String(16), nullable=False),
    Column("annotator", String(200), nullable=False),
    Column("external_id", String(64), nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("image_id", "source", "annotator", name="uq_labels_image_source_annotator"),
)
Index("ix_labels_image", labels.c.image_id)

rounds = Table(
    "rounds",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("strategy", String(64), nullable=False),
    Column("settings", JSON, nullable=False),
    Column("seed", Integer, nullable=True),
    Column("status", String(16), nullable=False, default=RoundStatus.OPEN.value),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("embedding_spec_id", Integer, nullable=True),
    Column("posterior_version", Integer, nullable=True),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    Column("closed_reason", Text, nullable=True),
)

round_items = Table(
    "round_items",
    metadata,
    Column("round_id", Integer, ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("rank", Integer, nullable=False),
    Column("score", Float, nullable=True),
    Column("components", JSON, nullable=True),
    Column("outcome", String(16), nullable=True),  # None: in the round; else why it left (see RoundItemOutcome)
)
Index("ix_round_items_image", round_items.c.image_id)

ls_tasks = Table(
    "ls_tasks",
    metadata,
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("ls_project_id", Integer, primary_key=True),
    Column("task_id", BigInteger, nullable=False),
    Column("round_id", Integer, ForeignKey("rounds.id"), nullable=True),
    Column("pushed_at", DateTime(timezone=True), nullable=False),
)

ls_task_events = Table(
    "ls_task_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), nullable=False),
    Column("round_id", Integer, nullable=True),
    Column("ls_project_id", Integer, nullable=True),
    Column("task_id", BigInteger, nullable=True),
    Column("event", String(16), nullable=False),  # "skipped" | "deleted" | "requeued" | "excluded"
    Column("reason", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_ls_task_events_image", ls_task_events.c.image_id)

state = Table(
    "state",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", JSON, nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

embedding_specs = Table(
    "embedding_specs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),  # "open_clip" | "imported"
    Column("name", String(200), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("dim", Integer, nullable=False),
    Column("phi_dim", Integer, nullable=True),
    Column("is_current", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

embeddings = Table(
    "embeddings",
    metadata,
    Column("spec_id", Integer, ForeignKey("embedding_specs.id", ondelete="CASCADE"), primary_key=True),
    Column("image_id", Integer, ForeignKey("images.id", ondelete="CASCADE"), primary_key=True),
    Column("shard", Integer, nullable=False),
    Column("row", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

posteriors = Table(
    "posteriors",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("spec_id", Integer, ForeignKey("embedding_specs.id"), nullable=False),
    Column("classes_key", String(64), nullable=False),
    Column("parent_version", Integer, nullable=True),
    Column("path", Text, nullable=False),
    Column("curvature_source", Text, nullable=False),
    Column("labels_used", Integer, nullable=False),
    Column("settings", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
