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
    strategy: str = typer.Option("margin", "--strategy", help="Strategy compared against random (alkit select's default)."),
    pool_size: Optional[int] = typer.Option(None, "--pool-size", help="Use only this many pool images (faster)."),
    seed: int = typer.Option(0, "--seed"),
    seeds: int = typer.Option(3, "--seeds", help="Repeat each strategy's loop this many times (mean and range)."),
    label_studio: Optional[str] = typer.Option(None, "--label-studio", help="Run the loop through this Label Studio server."),
    ls_local_files_root: Optional[Path] = typer.Option(
        None, "--ls-local-files-root",
        help="With --label-studio: the server's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; the images are written under it."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Run the full loop offline on bundled MNIST digits and write a report with plots."""
    from alkit.workflows.demo import DemoSettings, run_demo

    settings = DemoSettings(directory=directory, rounds=rounds, budget=budget, strategy=strategy, seed=seed,
                            pool_size=pool_size, seeds=seeds, label_studio_url=label_studio,
                            ls_local_files_root=ls_local_files_root)
    result = run_demo(settings, log=note)
    if json_output:
        emit_json(result.as_json())
        return
    encoder = result.encoder
    typer.echo(f"encoder: zero-shot accuracy {encoder['zero_shot_accuracy']:.3f} on the shifted test split "
               f"(unshifted {encoder['zero_shot_clean_accuracy']:.3f}); linear-probe ceiling with all "
               f"{encoder['pool_size']} pool labels {encoder['linear_probe_accuracy']:.3f}")
    names = list(result.seed_curves)
    curves = {name: result.mean_curve(name) for name in names}
    rows = []
    for index, point in enumerate(curves[names[0]]):
        row = [point["round"], point["labels"]]
        for name in names:
            other = curves[name][index]
            row += [f"{other['accuracy']:.3f} ({other['accuracy_min']:.3f}-{other['accuracy_max']:.3f})", f"{other['ece']:.3f}"]
        rows.append(row)
    headers = ["round", "labels"] + [f"{name} {metric}" for name in names for metric in ("acc (min-max)", "ECE")]
    seeds_run = len(result.seed_curves[names[0]])
    typer.echo(f"learning curve on the shifted test split, mean over {seeds_run} seeds (ECE: 15 equal-width bins)")
    echo_table(rows, headers)
    typer.echo("mean accuracy over rounds and seeds: " + ", ".join(f"{n} {result.mean_accuracy(n):.3f}" for n in names))
    typer.echo(f"report: {result.files['report']} ({result.seconds:.0f} s in all)")


def register(app: typer.Typer) -> None:
    app.command()(demo)
