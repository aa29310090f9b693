"""Which pool images a selection may take, and taking them: the queries of `alkit select`.

An image is free for selection while it is in the pool split, unlabelled, not rejected and
in no open round (status neither `selected` nor `pushed`). `eligible_pool_ids` reads the free
images that have vectors; `claim_images` moves chosen ones to `selected` with a conditional
write that re-checks "free" under the database's lock, so two concurrent selects never share
an image. Recording the round itself is `storage.rounds.insert_round` / `insert_round_items`.
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.arrays import iter_chunks
from alkit.storage.schema import ImageStatus, Split, embeddings, images, labels
from alkit.storage.vectors import embedded_image_ids, int_column

# Images with these statuses are not free: unusable, labelled, or in an open round.
NOT_FREE_STATUSES = (ImageStatus.REJECTED, ImageStatus.LABELED, ImageStatus.SELECTED, ImageStatus.PUSHED)
CLAIM_CHUNK = 5000  # ids per conditional UPDATE (below every backend's bound-parameter limit)


def _free() -> tuple:
    """WHERE conditions of a free image (see the module docstring; split checked separately)."""
    return (
        images.c.status.not_in([status.value for status in NOT_FREE_STATUSES]),
        ~sa.exists().where(labels.c.image_id == images.c.id),
    )


def eligible_pool_ids(engine: sa.Engine, spec_id: int) -> np.ndarray:
    """Ids (ascending, int64) of free pool images with vectors of embedding spec `spec_id`."""
    query = (
        sa.select(images.c.id)
        .join(embeddings, embeddings.c.image_id == images.c.id)
        .where(embeddings.c.spec_id == spec_id, images.c.split == Split.POOL.value, *_free())
        .order_by(images.c.id)
    )
    with engine.connect() as connection:
        return int_column(connection, query)  # one fetchall, no Python work per row


def claim_images(connection: Connection, image_ids: list[int], now) -> int:
    """Mark free images as selected with conditional UPDATEs; returns how many moved.

    "Free" is re-checked by the database itself in the WHERE clause, under the write lock, so a
    row-count short of `len(image_ids)` means another process claimed (or labelled) some first.
    Call it as the transaction's first statement: it takes the database's write lock (SQLite)
    or the rows' locks (PostgreSQL).
    """
    claimed = 0
    for chunk in iter_chunks(image_ids, CLAIM_CHUNK):
        result = connection.execute(
            images.update()
            .where(images.c.id.in_(chunk), *_free())
            .values(status=ImageStatus.SELECTED.value, updated_at=now)
        )
        claimed += int(result.rowcount)
    return claimed


def embedded_ids_in_split(project, spec_id: int, split: str) -> np.ndarray:
    """Ids (ascending) of the images of `split` with vectors of spec `spec_id` (e.g. EPIG targets)."""
    return embedded_image_ids(project, spec_id, splits=(split,))
