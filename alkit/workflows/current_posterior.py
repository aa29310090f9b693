"""The current posterior: the newest version fitted on the current embedding spec and class list.

One query for every use case that scores with the posterior (`select`, `predict`, `eval`,
`report`, Label Studio predictions) and for `alkit status`, so they can never disagree about
which version is current.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from alkit.errors import StateError
from alkit.project import Project
from alkit.storage.classes import class_rows
from alkit.storage.posteriors import newest_posterior_row


@dataclass(frozen=True)
class PosteriorContext:
    """What a posterior is fitted on and checked against: the current embedding spec, the
    ordered class list (and its key) and the spec's class-prompt text features."""

    spec: sa.Row
    class_names: list[str]
    classes_key: str
    text: Any  # alkit.storage.vectors.TextFeatures


def posterior_context(project: Project) -> PosteriorContext:
    """The current spec, class list and text features; StateError when there are no classes."""
    from alkit.storage.specs import current_spec
    from alkit.workflows.classes import classes_key
    from alkit.workflows.text_features import load_text_features

    with project.engine.connect() as connection:
        spec = current_spec(connection)
        rows = class_rows(connection)
    if not rows:
        raise StateError("no classes defined; run `alkit classes set NAME...` first")
    names = [row.name for row in rows]
    key = classes_key(names, [row.prompt for row in rows])
    return PosteriorContext(spec, names, key, load_text_features(project, spec.id))


def current_posterior_row(project: Project) -> sa.Row | None:
    """The current posterior's row, or None (no embeddings, no classes or nothing fitted yet)."""
    from alkit.storage.specs import current_spec_or_none
    from alkit.workflows.classes import classes_key

    with project.engine.connect() as connection:
        spec = current_spec_or_none(connection)
        rows = class_rows(connection)
        if spec is None or not rows:
            return None
        return newest_posterior_row(connection, spec.id, classes_key([r.name for r in rows], [r.prompt for r in rows]))


def load_current_posterior(project: Project, context: PosteriorContext):
    """(row, posterior) of the newest posterior for this spec and class list, or (None, None)."""
    from alkit.posterior.io import load_posterior

    with project.engine.connect() as connection:
        row = newest_posterior_row(connection, context.spec.id, context.classes_key)
    if row is None:
        return None, None
    return row, load_posterior(project.resolve_stored(row.path), context.spec.key, context.class_names)


def current_posterior(project: Project):
    """(context, row, posterior) or a StateError saying to run `alkit fit`."""
    context = posterior_context(project)
    row, posterior = load_current_posterior(project, context)
    if posterior is None:
        raise StateError("no posterior for the current embeddings and classes; run `alkit fit` first")
    return context, row, posterior
