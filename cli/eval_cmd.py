"""`alkit eval`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from alkit.workflows.eval_settings import DEFAULT_BINS, DEFAULT_SPLIT
from alkit_cli import checks
from alkit_cli.render import echo_table, emit_json


def eval_(
    ctx: typer.Context,
    split: str = typer.Option(DEFAULT_SPLIT, "--split", help="Split with labelled images to evaluate on."),
    bins: int = typer.Option(DEFAULT_BINS, "--bins", help="Equal-width confidence bins for ECE."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write reliability.png, learning_curve.png, report.html here."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Accuracy, NLL, Brier, ECE of the posterior and its MAP; per-class accuracy; plots."""
    from alkit.workflows.evaluate import evaluate

    checks.split(split)
    checks.number(bins, "--bins", 1)
    from alkit.progress import stage

    with stage(f"eval: scoring the '{split}' split" + (" and writing plots" if plot else "")):
        result = evaluate(ctx.obj.project(), split=split, num_bins=bins, plot_dir=None if plot is None else plot.absolute())
    if json_output:
        emit_json(result.as_json())
        return
    typer.echo(f"posterior v{result.posterior_version} ({result.labels_used} labels) on {result.n} '{split}' images; ECE with {bins} bins")
    rows = [(name, f"{result.metrics[name]:.4f}", f"{result.map_metrics[name]:.4f}") for name in ("accuracy", "nll", "brier", "ece")]
    echo_table(rows, ["metric", "posterior", "MAP"])
    echo_table([(k, "-" if v is None else f"{v:.3f}") for k, v in result.per_class_accuracy.items()], ["class", "accuracy"])
    for name, path in result.files.items():
        typer.echo(f"{name}: {path}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)
