"""`alkit predict`: class probabilities and uncertainty per image from the current posterior."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from alkit.jsonable import JsonResult
from alkit.project import Project
from alkit.storage.images import paths_by_id
from alkit.workflows.current_posterior import current_posterior

CHUNK_ROWS = 8192  # images scored per chunk
PROBABILITY_FLOOR = 1e-30  # p log p of a zero probability is taken as 0


@dataclass
class Prediction(JsonResult):
    image_id: int
    path: str
    predicted_class: str
    probability: float
    entropy: float
    logit_variance: float
    probs: dict[str, float]


def predict_split(project: Project, split: str | None = None, chunk_rows: int = CHUNK_ROWS) -> Iterator[Prediction]:
    """Stream predictions for every embedded image (of one split, if given), ascending id."""
    from alkit.storage.vectors import iter_vector_chunks

    context, _, posterior = current_posterior(project)
    for ids, x in iter_vector_chunks(project, context.spec.id, split=split, kind=posterior.feature_kind, chunk_rows=chunk_rows):
        mean, variance = posterior.logit_moments(x)  # (n, K) each
        probs = posterior.predict(x)  # (n, K)
        entropy = -(probs * np.log(np.clip(probs, PROBABILITY_FLOOR, 1.0))).sum(axis=1)
        best = probs.argmax(axis=1)
        with project.engine.connect() as connection:
            paths = paths_by_id(connection, ids.tolist())
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
