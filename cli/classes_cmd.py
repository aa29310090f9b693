"""`alkit classes set|list`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from alkit_cli.render import echo_table, emit_json

app = typer.Typer(help="Define the class list and its prompts.", no_args_is_help=True)


@app.command("set")
def set_(
    ctx: typer.Context,
    names: Optional[List[str]] = typer.Argument(None, help="Class names, in order."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="File with one class name per line."),
    template: Optional[str] = typer.Option(None, "--template", help='Prompt template; {} is the class name [default: setting template, "a photo of a {}"].'),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Replace the class list (order matters: it is the class axis everywhere)."""
    from alkit.errors import InputError
    from alkit.workflows.classes import read_class_file, set_classes

    if bool(names) == bool(file):
        raise InputError("give class names or --file FILE, not both and not neither")
    class_names = read_class_file(file) if file else list(names or [])
    rows = set_classes(ctx.obj.project(), class_names, template)
    if json_output:
        emit_json({"classes": [{"name": r["name"], "prompt": r["prompt"]} for r in rows]})
    else:
        typer.echo(f"{len(rows)} classes set")
        echo_table([(r["position"], r["name"], r["prompt"]) for r in rows], ["#", "class", "prompt"])


@app.command("list")
def list_(ctx: typer.Context, json_output: bool = typer.Option(False, "--json")) -> None:
    """Show the classes and their prompts."""
    from alkit.workflows.classes import list_classes

    rows = list_classes(ctx.obj.project())
    if json_output:
        emit_json({"classes": [{"name": r["name"], "prompt": r["prompt"]} for r in rows]})
    elif rows:
        echo_table([(r["position"], r["name"], r["prompt"]) for r in rows], ["#", "class", "prompt"])
    else:
        typer.echo("no classes yet; alkit classes set NAME...")
