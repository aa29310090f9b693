"""Flag checks shared by the commands: a bad value is one usage error (exit 2) naming the flag
and the valid range; a named path that does not exist is bad input (exit 4)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import typer

SEED_MAX = 2**32 - 1  # numpy, torch and FAISS all accept seeds in [0, 2^32)
SPLITS = ("pool", "target", "test")


def number(value: float | int | None, flag: str, minimum: float | None = None, maximum: float | None = None,
           above: bool = False) -> None:
    """`value` is finite and within [minimum, maximum] (`above`: strictly greater than minimum)."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise typer.BadParameter(f"{flag} must be a finite number, got {value}")
    low_ok = minimum is None or (value > minimum if above else value >= minimum)
    if not low_ok or (maximum is not None and value > maximum):
        low = "" if minimum is None else (f"> {minimum}" if above else f">= {minimum}")
        high = "" if maximum is None else f"<= {maximum}"
        raise typer.BadParameter(f"{flag} must be {' and '.join(part for part in (low, high) if part)}, got {value}")


def seed(value: int | None) -> None:
    number(value, "--seed", 0, SEED_MAX)


def choice(value: str | None, flag: str, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    if value is not None and value not in choices:
        raise typer.BadParameter(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


def split(value: str | None, flag: str = "--split") -> None:
    choice(value, flag, SPLITS)


def existing(path: str | Path | None, flag: str, kind: str = "path") -> None:
    """A path the user named must exist (exit 4 otherwise); `kind` is "file", "dir" or "path"."""
    from alkit.errors import InputError

    if path is None:
        return
    target = Path(path).expanduser()
    wrong = (kind == "file" and not target.is_file()) or (kind == "dir" and not target.is_dir()) or not target.exists()
    if wrong:
        what = {"file": "file", "dir": "directory"}.get(kind, "path")
        raise InputError(f"{flag} {path}: no such {what}; check the path")


def requires(given: bool, flag: str, needs: str) -> None:
    """A flag that only means something with another one."""
    if given:
        raise typer.BadParameter(f"{flag} only applies with {needs}")
