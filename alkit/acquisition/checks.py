"""Boundary checks shared by the selectors (batch modes, BatchBALD, cold start)."""

from __future__ import annotations

from alkit.errors import InputError, StateError


def check_budget(budget: int, num_items: int) -> None:
    """0 <= budget <= num_items, else InputError (negative) or StateError (too few items)."""
    if budget < 0:
        raise InputError(f"budget must be >= 0, got {budget}")
    if budget > num_items:
        raise StateError(
            f"budget {budget} is larger than the {num_items} candidate items; "
            f"lower --budget to at most {num_items} or add unlabelled images"
        )
