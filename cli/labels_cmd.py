"""`alkit labels import|export`."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import typer

from alkit_cli.render import emit_json, emit_json_lines, note

app = typer.Typer(help="Import labels from CSV, export all labels.", no_args_is_help=True)


@app.command("import")
def import_(
    ctx: typer.Context,
    csv_file: Path = typer.Argument(..., help="CSV with columns path,label."),
    annotator: str = typer.Option("import", "--annotator", help="Name recorded with these labels."),
    strict: bool = typer.Option(False, "--strict", help="Import nothing if any row names an unknown path or class."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Import labels; unknown paths and classes are reported, never silently dropped."""
    from alkit.workflows.labels import import_labels

    result = import_labels(ctx.obj.project(), csv_file, annotator=annotator, strict=strict)
    if json_output:
        emit_json(result.as_json())
        return
    typer.echo(
        f"{result.rows} rows: {result.imported} imported, {result.updated} updated, {result.unchanged} unchanged"
    )
    if result.unknown_paths:
        note(f"{len(result.unknown_paths)} rows name images not in the pool (first: {result.unknown_paths[0]}); alkit add them first")
    for name, count in result.unknown_classes.items():
        note(f"{count} rows name unknown class {name!r}; add it with alkit classes set")
    if result.duplicates:
        conflicting = sum(len(set(item["labels"])) > 1 for item in result.duplicates)
        first = result.duplicates[0]
        note(
            f"{len(result.duplicates)} images are named by several rows ({conflicting} with different labels; the last "
            f"row wins; first: {first['path']}: {', '.join(first['labels'])}); --json lists them"
        )


@app.command("export")
def export(
    ctx: typer.Context,
    format: str = typer.Option("csv", "--format", help="csv or json (JSON lines)."),
) -> None:
    """Print every label with its image's absolute path, source and annotator."""
    from alkit.errors import InputError
    from alkit.workflows.labels import export_labels

    if format not in ("csv", "json"):
        raise InputError(f"unknown format {format!r}; valid: csv, json")
    rows = export_labels(ctx.obj.project())
    if format == "json":
        emit_json_lines(rows)
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=["path", "label", "source", "annotator", "created_at", "image_id"])
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
