"""`alkit rounds` (progress of every selection round) and `alkit rounds close R [--requeue]`."""

from __future__ import annotations

from typing import Optional

import typer

from alkit_cli.render import echo_table, emit_json, emit_json_lines

app = typer.Typer(
    help="Selection rounds: progress (labelled / skipped / waiting, age); close one by hand.",
    invoke_without_command=True,
)


def _age(hours: float) -> str:
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.1f} d"


@app.callback()
def list_rounds(
    ctx: typer.Context,
    status: Optional[str] = typer.Option(None, "--status", help="Only rounds with this status (open, pushed, labeled, closed)."),
    json_output: bool = typer.Option(False, "--json", help="JSON lines: one per round."),
) -> None:
    """List every round with its progress, oldest first."""
    if ctx.invoked_subcommand is not None:
        return
    from alkit.workflows.rounds import round_progress

    rows = [r for r in round_progress(ctx.obj.project()) if status is None or r.status == status]
    if json_output:
        emit_json_lines(r.as_json() for r in rows)
        return
    if not rows:
        typer.echo("no rounds yet; `alkit select --budget B` records one")
        return
    echo_table(
        [
            (r.round_id, r.status, r.strategy, r.items, r.labelled, r.skipped, r.deleted, r.requeued + r.dropped, r.waiting, _age(r.age_hours), r.closed_reason or "")
            for r in rows
        ],
        ["round", "status", "strategy", "items", "labelled", "skipped", "deleted", "requeued/dropped", "waiting", "age", "closed"],
    )


@app.command("close")
def close(
    ctx: typer.Context,
    round_id: int = typer.Argument(..., help="The round to close (see `alkit rounds`)."),
    requeue: bool = typer.Option(
        False, "--requeue", help="Put its waiting images back in the pool (else they stay as tasks; late labels still count)."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Close a round by hand so `alkit sync` moves on."""
    from alkit.workflows.rounds import close_by_hand

    result = close_by_hand(ctx.obj.project(), round_id, requeue=requeue)
    if json_output:
        emit_json(result.as_json())
        return
    if result.requeued:
        typer.echo(f"round {round_id} closed; {len(result.requeued)} waiting images back in the pool")
    else:
        typer.echo(f"round {round_id} closed; {len(result.dropped)} waiting images stay as tasks (not selectable)")


def register(main_app: typer.Typer) -> None:
    main_app.add_typer(app, name="rounds")
