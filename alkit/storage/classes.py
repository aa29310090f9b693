"""The `classes` table: the class list in its stored order (the K axis of every probability array)."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from alkit.storage.schema import classes, labels


def class_names(connection: Connection) -> list[str]:
    """Class names in their stored order (the K axis of every probability array)."""
    return list(connection.execute(sa.select(classes.c.name).order_by(classes.c.position)).scalars())


def class_rows(connection: Connection) -> list[sa.Row]:
    """Every class row (id, name, prompt, position) in its stored order."""
    return list(connection.execute(sa.select(classes).order_by(classes.c.position)))


def class_ids_by_name(connection: Connection) -> dict[str, int]:
    return dict(connection.execute(sa.select(classes.c.name, classes.c.id)).all())


def label_counts_of(connection: Connection, names: set[str]) -> dict[str, int]:
    """name -> number of labels, for those of `names` that have labels."""
    query = (
        sa.select(classes.c.name, sa.func.count(labels.c.id))
        .join(labels, labels.c.class_id == classes.c.id)
        .where(classes.c.name.in_(names))
        .group_by(classes.c.name)
    )
    return dict(connection.execute(query).all())


def replace_class_list(connection: Connection, names: list[str], prompts: list[str]) -> None:
    """Make the class list exactly `names` (in this order) with `prompts`: classes not in `names`
    are deleted, kept ones keep their ids (and so their labels), new ones are inserted."""
    existing = set(class_names(connection))
    connection.execute(classes.delete().where(classes.c.name.not_in(names)))
    # Two passes so reordering never collides on the unique positions.
    offset = len(names)
    for position, (name, prompt) in enumerate(zip(names, prompts)):
        if name in existing:
            connection.execute(classes.update().where(classes.c.name == name).values(prompt=prompt, position=position + offset))
        else:
            connection.execute(classes.insert().values(name=name, prompt=prompt, position=position + offset))
    connection.execute(classes.update().values(position=classes.c.position - offset))
