"""`alkit status`: what is in the pool, in numbers."""

from __future__ import annotations

import sqlalchemy as sa

from alkit.project import Project
from alkit.storage.migrations import current_version
from alkit.storage.pool import class_names, count_images_by, resolved_labels
from alkit.storage.schema import classes, embedding_specs, embeddings, images, labels, posteriors, rounds


def pool_status(project: Project) -> dict:
    """One JSON-ready dict; its keys are the stable `alkit status --json` contract."""
    with project.engine.connect() as connection:
        names = class_names(connection)
        by_status = count_images_by(connection, images.c.status)
        by_split = count_images_by(connection, images.c.split)
        class_by_id = dict(connection.execute(sa.select(classes.c.id, classes.c.name)).all())
        per_class = {name: 0 for name in names}
        for class_id in resolved_labels(connection).values():
            per_class[class_by_id[class_id]] += 1
        labels_total = connection.execute(sa.select(sa.func.count()).select_from(labels)).scalar_one()
        round_rows = connection.execute(sa.select(rounds.c.id, rounds.c.strategy, rounds.c.status).order_by(rounds.c.id)).all()
        spec_rows = connection.execute(
            sa.select(embedding_specs.c.id, embedding_specs.c.name, embedding_specs.c.kind, embedding_specs.c.is_current, sa.func.count(embeddings.c.image_id))
            .outerjoin(embeddings, embeddings.c.spec_id == embedding_specs.c.id)
            .group_by(embedding_specs.c.id)
            .order_by(embedding_specs.c.id)
        ).all()
        posterior = connection.execute(sa.select(posteriors).order_by(posteriors.c.version.desc()).limit(1)).first()
        schema_version = current_version(connection)
    return {
        "project": str(project.directory),
        "schema_version": schema_version,
        "images_total": sum(by_status.values()),
        "images_by_status": by_status,
        "images_by_split": by_split,
        "classes": names,
        "labels_total": int(labels_total),
        "labeled_images": sum(per_class.values()),
        "labels_per_class": per_class,
        "rounds": len(round_rows),
        "open_rounds": [row.id for row in round_rows if row.status in ("open", "pushed")],  # selected or waiting in Label Studio
        "embedding_specs": [
            {"id": row.id, "name": row.name, "kind": row.kind, "current": bool(row.is_current), "embedded": int(row[4])}
            for row in spec_rows
        ],
        "posterior": None
        if posterior is None
        else {
            "version": posterior.version,
            "kind": posterior.kind,
            "curvature_source": posterior.curvature_source,
            "labels_used": posterior.labels_used,
            "parent_version": posterior.parent_version,
        },
    }
