"""Entry point: the Typer app, global options, and the one place errors become exit codes."""

from __future__ import annotations

import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import typer
import typer.core
from typer.core import TyperGroup

# Plain click help for every command: rich's markup ate "[default: ...]" texts and its option
# table cut long words with an ellipsis; click wraps whole words and always shows the default.
typer.core.HAS_RICH = False


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


COMMAND_LINE_KEY = "alkit.command_line"


class AlkitGroup(TyperGroup):
    """Maps alkit's error hierarchy to one-line messages and exit codes, for every command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _complete_help(self)

    def invoke(self, ctx) -> Any:
        from alkit.errors import AlkitError, from_environment

        # the command and its arguments, still unparsed: the callback below decides on progress with them
        ctx.meta[COMMAND_LINE_KEY] = [*getattr(ctx, "_protected_args", []), *ctx.args]
        try:
            try:
                return super().invoke(ctx)
            except Exception as error:  # the environment's failures (locked database, full disk) are not bugs
                converted = from_environment(error) or _database_error(error)
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
        except BrokenPipeError:  # `alkit predict --json | head -1`: the reader has all it wanted
            _silence_stdout()
            raise typer.Exit(0) from None


def _database_error(error: BaseException) -> Any:
    """`storage.db.database_error`, imported only once something failed (keeps `--help` fast)."""
    if not type(error).__module__.startswith("sqlalchemy"):
        return None
    from alkit.storage.db import database_error

    return database_error(error)


def _complete_help(command: Any) -> None:
    """Help that never hides a default or cuts a line, for every command and sub-command:
    an option without a default says so, and command lists show the whole first paragraph."""
    for sub in getattr(command, "commands", {}).values():
        if sub.help and not sub.short_help:
            sub.short_help = " ".join(sub.help.strip().split("\n\n")[0].split())
        _complete_help(sub)
    for param in getattr(command, "params", []):
        if getattr(param, "param_type_name", "") != "option" or param.hidden or param.required:
            continue
        if param.is_flag or param.default is not None or param.envvar is not None:
            continue
        if "default" not in (param.help or "").lower():
            param.help = f"{(param.help or '').rstrip()} [default: not set]".lstrip()


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests capture stdout)
        pass


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
    progress: Optional[bool] = typer.Option(
        None, "--progress/--no-progress",
        help="Stages and progress bars on stderr [default: when stderr is a terminal and the command has no --json].",
    ),
) -> None:
    import sys

    from alkit import progress as progress_output

    ctx.obj = AppState(project_flag=project, db_flag=db, debug=debug)
    if debug:  # third-party log records (e.g. open_clip's hub errors) are shown only here
        import logging

        logging.basicConfig(level=logging.INFO)
        logging.getLogger("alkit").setLevel(logging.DEBUG)
    command_line = ctx.meta.get(COMMAND_LINE_KEY, [])
    progress_output.configure(progress_output.decide(progress, "--json" in command_line, sys.stderr.isatty()))
    if command_line and command_line[0] in LABEL_STUDIO_STEPS and not {"-h", "--help"} & set(command_line):
        _announce(ctx, LABEL_STUDIO_STEPS[command_line[0]])


# Commands whose workflows talk to Label Studio for a while: announced on stderr when they start
# and, when they took longer than a couple of seconds, when they end.
LABEL_STUDIO_STEPS = {
    "sync": "sync: pull -> refit -> select -> push",
    "push": "push: sending the round's tasks with predictions to Label Studio",
    "pull": "pull: fetching annotations from Label Studio",
}


def _announce(ctx: typer.Context, description: str) -> None:
    import time

    from alkit import progress as progress_output

    progress_output.note(f"{description} ...")
    started = time.perf_counter()

    def finished() -> None:
        elapsed = time.perf_counter() - started
        if elapsed >= progress_output.SLOW_STAGE_S:
            progress_output.note(f"{description.split(':')[0]}: finished in {elapsed:.1f} s")

    ctx.call_on_close(finished)


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
