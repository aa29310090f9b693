"""Pure mapping between alkit rows and Label Studio tasks/annotations (no I/O).

Tasks carry `data.alkit_key` ("<project uuid>:<content hash>", what push, pull and recovery
match on), `data.alkit_project`, `data.alkit_id` (the image id, for people), the image
reference, the acquisition facts (score, rank, round, strategy, posterior version: columns
the data manager can show, sort and filter) and optionally a prediction. Annotations become votes; a policy turns the votes of one task into
the labels alkit stores (one per annotator, source `labelstudio`), conflicts (unknown or
malformed choices, never stored as labels) and a disagreement report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Iterable, Mapping

from alkit.errors import InputError
from alkit.labelstudio.config import DATA_ID_KEY, DATA_IMAGE_KEY, DATA_PROJECT_KEY, DATA_TASK_KEY, FROM_NAME, TO_NAME


class VotePolicy(StrEnum):
    """How the annotations of one task become labels."""

    MAJORITY = "majority"  # every annotator's vote is stored; the pool resolves by majority, ties to the newest
    UNANIMOUS = "unanimous"  # a task whose annotators disagree gives no label until they agree
    LATEST = "latest"  # only the newest annotation of the task counts


def parse_policy(value: str) -> VotePolicy:
    try:
        return VotePolicy(value)
    except ValueError:
        raise InputError(f"unknown vote policy {value!r}; valid: {', '.join(p.value for p in VotePolicy)}") from None


def alkit_id(image_id: int) -> str:
    return str(int(image_id))


def image_id_of(data: Mapping[str, Any] | None) -> int | None:
    """The alkit image id stored in a task's data, None for tasks alkit did not create."""
    raw = (data or {}).get(DATA_ID_KEY)
    try:
        return int(raw)
    except (TypeError, ValueError):
        return None


def choice_result(class_name: str) -> list[dict]:
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices", "value": {"choices": [class_name]}}]


def prediction_of(components: Mapping[str, Any] | None, class_names: Iterable[str]) -> tuple[str, float] | None:
    """(predicted class, probability) from `round_items.components`, None when absent or unusable."""
    components = components or {}
    predicted = components.get("predicted_class")
    probability = components.get("probability")
    if not isinstance(predicted, str) or predicted not in set(class_names):
        return None
    try:
        score = float(probability) if probability is not None else None
    except (TypeError, ValueError):
        score = None
    return predicted, score


def task_key(project_uuid: str, content_hash: str | None, image_id: int) -> str:
    """The task key unique to one alkit project and one image content (id fallback without a hash)."""
    return f"{project_uuid}:{content_hash or f'id-{int(image_id)}'}"


