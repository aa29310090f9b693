"""Label Studio commands: `alkit ls connect|serve-webhook|serve-backend`, `alkit push`, `alkit pull`, `alkit sync`.

The token comes only from `--token` or `ALKIT_LS_TOKEN` and is never written or printed.
"""

from __future__ import annotations

from typing import Optional

import typer

from alkit_cli.render import emit_json, note

app = typer.Typer(help="Connect to Label Studio, receive its webhooks, serve alkit as its ML backend.", no_args_is_help=True)

TOKEN_HELP = "Label Studio Access Token (default: the ALKIT_LS_TOKEN variable); never stored. Prefer the variable: flags show up in `ps`."
POLICY_HELP = "How several annotations of one task become labels: majority, unanimous or latest."
DEFAULT_POLICY = "majority"  # alkit.labelstudio.mapping.VotePolicy.MAJORITY (not imported: `alkit --help` stays fast)
LOOPBACK = "127.0.0.1"
WEBHOOK_PORT = 8765
BACKEND_PORT = 9090  # the port Label Studio's ML backend examples use
BACKEND_DEBOUNCE_S = 2.0
SYNC_BUDGET = 100


@app.command()
def connect(
    ctx: typer.Context,
    url: str = typer.Option(..., "--url", help="Label Studio base URL, e.g. http://127.0.0.1:8080"),
    project_id: Optional[int] = typer.Option(None, "--project-id", help="Use this existing Label Studio project."),
    create: Optional[str] = typer.Option(None, "--create", help="Create a project with this title (labeling config from the class list)."),
    local_files_root: Optional[str] = typer.Option(
        None, "--local-files-root",
        help="The server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT: images are served from it (neither this nor --image-url-prefix given: kept as in alkit.toml).",
    ),
    image_url_prefix: Optional[str] = typer.Option(None, "--image-url-prefix", help="URL prefix that already serves the images over HTTP."),
    adopt: bool = typer.Option(
        False, "--adopt", help="Connect even if the project holds tasks of another alkit project (they are never pulled)."
    ),
    write_config: bool = typer.Option(
        False, "--write-config", help="Overwrite the existing project's labeling config with alkit's (from the class list)."
    ),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Check URL, token, images and labeling config; create or check the project; store url and project id in alkit.toml."""
    from alkit.labelstudio.client import LabelStudioClient
    from alkit.settings import label_studio_token
    from alkit.workflows.ls_connect import connect as connect_project

    project = ctx.obj.project()
    client = LabelStudioClient(url, label_studio_token(token))
    result = connect_project(project, client, project_id, create, local_files_root, image_url_prefix, adopt, write_config)
    if json_output:
        emit_json(result.as_json())
        return
    verb = "created" if result.created else "connected to"
    typer.echo(f"{verb} Label Studio project {result.project_id} at {result.url} as {result.user}; saved in alkit.toml")
    for path in result.storages_created:
        typer.echo(f"local-files storage created for {path}")
    if result.config_written:
        typer.echo("labeling config overwritten with alkit's class list")
    if result.adopted_foreign_tasks:
        note(f"{result.adopted_foreign_tasks} tasks of another alkit project stay in it; they are never pulled")
    note("the token was not stored: keep ALKIT_LS_TOKEN set for push, pull and sync")


@app.command("serve-webhook")
def serve_webhook(
    ctx: typer.Context,
    port: int = typer.Option(WEBHOOK_PORT, "--port", help="Port to listen on."),
    host: str = typer.Option(LOOPBACK, "--host", help="Address to bind."),
    secret: Optional[str] = typer.Option(
        None, "--secret", envvar="ALKIT_LS_WEBHOOK_SECRET", show_envvar=True,
        help="Shared secret expected in the X-Alkit-Secret header (set it in the Label Studio webhook's headers).",
    ),
    pull: bool = typer.Option(True, "--pull/--no-pull", help="Pull right after each accepted event (else only mark)."),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
) -> None:
    """Receive ANNOTATION_CREATED/UPDATED webhooks: mark labels pending and trigger a pull (a hint; sync polls anyway)."""
    from alkit.labelstudio.background import PullTrigger
    from alkit.workflows.ls_project import client_for
    from alkit.workflows.ls_serve import make_webhook_server, pull_on_event

    project = ctx.obj.project()
    trigger = PullTrigger(pull_on_event(project, client_for(project, token), note)) if pull else (lambda: None)
    server = make_webhook_server(project, secret or "", host, port, trigger)
    note(f"listening on http://{host}:{server.server_address[1]}/ for Label Studio webhooks; Ctrl-C stops")
    try:
        server.serve_forever()
    finally:
        server.server_close()


@app.command("serve-backend")
def serve_backend(
    ctx: typer.Context,
    port: int = typer.Option(BACKEND_PORT, "--port", help="Port to listen on (Label Studio's ML backend URL points here)."),
    host: str = typer.Option(LOOPBACK, "--host", help="Address to bind (0.0.0.0 to reach it from another machine)."),
    user: Optional[str] = typer.Option(
        None, "--user", envvar="ALKIT_BACKEND_USER", show_envvar=True,
        help="Basic-auth user name Label Studio must send (Model settings: Authentication method 'Basic Auth').",
    ),
    password: Optional[str] = typer.Option(
        None, "--password", envvar="ALKIT_BACKEND_PASSWORD", show_envvar=True,
        help="Basic-auth password (prefer the variable: flags show up in `ps`).",
    ),
    refit: bool = typer.Option(True, "--refit/--no-refit", help="Refit the posterior after annotation events bring new labels."),
    debounce: float = typer.Option(BACKEND_DEBOUNCE_S, "--debounce", help="Seconds to gather annotation events into one pull/refit."),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
) -> None:
    """Serve alkit as a Label Studio ML backend: /health, /setup, /predict (posterior prediction +
    acquisition score), /webhook (annotation events -> pull -> refit, debounced, one at a time)."""
    from alkit.errors import InputError
    from alkit.labelstudio.background import PullTrigger
    from alkit.workflows.ls_project import client_for
    from alkit.workflows.ls_serve import make_backend_server, pull_on_event

    if bool(user) != bool(password):
        raise InputError("pass both --user and --password (or ALKIT_BACKEND_USER and ALKIT_BACKEND_PASSWORD), or neither")
    project = ctx.obj.project()
    client = client_for(project, token)
    auth = (user, password) if user else None
    trigger = PullTrigger(pull_on_event(project, client, note, refit=refit), debounce_s=debounce)
    server = make_backend_server(project, host, port, trigger, auth=auth, client=client)
    auth_note = "basic auth required" if user else "no authentication: bind to 127.0.0.1 or set --user/--password"
    note(f"alkit ML backend on http://{host}:{server.server_address[1]} ({auth_note}); Ctrl-C stops")
    try:
        server.serve_forever()
    finally:
        server.server_close()


def push(
    ctx: typer.Context,
    round_id: Optional[int] = typer.Option(None, "--round", help="Round to push [default: the newest open round]."),
    pre_annotate: Optional[bool] = typer.Option(
        None, "--pre-annotate/--no-pre-annotate",
        help="Send the predicted class as a pre-selected prediction [default: the ls_pre_annotate setting, true].",
    ),
    wait: bool = typer.Option(False, "--wait", help="Wait for another push/pull/sync instead of failing."),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Push a selection round to Label Studio as tasks with predictions (idempotent)."""
    from alkit.workflows.push import push as run_push

    result = run_push(ctx.obj.project(), token, round_id, pre_annotate=pre_annotate, wait=wait)
    if json_output:
        emit_json(result.as_json())
        return
    typer.echo(result.message)


def pull(
    ctx: typer.Context,
    policy: str = typer.Option(DEFAULT_POLICY, "--policy", help=POLICY_HELP),
    full: bool = typer.Option(False, "--full", help="Re-read every annotated task, not only those changed since the last pull."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another push/pull/sync instead of failing."),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Fetch new and updated annotations from Label Studio and store them as labels."""
    from alkit.labelstudio.mapping import parse_policy
    from alkit.workflows.pull import pull as run_pull

    vote_policy = parse_policy(policy)
    result = run_pull(ctx.obj.project(), token, vote_policy, full=full, wait=wait)
    if json_output:
        emit_json(result.as_json())
        return
    typer.echo(
        f"{result.tasks_seen} tasks read: {result.labels_added} labels added, {result.labels_updated} updated, "
        f"{result.labels_removed} removed; {result.images_labeled} images newly labelled; "
        f"{result.skipped} skipped, {result.empty} empty annotations"
    )
    if result.disagreements:
        note(f"{len(result.disagreements)} tasks with disagreeing annotators (policy {result.policy}); --json lists them")
    if result.conflicts:
        names = sorted({str(value) for c in result.conflicts for value in c["value"]})
        note(
            f"{len(result.conflicts)} annotations not stored as labels (unknown classes: {', '.join(names)}); "
            "fix them in Label Studio or add the class with `alkit classes set`"
        )
    if result.unknown_tasks:
        note(f"{result.unknown_tasks} annotated tasks were not pushed by this alkit project; ignored")
    if result.foreign_tasks:
        note(f"{result.foreign_tasks} tasks belong to another alkit project; ignored")
    if result.skipped_items:
        typer.echo(f"{len(result.skipped_items)} skipped tasks: their images left the round (back to the pool)")
    if result.excluded:
        typer.echo(f"{len(result.excluded)} images skipped too often: excluded from selection")
    if result.deleted_items:
        typer.echo(f"{len(result.deleted_items)} tasks deleted in Label Studio: their images are back in the pool")
    if result.rounds_closed:
        typer.echo(f"rounds complete: {', '.join(map(str, result.rounds_closed))}")


def sync(
    ctx: typer.Context,
    budget: int = typer.Option(SYNC_BUDGET, "--budget", "-b", help="Images per new selection round."),
    policy: str = typer.Option(DEFAULT_POLICY, "--policy", help=POLICY_HELP),
    wait: bool = typer.Option(False, "--wait", help="Wait for a running sync instead of exiting."),
    token: Optional[str] = typer.Option(None, "--token", help=TOKEN_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object (for logs)."),
) -> None:
    """Pull -> refit -> select -> push, once; safe for cron (one at a time, resumes after a kill)."""
    from alkit.errors import LockedError
    from alkit.labelstudio.mapping import parse_policy
    from alkit.workflows.sync import sync as run_sync

    vote_policy = parse_policy(policy)
    project = ctx.obj.project()
    try:
        result = run_sync(project, budget, token=token, policy=vote_policy, wait=wait)
    except LockedError as error:  # not a failure for cron: the running sync does the work
        if json_output:
            emit_json({"action": "locked", "message": str(error)})
        else:
            typer.echo(f"locked: {error}")
        return
    if json_output:
        emit_json(result.as_json())
        return
    typer.echo(result.message)


def register(main_app: typer.Typer) -> None:
    main_app.add_typer(app, name="ls")
    main_app.command()(push)
    main_app.command()(pull)
    main_app.command()(sync)
