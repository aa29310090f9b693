"""`alkit sync`: pull -> refit -> select -> push, once, under the project lock; safe for cron.

Every step is idempotent and commits its own work, so a run killed anywhere leaves a state
the next run completes: a round selected but not (fully) pushed is pushed first; a pull
cut short is redone from its old cursor; a refit that did not record itself runs again.
When no new labels arrived and the pushed round is not yet complete, sync does nothing
and says so. Rounds always finish: skipped and deleted tasks leave their round on pull, and
with `ls_round_max_age_hours` set, sync closes older rounds (waiting images back to the pool).
An empty pool is an outcome ("pool-exhausted", exit 0), not an error. The steps are injected
(`SyncSteps`); a step left unset is this module's default, looked up when sync runs
(`pull_annotations`, `default_refit`, `default_select`, `push_round`); the refit and select
defaults import `alkit.workflows.fit.fit_posterior` and `alkit.workflows.select.select_round` lazily.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable

from alkit.errors import InputError, StateError
from alkit.jsonable import JsonResult
from alkit.labelstudio.mapping import VotePolicy
from alkit.locking import project_lock
from alkit.project import Project
from alkit.storage.db import utcnow
from alkit.storage.images import free_pool_counts
from alkit.storage.labels import label_count
from alkit.storage.rounds import newest_round, waiting_count
from alkit.storage.schema import RoundStatus
from alkit.storage.state import StateKey, read_state, write_state
from alkit.workflows.ls_project import LOCK_NAME, client_for
from alkit.workflows.pull import pull_annotations
from alkit.workflows.push import push_round
from alkit.workflows.rounds import close_old_rounds

POOL_EXHAUSTED = "pool exhausted: no unlabelled images left to select"


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
    """The four steps; tests and other front ends inject their own (None: this module's default)."""

    pull: Callable[..., Any] | None = None  # (project, client, policy) -> PullResult
    refit: Callable[[Project], Any] | None = None  # (project) -> summary
    select: Callable[[Project, int], Any] | None = None  # (project, budget) -> round id | result with .round_id | None
    push: Callable[..., Any] | None = None  # (project, client, round_id) -> PushResult

    def with_defaults(self) -> "SyncSteps":
        """Every unset step replaced by this module's default, looked up now."""
        return SyncSteps(
            pull=self.pull or pull_annotations, refit=self.refit or default_refit,
            select=self.select or default_select, push=self.push or push_round,
        )


class SyncAction(StrEnum):
    """What one sync did (the `action` of its result)."""

    PUSHED_PENDING = "pushed-pending-round"
    WAITING = "waiting"
    NOTHING_TO_DO = "nothing-to-do"
    SELECTED_AND_PUSHED = "selected-and-pushed"
    POOL_EXHAUSTED = "pool-exhausted"


@dataclass
class SyncResult(JsonResult):
    action: SyncAction | str  # "" until decided
    message: str
    steps: list[str] = field(default_factory=list)
    pull: dict | None = None
    refit: Any = None
    round_id: int | None = None
    push: dict | None = None
    rounds_closed_by_age: list[int] = field(default_factory=list)


def _round_id_of(selection: Any) -> int | None:
    if selection is None or isinstance(selection, int):
        return selection
    if isinstance(selection, dict):
        return selection.get("round_id")
    return getattr(selection, "round_id", None)


def _changes(pulled: Any) -> int:
    changes = getattr(pulled, "changes", None)
    return int(changes if changes is not None else pulled.new_labels)


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
    steps = (steps or SyncSteps()).with_defaults()
    client = client or client_for(project, token)
    with project_lock(project, LOCK_NAME, wait=wait):
        pulled = steps.pull(project, client, policy)
        result = SyncResult(action="", message="", pull=pulled.as_json(), steps=["pull"])
        aged = close_old_rounds(project, project.settings.ls_round_max_age_hours)
        result.rounds_closed_by_age = [closed.round_id for closed in aged]
        progressed = _changes(pulled) + sum(len(closed.requeued) + len(closed.dropped) for closed in aged)
        with project.engine.connect() as connection:
            open_round = newest_round(connection, RoundStatus.OPEN)
            active = newest_round(connection, RoundStatus.PUSHED)
            labels_now = label_count(connection)
            last_refit = read_state(connection, StateKey.LAST_REFIT) or {}
            missing = waiting_count(connection, active.id) if active is not None else 0
        if open_round is not None:  # selected but not (completely) pushed: finish that first
            pushed = steps.push(project, client, open_round.id)
            result.steps.append("push")
            result.action, result.round_id, result.push = SyncAction.PUSHED_PENDING, open_round.id, pushed.as_json()
            result.message = f"pushed pending round {open_round.id} ({pushed.imported} new tasks, {pushed.recovered} recovered)"
            return result
        if active is not None:
            result.round_id = active.id
            if progressed:
                result.action = SyncAction.WAITING
                result.message = (
                    f"{progressed} label changes or skipped/deleted tasks pulled; round {active.id} still has "
                    f"{missing} waiting items (`alkit rounds` shows them)"
                )
            else:
                result.action = SyncAction.NOTHING_TO_DO
                result.message = (
                    f"nothing to do: no new labels and round {active.id} still has {missing} waiting items; "
                    f"`alkit rounds close {active.id} --requeue` closes it"
                )
            return result
        if labels_now and last_refit.get("labels") != labels_now:
            result.refit = steps.refit(project)
            result.steps.append("refit")
            with project.engine.begin() as connection:
                write_state(connection, StateKey.LAST_REFIT, {"labels": labels_now, "at": utcnow().isoformat()})
        with project.engine.connect() as connection:
            embedded, free = free_pool_counts(connection)
        if free == 0:
            result.action, result.message = SyncAction.POOL_EXHAUSTED, POOL_EXHAUSTED
            return result
        round_id = _round_id_of(steps.select(project, min(budget, embedded or free)))
        result.steps.append("select")
        if round_id is None:
            result.action, result.message = SyncAction.POOL_EXHAUSTED, POOL_EXHAUSTED
            return result
        pushed = steps.push(project, client, round_id)
        result.steps.append("push")
        result.action, result.round_id, result.push = SyncAction.SELECTED_AND_PUSHED, round_id, pushed.as_json()
        result.message = f"selected round {round_id} and pushed {pushed.imported + pushed.recovered} tasks"
        return result
