"""The round bookkeeping (items leaving, completion, closing, progress, the project UUID) on
SQLite and on a real PostgreSQL server, without Label Studio: the same queries must hold on both."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from lsserver import select_first_unlabelled


@pytest.fixture(params=["sqlite", "postgresql"])
def db_project(request, tmp_path, make_images):
    from alkit.project import init_project, open_project
    from alkit.workflows.classes import set_classes
    from alkit.workflows.ingest import add_images

    db = None
    if request.param == "postgresql":
        from pgserver import fresh_database

        db = fresh_database(request.getfixturevalue("pg_url"), "rounds_db")
    init_project(tmp_path / "p", db=db)
    project = open_project(tmp_path / "p")
    add_images(project, [str(p) for p in make_images(6)], show_progress=False)
    set_classes(project, ["cat", "dog"])
    return project


def _push(project, round_id: int, pid: int = 7) -> dict[int, int]:
    """Mark a round pushed as `push_round` would (tasks 1000+image id)."""
    from alkit.storage.db import utcnow
    from alkit.storage.schema import ls_tasks, round_items, rounds

    with project.engine.begin() as connection:
        ids = list(connection.execute(sa.select(round_items.c.image_id).where(round_items.c.round_id == round_id)).scalars())
        connection.execute(ls_tasks.insert(), [
            {"image_id": i, "ls_project_id": pid, "task_id": 1000 + i, "round_id": round_id, "pushed_at": utcnow()} for i in ids
        ])
        connection.execute(rounds.update().where(rounds.c.id == round_id).values(status="pushed"))
    return {i: 1000 + i for i in ids}


def test_items_leave_rounds_complete_and_close_the_same_way_on_both_databases(db_project):
    from alkit.storage.db import utcnow
    from alkit.storage.identity import project_uuid
    from alkit.storage.schema import RoundItemOutcome, images, labels, ls_task_events, ls_tasks, rounds
    from alkit.storage.rounds import complete_rounds
    from alkit.workflows.rounds import close_round, release_items, round_progress

    project = db_project
    uuid = project_uuid(project.engine)
    assert len(uuid) == 32 and project_uuid(project.engine) == uuid  # recorded once, at init
    first = select_first_unlabelled(project, 3)
    a, b, c = sorted(_push(project, first))
    with project.engine.begin() as connection:
        connection.execute(labels.insert().values(image_id=a, class_id=1, source="labelstudio", annotator="u1", created_at=utcnow()))
        excluded = release_items(connection, first, [b], RoundItemOutcome.SKIPPED, "skipped in Label Studio", max_skips=1)
        assert excluded == [b]
        assert complete_rounds(connection) == []  # c still waits
        release_items(connection, first, [c], RoundItemOutcome.DELETED, "task deleted in Label Studio")
        assert complete_rounds(connection) == [first]
    (progress,) = round_progress(project)
    assert (progress.status, progress.labelled, progress.skipped, progress.deleted, progress.waiting) == ("labeled", 1, 1, 1, 0)
    with project.engine.connect() as connection:
        status = dict(connection.execute(sa.select(images.c.id, images.c.status)).all())
        reason = connection.execute(sa.select(images.c.error_reason).where(images.c.id == b)).scalar()
        events = connection.execute(sa.select(ls_task_events.c.image_id, ls_task_events.c.event, ls_task_events.c.task_id).order_by(ls_task_events.c.id)).all()
        left = set(connection.execute(sa.select(ls_tasks.c.image_id)).scalars())
    assert (status[b], status[c]) == ("rejected", "registered") and "skipped 1 times" in reason
    assert [tuple(e) for e in events] == [(b, "skipped", 1000 + b), (b, "excluded", None), (c, "deleted", 1000 + c)]
    assert left == {a}

    second = select_first_unlabelled(project, 2)
    waiting = sorted(_push(project, second))
    dropped = close_round(project, second)
    assert dropped.dropped == waiting and dropped.requeued == []
    with pytest.raises(Exception, match="already closed"):
        close_round(project, second, requeue=True)
    third = select_first_unlabelled(project, 5)  # only the free image is left for an open round
    requeued = close_round(project, third, requeue=True)
    assert requeued.status_before == "open" and len(requeued.requeued) == 1
    with project.engine.connect() as connection:
        assert [tuple(r) for r in connection.execute(sa.select(rounds.c.id, rounds.c.status).order_by(rounds.c.id))] == [
            (first, "labeled"), (second, "closed"), (third, "closed"),
        ]
        assert connection.execute(sa.select(images.c.status).where(images.c.id == requeued.requeued[0])).scalar() == "registered"
    assert [(p.dropped, p.requeued) for p in round_progress(project)] == [(0, 0), (2, 0), (0, 1)]
