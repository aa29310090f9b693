"""One page of annotated Label Studio tasks -> the `labelstudio` labels of their images, in one transaction;
what a pull did, summed over its pages (`PullResult`).

Only the task alkit pushed speaks for its image: a copy of it made outside alkit (same key)
or a task of another project can neither wipe nor override its labels. A task whose every
annotation is a skip makes its waiting item leave the round.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from alkit.jsonable import JsonResult
from alkit.labelstudio.mapping import VotePolicy, task_outcome
from alkit.project import Project
from alkit.storage.db import utcnow
from alkit.storage.images import existing_ids, mark_labeled, not_yet_labeled, unlabel
from alkit.storage.classes import class_ids_by_name
from alkit.storage.labels import labelled_among, reconcile_labelstudio_labels
from alkit.storage.schema import RoundItemOutcome
from alkit.storage.state import StateKey, read_state, write_state
from alkit.storage.tasks import waiting_tasks
from alkit.workflows.ls_task_images import TaskMatch, images_of_tasks
from alkit.workflows.rounds import release_items

SKIPPED_REASON = "skipped in Label Studio"


@dataclass
class PullResult(JsonResult):
    ls_project_id: int
    policy: str
    incremental: bool
    tasks_seen: int = 0
    labels_added: int = 0
    labels_updated: int = 0
    labels_removed: int = 0
    images_labeled: int = 0  # images that became `labeled` in this pull
    skipped: int = 0  # cancelled annotations
    empty: int = 0  # annotations with no choice
    unknown_tasks: int = 0  # tasks alkit did not create (no alkit key, not recorded)
    foreign_tasks: int = 0  # tasks of another alkit project (another UUID in their key): never pulled
    skipped_items: list[int] = field(default_factory=list)  # images whose task was skipped: they left their round
    deleted_items: list[int] = field(default_factory=list)  # images whose task was deleted in Label Studio
    excluded: list[int] = field(default_factory=list)  # images skipped ls_max_skips times: excluded from selection
    conflicts: list[dict] = field(default_factory=list)
    disagreements: list[dict] = field(default_factory=list)
    rounds_closed: list[int] = field(default_factory=list)

    @property
    def new_labels(self) -> int:
        return self.labels_added + self.labels_updated + self.labels_removed

    @property
    def changes(self) -> int:
        """Label changes plus items that left a round: what a sync counts as progress."""
        return self.new_labels + len(self.skipped_items) + len(self.deleted_items)

    def as_json(self) -> dict:
        return {**super().as_json(), "new_labels": self.new_labels}


def apply_page(
    project: Project, page: list[dict], policy: VotePolicy, task_images: dict[int, int], result: PullResult, uuid: str, pid: int
) -> None:
    """Reconcile the `labelstudio` labels of the images of one page of tasks, in one transaction."""
    now = utcnow()
    max_skips = int(project.settings.ls_max_skips or 0)
    with project.engine.begin() as connection:
        class_ids = class_ids_by_name(connection)
        conflicts = dict(read_state(connection, StateKey.CONFLICTS) or {})
        image_of = dict(zip([task["id"] for task in page], images_of_tasks(connection, project, page, uuid, task_images)))
        known_images = existing_ids(connection, [i for i, _ in image_of.values() if i is not None])
        recorded_task = {image_id: task_id for task_id, image_id in task_images.items()}
        waiting = waiting_tasks(connection, pid)
        touched: set[int] = set()
        skipped_by_round: dict[int, list[int]] = {}
        for task in page:
            result.tasks_seen += 1
            image_id, how = image_of[task["id"]]
            if how is TaskMatch.FOREIGN:
                result.foreign_tasks += 1
                continue
            if image_id not in known_images or recorded_task.get(image_id, task["id"]) != task["id"]:
                # No alkit image, or a copy of alkit's task made outside alkit (same key).
                result.unknown_tasks += 1
                continue
            outcome = task_outcome(task, class_ids, policy, image_id=image_id)
            result.skipped += outcome.skipped
            result.empty += outcome.empty
            key = str(outcome.task_id)
            conflicts.pop(key, None)
            if outcome.conflicts:
                conflicts[key] = [{"task_id": outcome.task_id, "image_id": image_id, **c} for c in outcome.conflicts]
            if outcome.disagreement:
                result.disagreements.append({"task_id": outcome.task_id, "image_id": image_id, **outcome.disagreement})
            desired = {annotator: (class_ids[name], str(annotation_id)) for annotator, (name, annotation_id) in outcome.labels.items()}
            changes = reconcile_labelstudio_labels(connection, image_id, desired, now)
            result.labels_added += changes.added
            result.labels_updated += changes.updated
            result.labels_removed += changes.removed
            touched.add(image_id)
            only_skips = outcome.skipped and not desired and not outcome.conflicts and not outcome.empty
            if only_skips and task["id"] in waiting:
                skipped_by_round.setdefault(waiting[task["id"]][1], []).append(image_id)
        write_state(connection, StateKey.CONFLICTS, conflicts or None)
        result.conflicts = [c for entries in conflicts.values() for c in entries]
        labelled = labelled_among(connection, touched)
        newly = not_yet_labeled(connection, labelled)
        mark_labeled(connection, sorted(labelled))
        result.images_labeled += len(newly)
        unlabel(connection, touched - labelled)  # every label withdrawn: back to waiting in Label Studio
        for round_id, image_ids in skipped_by_round.items():
            result.excluded += release_items(
                connection, round_id, image_ids, RoundItemOutcome.SKIPPED, SKIPPED_REASON, max_skips=max_skips
            )
            result.skipped_items += image_ids
