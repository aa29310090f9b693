"""`alkit demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from alkit_cli.render import echo_table, emit_json, note


def demo(
    directory: Path = typer.Option(Path("alkit-demo"), "--dir", help="Where the projects, images and report go."),
    rounds: int = typer.Option(5, "--rounds", help="Selection rounds per strategy."),
    budget: int = typer.Option(40, "--budget", help="Images labelled per round."),
    strategy: str = typer.Option("bald", "--strategy", help="Strategy compared against random."),
    pool_size: Optional[int] = typer.Option(None, "--pool-size", help="Use only this many pool images (faster)."),
    seed: int = typer.Option(0, "--seed"),
    label_studio: Optional[str] = typer.Option(None, "--label-studio", help="Run the loop through this Label Studio server."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Run the full loop offline on bundled MNIST digits and write a report with plots."""
    from alkit.workflows.demo import DemoSettings, run_demo

    settings = DemoSettings(directory=directory, rounds=rounds, budget=budget, strategy=strategy, seed=seed,
                            pool_size=pool_size, label_studio_url=label_studio)
    result = run_demo(settings, log=note)
    if json_output:
        emit_json(result.as_json())
        return
    names = list(result.curves)
    rows = []
    for index, point in enumerate(result.curves[names[0]]):
        row = [point.round, point.labels]
        for name in names:
            other = result.curves[name][index]
            row += [f"{other.accuracy:.3f}", f"{other.ece:.3f}"]
        rows.append(row)
    headers = ["round", "labels"] + [f"{name} {metric}" for name in names for metric in ("acc", "ECE")]
    typer.echo("learning curve on the shifted test split (ECE: 15 equal-width bins)")
    echo_table(rows, headers)
    typer.echo("mean accuracy over rounds: " + ", ".join(f"{n} {result.mean_accuracy(n):.3f}" for n in names))
    typer.echo(f"report: {result.files['report']} ({result.seconds:.0f} s in all)")


def register(app: typer.Typer) -> None:
    app.command()(demo)
