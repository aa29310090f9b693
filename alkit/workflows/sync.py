"""`alkit sync`: pull -> refit -> select -> push, once, under the project lock; safe for cron.

Every step is idempotent and commits its own work, so a run killed anywhere leaves a state
the next run completes: a round selected but not (fully) pushed is pushed first; a pull
cut short is redone from its old cursor; a refit that did not record itself runs again.
When no new labels arrived and the pushed round is not yet complete, sync does nothing
and says so. Rounds always finish: skipped and deleted tasks leave their round on pull, and
with `ls_round_max_age_hours` set, sync closes older rounds (waiting images back to the pool).
An empty pool is an outcome ("pool-exhausted", exit 0), not an error. The refit and select steps are injected (`SyncSteps`); the defaults import
`alkit.workflows.fit.fit_posterior` and `alkit.workflows.select.select_round` lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import sqlalchemy as sa

from alkit.errors import InputError, StateError
from alkit.labelstudio.mapping import VotePolicy
from alkit.locking import project_lock
from alkit.project import Project
from alkit.storage.db import utcnow
from alkit.storage.schema import ImageStatus, Split, images, labels, round_items, rounds
from alkit.workflows.labelstudio import (
    client_for,
    fault_point,
    pull_annotations,
    push_round,
    read_state,
    write_state,
)
from alkit.storage.schema import RoundStatus
from alkit.workflows.rounds import close_old_rounds

LOCK_NAME = "labelstudio"  # shared with `alkit push` / `alkit pull`
REFIT_KEY = "sync.last_refit"


def default_refit(project: Project) -> Any:
    try:
        from alkit.workflows.fit import fit_posterior
    except ImportError as error:
        raise StateError(
            f"sync cannot refit: alkit.workflows.fit.fit_posterior is not available ({error}); "
            "update alkit, or run `alkit pull` and fit/select by hand"
        ) from None
    return fit_posterior(project)


def default_select(project: Project, budget: int) -> Any:
    try:
        from alkit.workflows.select import SelectSettings, select_round
    except ImportError as error:
        raise StateError(
            f"sync cannot select: alkit.workflows.select.select_round is not available ({error}); "
            "update alkit, or run `alkit select` and `alkit push` by hand"
        ) from None
    return select_round(project, SelectSettings(budget=budget, seed=project.settings.seed))


@dataclass(frozen=True)
class SyncSteps:
    """The four steps; tests and other front ends inject their own."""

    pull: Callable[..., Any] = pull_annotations  # (project, client, policy) -> PullResult
    refit: Callable[[Project], Any] = default_refit  # (project) -> summary
    select: Callable[[Project, int], Any] = default_select  # (project, budget) -> round id | result with .round_id | None
    push: Callable[..., Any] = push_round  # (project, client, round_id) -> PushResult


@dataclass
class SyncResult:
    action: str  # "pushed-pending-round" | "waiting" | "nothing-to-do" | "selected-and-pushed" | "pool-exhausted"
    message: str
    pull: dict | None = None
    rounds_closed_by_age: list[int] = field(default_factory=list)
    refit: Any = None
    round_id: int | None = None
    push: dict | None = None
    steps: list[str] = field(default_factory=list)

    def as_json(self) -> dict:
        refit = self.refit.as_json() if hasattr(self.refit, "as_json") else self.refit
        return {
            "action": self.action, "message": self.message, "steps": self.steps, "pull": self.pull,
            "refit": refit, "round_id": self.round_id, "push": self.push, "rounds_closed_by_age": self.rounds_closed_by_age,
        }


def _round_id_of(selection: Any) -> int | None:
    if selection is None or isinstance(selection, int):
        return selection
    if isinstance(selection, dict):
        return selection.get("round_id")
    return getattr(selection, "round_id", None)


def _newest_round(connection, status: str) -> sa.Row | None:
    return connection.execute(
        sa.select(rounds.c.id).where(rounds.c.status == status).order_by(rounds.c.id.desc()).limit(1)
    ).first()


def _changes(pulled: Any) -> int:
    changes = getattr(pulled, "changes", None)
    return int(changes if changes is not None else pulled.new_labels)


def _free_pool_images(project: Project) -> tuple[int, int]:
    """(embedded, all) pool images a selection could take: unlabelled, in no round, not rejected."""
    free = (
        images.c.split == Split.POOL.value,
        ~sa.exists().where(labels.c.image_id == images.c.id),
    )
    count = sa.select(sa.func.count()).select_from(images)
    with project.engine.connect() as connection:
        embedded = connection.execute(count.where(*free, images.c.status == ImageStatus.EMBEDDED.value)).scalar()
        total = connection.execute(
            count.where(*free, images.c.status.in_([ImageStatus.EMBEDDED.value, ImageStatus.REGISTERED.value]))
        ).scalar()
    return int(embedded), int(total)


def sync(
    project: Project,
    budget: int,
    steps: SyncSteps | None = None,
    client=None,
    token: str | None = None,
    policy: VotePolicy = VotePolicy.MAJORITY,
    wait: bool = False,
) -> SyncResult:
    """One pass of the loop. Raises LockedError at once when another sync/push/pull runs
    (with `wait`, queues behind it)."""
    if budget < 1:
        raise InputError(f"--budget must be at least 1, got {budget}")
    steps = steps or SyncSteps()
    client = client or client_for(project, token)
    with project_lock(project, LOCK_NAME, wait=wait):
        pulled = steps.pull(project, client, policy)
        result = SyncResult(action="", message="", pull=pulled.as_json(), steps=["pull"])
        fault_point("sync_after_pull")
        aged = close_old_rounds(project, project.settings.ls_round_max_age_hours)
        result.rounds_closed_by_age = [closed.round_id for closed in aged]
        progressed = _changes(pulled) + sum(len(closed.requeued) + len(closed.dropped) for closed in aged)
        with project.engine.connect() as connection:
            open_round = _newest_round(connection, RoundStatus.OPEN)
            active = _newest_round(connection, RoundStatus.PUSHED)
            label_count = connection.execute(sa.select(sa.func.count()).select_from(labels)).scalar()
            last_refit = read_state(connection, REFIT_KEY) or {}
            missing = 0
            if active is not None:
                missing = connection.execute(
                    sa.select(sa.func.count()).select_from(round_items).where(
                        round_items.c.round_id == active.id,
                        round_items.c.outcome.is_(None),
                        round_items.c.image_id.not_in(sa.select(labels.c.image_id)),
                    )
                ).scalar()
        if open_round is not None:  # selected but not (completely) pushed: finish that first
            pushed = steps.push(project, client, open_round.id)
            result.steps.append("push")
            result.action, result.round_id, result.push = "pushed-pending-round", open_round.id, pushed.as_json()
            result.message = f"pushed pending round {open_round.id} ({pushed.imported} new tasks, {pushed.recovered} recovered)"
            return result
        if active is not None:
            result.round_id = active.id
            if progressed:
                result.action = "waiting"
                result.message = (
                    f"{progressed} label changes or skipped/deleted tasks pulled; round {active.id} still has "
                    f"{missing} waiting items (`alkit rounds` shows them)"
                )
            else:
                result.action = "nothing-to-do"
                result.message = (
                    f"nothing to do: no new labels and round {active.id} still has {missing} waiting items; "
                    f"`alkit rounds close {active.id} --requeue` closes it"
                )
            return result
        if label_count and last_refit.get("labels") != label_count:
            result.refit = steps.refit(project)
            result.steps.append("refit")
            fault_point("sync_after_refit")
            with project.engine.begin() as connection:
                write_state(connection, REFIT_KEY, {"labels": label_count, "at": utcnow().isoformat()})
        embedded, free = _free_pool_images(project)
        if free == 0:
            result.action, result.message = "pool-exhausted", "pool exhausted: no unlabelled images left to select"
            return result
        round_id = _round_id_of(steps.select(project, min(budget, embedded or free)))
        result.steps.append("select")
        fault_point("sync_after_select")
        if round_id is None:
            result.action, result.message = "pool-exhausted", "pool exhausted: no unlabelled images left to select"
            return result
        pushed = steps.push(project, client, round_id)
        result.steps.append("push")
        result.action, result.round_id, result.push = "selected-and-pushed", round_id, pushed.as_json()
        result.message = f"selected round {round_id} and pushed {pushed.imported + pushed.recovered} tasks"
        return result