def split_task_key(data: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(project uuid, image part) of a task's key; None for tasks without one (not alkit's, or legacy)."""
    raw = (data or {}).get(DATA_TASK_KEY)
    if not isinstance(raw, str) or ":" not in raw:
        return None
    project_part, image_part = raw.split(":", 1)
    return project_part, image_part


def build_task(
    image_id: int,
    image_ref: str,
    prediction: tuple[str, float | None] | None,
    model_version: str,
    key: str | None = None,
    facts: Mapping[str, Any] | None = None,
) -> dict:
    """One task for `import_tasks`: the key, image and acquisition facts in `data`, the prediction if any.

    `facts` go into data as `alkit_<name>` (score, rank, round, strategy, posterior_version).
    The prediction's `score` is the model's probability of the predicted class (its confidence),
    not the acquisition score: an informative item can be a confident one.
    """
    data: dict[str, Any] = {DATA_IMAGE_KEY: image_ref, DATA_ID_KEY: alkit_id(image_id)}
    if key is not None:
        data[DATA_TASK_KEY] = key
        data[DATA_PROJECT_KEY] = key.split(":", 1)[0]
    for name, value in (facts or {}).items():
        if value is not None:
            data[f"alkit_{name}"] = value
    task: dict[str, Any] = {"data": data}
    if prediction is not None:
        predicted, score = prediction
        entry: dict[str, Any] = {"model_version": model_version, "result": choice_result(predicted)}
        if score is not None:
            entry["score"] = score
        task["predictions"] = [entry]
    return task


@dataclass(frozen=True)
class Vote:
    """One annotation, reduced to what alkit needs."""

    annotation_id: int
    annotator: str
    choices: tuple[str, ...]
    cancelled: bool
    updated_at: str

    @property
    def choice(self) -> str | None:
        return self.choices[0] if len(self.choices) == 1 else None


@dataclass
class TaskOutcome:
    task_id: int
    image_id: int | None
    labels: dict[str, tuple[str, int]] = field(default_factory=dict)  # annotator -> (class name, annotation id)
    skipped: int = 0  # cancelled ("skipped") annotations
    empty: int = 0  # submitted with no choice
    conflicts: list[dict] = field(default_factory=list)  # {annotation_id, annotator, value, reason}
    disagreement: dict | None = None  # {"votes": {class: n}, "resolution": ...}


def annotator_of(annotation: Mapping[str, Any]) -> str:
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):
        who = who.get("id")
    return f"ls-user-{who}" if who is not None else "ls-user-unknown"


def vote_of(annotation: Mapping[str, Any]) -> Vote:
    choices: list[str] = []
    for item in annotation.get("result") or []:
        if item.get("from_name") == FROM_NAME and item.get("type", "choices") == "choices":
            choices.extend(str(c) for c in (item.get("value") or {}).get("choices") or [])
    return Vote(
        annotation_id=int(annotation["id"]),
        annotator=annotator_of(annotation),
        choices=tuple(choices),
        cancelled=bool(annotation.get("was_cancelled")),
        updated_at=str(annotation.get("updated_at") or annotation.get("created_at") or ""),
    )


def task_outcome(task: Mapping[str, Any], class_names: Iterable[str], policy: VotePolicy, image_id: int | None = None) -> TaskOutcome:
    """Turn one task (as a dict with `id`, `data`, `annotations`) into labels, conflicts and reports."""
    known = set(class_names)
    outcome = TaskOutcome(task_id=int(task["id"]), image_id=image_id if image_id is not None else image_id_of(task.get("data")))
    valid: list[Vote] = []
    for vote in sorted((vote_of(a) for a in task.get("annotations") or []), key=lambda v: (v.updated_at, v.annotation_id)):
        if vote.cancelled:
            outcome.skipped += 1
        elif not vote.choices:
            outcome.empty += 1
        elif len(vote.choices) > 1:
            outcome.conflicts.append(_conflict(vote, "multiple choices"))
        elif vote.choice not in known:
            outcome.conflicts.append(_conflict(vote, "unknown class"))
        else:
            valid.append(vote)
    newest_per_annotator = {vote.annotator: vote for vote in valid}  # sorted oldest first: the newest wins
    votes = list(newest_per_annotator.values())
    counts = Counter(vote.choice for vote in votes)
    if len(counts) > 1:
        ranked = counts.most_common()
        resolution = "tie" if ranked[0][1] == ranked[1][1] else f"majority:{ranked[0][0]}"
        if policy is VotePolicy.UNANIMOUS:
            resolution = "unresolved"
        elif policy is VotePolicy.LATEST:
            resolution = f"latest:{valid[-1].choice}"
        outcome.disagreement = {"votes": dict(sorted(counts.items())), "resolution": resolution}
    if policy is VotePolicy.LATEST and valid:
        votes = [valid[-1]]
    elif policy is VotePolicy.UNANIMOUS and len(counts) > 1:
        votes = []
    outcome.labels = {vote.annotator: (vote.choice, vote.annotation_id) for vote in votes}
    return outcome


def _conflict(vote: Vote, reason: str) -> dict:
    return {
        "annotation_id": vote.annotation_id,
        "annotator": vote.annotator,
        "value": list(vote.choices),
        "reason": reason,
    }
