"""`alkit predict`: class probabilities and uncertainty per image from the current posterior."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import sqlalchemy as sa

from alkit.errors import StateError
from alkit.project import Project
from alkit.storage.schema import images


@dataclass
class Prediction:
    image_id: int
    path: str
    predicted_class: str
    probability: float
    entropy: float
    logit_variance: float
    probs: dict[str, float]


def current_posterior(project: Project):
    """(context, row, posterior) or a StateError saying to run `alkit fit`."""
    from alkit.workflows.fit import load_current_posterior, pool_context

    context = pool_context(project)
    row, posterior = load_current_posterior(project, context)
    if posterior is None:
        raise StateError("no posterior for the current embeddings and classes; run `alkit fit` first")
    return context, row, posterior


def predict_split(project: Project, split: str | None = None, chunk_rows: int = 8192) -> Iterator[Prediction]:
    """Stream predictions for every embedded image (of one split, if given), ascending id."""
    from alkit.storage.vectors import iter_vector_chunks
    from alkit.workflows.fit import POSTERIOR_FEATURES

    context, _, posterior = current_posterior(project)
    kind = POSTERIOR_FEATURES.get(posterior.kind)
    for ids, x in iter_vector_chunks(project, context.spec.id, split=split, kind=kind, chunk_rows=chunk_rows):
        mean, variance = posterior.logit_moments(x)  # (n, K) each
        probs = posterior.predict(x)  # (n, K)
        entropy = -(probs * np.log(np.clip(probs, 1e-30, 1.0))).sum(axis=1)
        best = probs.argmax(axis=1)
        with project.engine.connect() as connection:
            paths = dict(connection.execute(sa.select(images.c.id, images.c.path).where(images.c.id.in_(ids.tolist()))).all())
        for row, image_id in enumerate(ids.tolist()):
            yield Prediction(
                image_id=image_id,
                path=paths[image_id],
                predicted_class=context.class_names[int(best[row])],
                probability=float(probs[row, best[row]]),
                entropy=float(entropy[row]),
                logit_variance=float(variance[row].mean()),
                probs={name: float(p) for name, p in zip(context.class_names, probs[row])},
            )
