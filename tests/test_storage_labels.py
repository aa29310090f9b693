"""`resolved_labels`: one class per image by majority, ties to the newest, against a loop; the
same answer whether the ids go into the SQL `IN` list or are filtered after reading (a 1M pool)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
import sqlalchemy as sa

from alkit.storage import labels as stored_labels
from alkit.storage.schema import classes, images, labels


@pytest.fixture
def voted(project):
    """12 images, 3 classes, 0-4 votes each from random annotators at increasing times."""
    rng = np.random.default_rng(3)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    votes = []
    with project.engine.begin() as connection:
        connection.execute(classes.insert(), [dict(name=n, prompt=n, position=i) for i, n in enumerate("abc")])
        class_ids = list(connection.execute(sa.select(classes.c.id).order_by(classes.c.position)).scalars())
        connection.execute(images.insert(), [dict(path=f"/x/{i}.png", content_hash=f"h{i}", split="pool", status="labeled",
                                                  added_at=start, updated_at=start) for i in range(12)])
        image_ids = list(connection.execute(sa.select(images.c.id).order_by(images.c.id)).scalars())
        for image_id in image_ids:
            for vote in range(int(rng.integers(0, 5))):
                votes.append(dict(image_id=image_id, class_id=int(rng.choice(class_ids)), source="file",
                                  annotator=f"a{vote}", created_at=start + timedelta(minutes=len(votes))))
        connection.execute(labels.insert(), votes)
    return image_ids, votes


def _loop_reference(votes, wanted):
    by_image = {}
    for vote in votes:
        by_image.setdefault(vote["image_id"], []).append(vote)
    resolved = {}
    for image_id, rows in by_image.items():
        if image_id not in wanted:
            continue
        counts = Counter(row["class_id"] for row in rows)
        tied = [row for row in rows if counts[row["class_id"]] == max(counts.values())]
        resolved[image_id] = max(tied, key=lambda row: row["created_at"])["class_id"]
    return resolved


@pytest.mark.parametrize("in_list_limit", [2, 10_000])
def test_resolved_labels_match_a_loop_with_and_without_the_in_list(project, voted, monkeypatch, in_list_limit):
    monkeypatch.setattr(stored_labels, "IN_LIST_IDS", in_list_limit)
    image_ids, votes = voted
    wanted = set(image_ids[2:9])
    with project.engine.connect() as connection:
        assert stored_labels.resolved_labels(connection, wanted) == _loop_reference(votes, wanted)
        assert stored_labels.resolved_labels(connection) == _loop_reference(votes, set(image_ids))
