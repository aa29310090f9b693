"""`alkit report`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from alkit_cli.render import emit_json


def report(
    ctx: typer.Context,
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for report.html and its figures [default: <project>/report]."),
    split: str = typer.Option("test", "--split", help="Labelled split for the learning curve, reliability and confusion matrix."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """One self-contained HTML page: selected images per round, class balance, scores, learning curve, calibration."""
    from alkit.workflows.report import build_report

    result = build_report(ctx.obj.project(), out_dir=out.resolve() if out else None, split=split)
    if json_output:
        emit_json(result.as_json())
        return
    typer.echo(f"report: {result.path} ({result.rounds} rounds, {result.thumbnails} thumbnails, "
               f"{result.evaluations} recorded evaluations)")


def register(app: typer.Typer) -> None:
    app.command()(report)
