"""Predictions for Label Studio's ML backend protocol: the current posterior's predicted class
(score: its probability) and the image's latest acquisition facts, one result per task."""

from __future__ import annotations

import math
from typing import Callable

from alkit.labelstudio.mapping import choice_result
from alkit.project import Project
from alkit.storage.identity import project_uuid
from alkit.storage.images import split_and_status
from alkit.storage.rounds import latest_item_facts
from alkit.storage.schema import ImageStatus, Split
from alkit.storage.tasks import task_images
from alkit.workflows.ls_task_images import TaskMatch, images_of_tasks

Predictor = Callable[[list[int]], dict[int, tuple[str, float]]]  # image ids -> (class, probability) per image
NO_POSTERIOR_VERSION = "alkit-no-posterior"


def _finite(value) -> bool:
    return not (isinstance(value, float) and not math.isfinite(value))


def model_version(project: Project) -> str:
    """The name Label Studio stores with each prediction: the current posterior's version."""
    from alkit.workflows.current_posterior import current_posterior_row

    row = current_posterior_row(project)
    return f"alkit-posterior-v{row.version}" if row is not None else NO_POSTERIOR_VERSION


def posterior_predictions(project: Project, image_ids: list[int]) -> dict[int, tuple[str, float]]:
    """(predicted class, its probability) per image from the current posterior."""
    from alkit.storage.vectors import load_vectors_in_order
    from alkit.workflows.current_posterior import current_posterior

    if not image_ids:
        return {}
    context, _, posterior = current_posterior(project)
    probs = posterior.predict(load_vectors_in_order(project, context.spec.id, image_ids, kind=posterior.feature_kind))
    best = probs.argmax(axis=1)
    return {
        image_id: (context.class_names[int(best[row])], float(probs[row, best[row]]))
        for row, image_id in enumerate(image_ids)
    }


def _reason(how: TaskMatch, image_id: int | None, rows: dict, eligible: set[int], predicted: dict, failure: str | None) -> str | None:
    """Why a task gets no prediction, or None when it gets one."""
    if how is TaskMatch.FOREIGN:
        return "task of another alkit project"
    if image_id is None or image_id not in rows:
        return "not an image of this alkit project"
    if image_id not in eligible:
        return f"image is not in the pool (split {rows[image_id].split}, status {rows[image_id].status})"
    if failure is not None:
        return f"no prediction: {failure}"
    if image_id not in predicted:
        return "no prediction for this image"
    return None


def backend_predictions(project: Project, tasks: list[dict], predictor: Predictor | None = None) -> list[dict]:
    """One ML-backend result per task, in order: the current posterior's predicted class (score:
    its probability) and the image's latest acquisition score, for tasks of this project whose
    image is in the pool; an empty result with a reason for the others."""
    predictor = predictor or (lambda ids: posterior_predictions(project, ids))
    uuid = project_uuid(project.engine)
    version = model_version(project)
    with project.engine.connect() as connection:
        resolved = images_of_tasks(connection, project, tasks, uuid, task_images(connection))
        ids = [i for i, _ in resolved if i is not None]
        rows = split_and_status(connection, ids)
        facts_of = latest_item_facts(connection, ids)
    eligible = {i for i in ids if i in rows and rows[i].split == Split.POOL and rows[i].status != ImageStatus.REJECTED}
    try:
        predicted, failure = predictor(sorted(eligible)), None
    except Exception as error:  # reported per task: Label Studio shows no prediction, not a crash
        predicted, failure = {}, str(error)
    results = []
    for image_id, how in resolved:
        reason = _reason(how, image_id, rows, eligible, predicted, failure)
        if reason is not None:
            results.append({"result": [], "model_version": version, "alkit": {"reason": reason}})
            continue
        name, probability = predicted[image_id]
        facts = facts_of.get(image_id, {})
        score = facts.get("acquisition_score")
        results.append({
            "result": choice_result(name),
            "score": probability if math.isfinite(probability) else None,
            "model_version": version,
            "alkit": {"image_id": image_id, **{k: v for k, v in facts.items() if _finite(v)},
                      "acquisition_score": score if isinstance(score, float) and math.isfinite(score) else None},
        })
    return results
