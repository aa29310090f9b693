"""Entry point: the Typer app, global options, and the one place errors become exit codes."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperGroup


@dataclass
class AppState:
    """Global options, and the project opened on first use by a command."""

    project_flag: Optional[str] = None
    db_flag: Optional[str] = None
    debug: bool = False
    _project: Any = field(default=None, repr=False)

    @property
    def project_dir(self) -> Path:
        from alkit.project import project_dir_from

        return project_dir_from(self.project_flag)

    def project(self, **flags: Any):
        """Open the project, with command flags as the top of the settings precedence."""
        from alkit.project import open_project

        if self._project is None or flags:
            merged = {"db": self.db_flag, **flags}
            self._project = open_project(self.project_dir, merged)
        return self._project


class AlkitGroup(TyperGroup):
    """Maps alkit's error hierarchy to one-line messages and exit codes, for every command."""

    def invoke(self, ctx) -> Any:
        from alkit.errors import AlkitError, from_environment

        try:
            try:
                return super().invoke(ctx)
            except Exception as error:  # the environment's failures (locked database, full disk) are not bugs
                converted = from_environment(error)
                if converted is None:
                    raise
                raise converted from error
        except AlkitError as error:
            state = ctx.obj if isinstance(ctx.obj, AppState) else None
            if state is not None and state.debug:
                traceback.print_exc()
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted; work committed so far is kept, rerun to resume", err=True)
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=AlkitGroup,
    name="alkit",
    help="Active learning for image annotation: embed, score, select, label in Label Studio, refit.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def main_options(
    ctx: typer.Context,
    project: Optional[str] = typer.Option(
        None, "--project", "-p", envvar="ALKIT_PROJECT", help="Project directory [default: working directory]."
    ),
    db: Optional[str] = typer.Option(None, "--db", help="Database file or SQLAlchemy URL (overrides ALKIT_DB and alkit.toml)."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
) -> None:
    ctx.obj = AppState(project_flag=project, db_flag=db, debug=debug)


def _register_commands() -> None:
    """Each command module registers its commands; modules import nothing heavy at load."""
    from alkit_cli import (
        classes_cmd, demo_cmd, embed_cmd, eval_cmd, fit_cmd, index_cmd, labels_cmd, ls_cmd, pool_cmd, report_cmd,
        select_cmd,
    )

    pool_cmd.register(app)
    app.add_typer(classes_cmd.app, name="classes")
    app.add_typer(labels_cmd.app, name="labels")
    embed_cmd.register(app)
    fit_cmd.register(app)
    select_cmd.register(app)
    eval_cmd.register(app)
    index_cmd.register(app)
    ls_cmd.register(app)  # ls connect/serve-webhook, push, pull, sync
    from alkit_cli import rounds_cmd

    rounds_cmd.register(app)  # rounds, rounds close
    demo_cmd.register(app)
    report_cmd.register(app)


_register_commands()


def run() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    run()
