"""Commands that create and fill the pool: init, add, status."""

from __future__ import annotations

from typing import List, Optional

import typer

from alkit_cli.render import echo_table, emit_json, note


def init(
    ctx: typer.Context,
    db: Optional[str] = typer.Option(None, "--db", help="Database file or SQLAlchemy URL [default: alkit.db]."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Create alkit.toml and the pool database in the project directory."""
    from sqlalchemy.engine import make_url

    from alkit.project import init_project

    state = ctx.obj
    result = init_project(state.project_dir, db or state.db_flag)
    shown_url = make_url(result.db_url).render_as_string(hide_password=True)
    if json_output:
        emit_json(
            {
                "project": str(result.directory),
                "config": str(result.config_path),
                "db": shown_url,
                "created": result.created,
                "migrations_applied": result.migrations_applied,
            }
        )
        return
    verb = "created" if result.created else "already initialised:"
    typer.echo(f"{verb} {result.config_path}")
    typer.echo(f"database {shown_url} (migrations applied: {result.migrations_applied or 'none, up to date'})")
    typer.echo("next: alkit add IMAGES_DIR && alkit classes set NAME...")


def add(
    ctx: typer.Context,
    paths: List[str] = typer.Argument(..., help="Image files or folders."),
    split: str = typer.Option("pool", "--split", help="pool (to select from), target (EPIG targets) or test."),
    recursive: bool = typer.Option(True, "--recursive/--no-recursive", help="Walk sub-folders."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Register image files (deduplicated by content; rejected files are recorded with a reason)."""
    from alkit.workflows.ingest import add_images

    result = add_images(ctx.obj.project(), paths, split=split, recursive=recursive, show_progress=None)
    if json_output:
        emit_json(result.as_json())
        return
    typer.echo(
        f"added {result.added} to split '{result.split}'; {result.duplicates} duplicates by content, "
        f"{result.already_registered} already registered, {len(result.rejected)} rejected, {result.ignored} non-image files ignored"
    )
    for item in result.rejected[:20]:
        note(f"  rejected {item['path']}: {item['reason']}")
    if len(result.rejected) > 20:
        note(f"  ... and {len(result.rejected) - 20} more (alkit add --json lists all)")


def status(
    ctx: typer.Context,
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Counts by split and status, classes, labels per class, rounds, embeddings, posterior."""
    from alkit.workflows.status import pool_status

    report = pool_status(ctx.obj.project())
    if json_output:
        emit_json(report)
        return
    typer.echo(f"project {report['project']} (schema v{report['schema_version']})")
    typer.echo(f"images: {report['images_total']}")
    echo_table(sorted(report["images_by_split"].items()), ["split", "images"])
    echo_table(sorted(report["images_by_status"].items()), ["status", "images"])
    if report["classes"]:
        rows = [(name, count, report["test_labels_per_class"][name]) for name, count in report["labels_per_class"].items()]
        echo_table(rows, ["class", "labelled (pool+target)", "labelled (test)"])
    else:
        typer.echo("classes: none (alkit classes set NAME...)")
    by_split = report["labeled_images_by_split"]
    training = sum(count for split, count in by_split.items() if split != "test")
    typer.echo(
        f"labels: {training} pool/target images labelled (for fit), {by_split.get('test', 0)} test images labelled "
        f"(for eval); {report['labels_total']} label rows in all"
    )
    model = report["model"]
    typer.echo(f"model: {model['name']} ({model['kind']}, spec {model['spec_id']})" if model else "model: none yet (alkit embed --model ARCH --pretrained TAG|PATH)")
    for spec in report["embedding_specs"]:
        marker = "*" if spec["current"] else " "
        typer.echo(f"{marker} embeddings {spec['name']} ({spec['kind']}): {spec['embedded']} images")
    posterior = report["posterior"]
    if posterior:
        typer.echo(
            f"posterior: v{posterior['version']} {posterior['kind']}: curvature from {posterior['curvature_source']}; "
            f"{posterior['labels_used']} labels"
        )
    else:
        typer.echo("posterior: none yet (alkit fit)")
    typer.echo(f"rounds: {report['rounds']}; open: {len(report['open_round_details']) or 'none'}")
    for item in report["open_round_details"]:
        typer.echo(f"  round {item['id']} ({item['status']}, {item['strategy']}): {item['items']} images")


def exit_codes() -> None:
    """List alkit's exit codes."""
    from alkit.errors import EXIT_CODES

    echo_table([(code, meaning) for meaning, code in EXIT_CODES.items()], ["code", "meaning"])


def register(app: typer.Typer) -> None:
    app.command()(init)
    app.command()(add)
    app.command()(status)
    app.command("exit-codes")(exit_codes)
