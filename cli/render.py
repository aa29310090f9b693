"""Rendering helpers: one JSON object (or JSON lines) for scripts, plain tables for people."""

from __future__ import annotations

import json
import math
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any, Iterable, Sequence

import typer


def _default(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def jsonable(value: Any) -> Any:
    """Plain JSON values; non-finite floats become null, so the output is strict JSON (no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(item) for item in value]
    return jsonable(_default(value))


def _dumps(payload: Any) -> str:
    return json.dumps(jsonable(payload), ensure_ascii=False, allow_nan=False)


def emit_json(payload: Any) -> None:
    typer.echo(_dumps(payload))


def emit_json_lines(rows: Iterable[Any]) -> None:
    for row in rows:
        typer.echo(_dumps(row))


def table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def echo_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> None:
    typer.echo(table(rows, headers))


def note(message: str) -> None:
    """Human-facing remarks go to stderr so stdout stays parseable."""
    typer.echo(message, err=True)


def stderr_is_terminal() -> bool:
    return sys.stderr.isatty()
