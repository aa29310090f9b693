"""Image lookups (by path, content hash, id) and lifecycle moves of the `images` table.

Statuses are `ImageStatus` values; a rejected image never changes status here except by
`reject_image`, and only unlabelled images go back to the pool.
"""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.storage.db import utcnow
from alkit.storage.schema import ImageStatus, Split, embeddings, images, labels

SETTLED_STATUSES = (ImageStatus.LABELED, ImageStatus.REJECTED)  # statuses a push leaves as they are


def statuses_by_path(connection: Connection) -> dict[str, str]:
    """path -> status of every registered image (rejected ones included)."""
    return dict(connection.execute(sa.select(images.c.path, images.c.status)).all())


def update_by_path(connection: Connection, path: str, values: dict) -> None:
    """Overwrite columns of the image registered at `path` (e.g. a rejected file now readable)."""
    connection.execute(images.update().where(images.c.path == path).values(**values))


def usable_paths(connection: Connection) -> list[str]:
    """Paths of every image not rejected."""
    return list(connection.execute(sa.select(images.c.path).where(images.c.status != ImageStatus.REJECTED)).scalars())


def usable_ids_by_path(connection: Connection) -> dict[str, int]:
    """path -> id of every image not rejected."""
    return dict(connection.execute(sa.select(images.c.path, images.c.id).where(images.c.status != ImageStatus.REJECTED)).all())


def ids_by_path(connection: Connection, paths: Iterable[str]) -> dict[str, int]:
    """path -> id for those of `paths` that are images of the pool."""
    paths = sorted(set(paths))
    if not paths:
        return {}
    return dict(connection.execute(sa.select(images.c.path, images.c.id).where(images.c.path.in_(paths))).all())


def ids_by_hash(connection: Connection, hashes: Iterable[str]) -> dict[str, int]:
    """content hash -> id for those of `hashes` that are images of the pool."""
    hashes = list(hashes)
    if not hashes:
        return {}
    return dict(
        connection.execute(sa.select(images.c.content_hash, images.c.id).where(images.c.content_hash.in_(hashes))).all()
    )


def existing_ids(connection: Connection, image_ids: Iterable[int]) -> set[int]:
    """Those of `image_ids` that are images of the pool."""
    return set(connection.execute(sa.select(images.c.id).where(images.c.id.in_(list(image_ids)))).scalars())


def paths_by_id(connection: Connection, image_ids: Iterable[int]) -> dict[int, str]:
    """id -> path for those of `image_ids` that are images of the pool."""
    return dict(connection.execute(sa.select(images.c.id, images.c.path).where(images.c.id.in_(list(image_ids)))).all())


def split_and_status(connection: Connection, image_ids: Iterable[int]) -> dict[int, sa.Row]:
    """id -> row (id, split, status) for those of `image_ids` that exist."""
    query = sa.select(images.c.id, images.c.split, images.c.status).where(images.c.id.in_(list(image_ids)))
    return {row.id: row for row in connection.execute(query)}


def not_yet_labeled(connection: Connection, image_ids: Iterable[int]) -> set[int]:
    """Those of `image_ids` whose status is not `labeled` yet."""
    query = sa.select(images.c.id).where(images.c.id.in_(list(image_ids)), images.c.status != ImageStatus.LABELED)
    return set(connection.execute(query).scalars())


def mark_labeled(connection: Connection, image_ids: list[int]) -> None:
    """Newly labelled images become `labeled` (rejected ones stay rejected)."""
    if image_ids:
        connection.execute(
            images.update()
            .where(images.c.id.in_(image_ids), images.c.status != ImageStatus.REJECTED)
            .values(status=ImageStatus.LABELED.value, updated_at=utcnow())
        )


def mark_pushed(connection: Connection, image_ids: list[int]) -> None:
    """Images sent to Label Studio become `pushed`, unless labelled or rejected already."""
    connection.execute(
        images.update()
        .where(images.c.id.in_(image_ids), images.c.status.not_in([s.value for s in SETTLED_STATUSES]))
        .values(status=ImageStatus.PUSHED.value, updated_at=utcnow())
    )


def unlabel(connection: Connection, image_ids: Iterable[int]) -> None:
    """`labeled` images whose every label was withdrawn wait in Label Studio again (`pushed`)."""
    image_ids = list(image_ids)
    if not image_ids:
        return
    connection.execute(
        images.update()
        .where(images.c.id.in_(image_ids), images.c.status == ImageStatus.LABELED)
        .values(status=ImageStatus.PUSHED.value, updated_at=utcnow())
    )


def back_to_pool(connection: Connection, image_ids: list[int]) -> None:
    """Images without a label go back to the pool: `embedded` with vectors, else `registered`."""
    if not image_ids:
        return
    now = utcnow()
    unlabelled = (
        images.c.id.in_(image_ids),
        ~sa.exists().where(labels.c.image_id == images.c.id),
        images.c.status != ImageStatus.REJECTED,
    )
    has_vectors = sa.exists().where(embeddings.c.image_id == images.c.id)
    connection.execute(images.update().where(*unlabelled, has_vectors).values(status=ImageStatus.EMBEDDED.value, updated_at=now))
    connection.execute(images.update().where(*unlabelled, ~has_vectors).values(status=ImageStatus.REGISTERED.value, updated_at=now))


def reject_image(connection: Connection, image_id: int, reason: str) -> None:
    connection.execute(
        images.update().where(images.c.id == image_id).values(status=ImageStatus.REJECTED.value, error_reason=reason, updated_at=utcnow())
    )


def free_pool_counts(connection: Connection) -> tuple[int, int]:
    """(embedded, all) pool images a selection could take: unlabelled, in no round, not rejected."""
    free = (images.c.split == Split.POOL, ~sa.exists().where(labels.c.image_id == images.c.id))
    count = sa.select(sa.func.count()).select_from(images)
    embedded = connection.execute(count.where(*free, images.c.status == ImageStatus.EMBEDDED)).scalar()
    total = connection.execute(
        count.where(*free, images.c.status.in_([ImageStatus.EMBEDDED.value, ImageStatus.REGISTERED.value]))
    ).scalar()
    return int(embedded), int(total)


def count_images_by(connection: Connection, column: sa.Column) -> dict[str, int]:
    """value -> number of images, grouped by one column of `images` (status or split)."""
    rows = connection.execute(sa.select(column, sa.func.count()).group_by(column))
    return {str(key): int(count) for key, count in rows}
