"""Rendering helpers: one JSON object (or JSON lines) for scripts, plain tables for people."""

from __future__ import annotations

import json
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
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def emit_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, default=_default, ensure_ascii=False))


def emit_json_lines(rows: Iterable[Any]) -> None:
    for row in rows:
        typer.echo(json.dumps(row, default=_default, ensure_ascii=False))


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
