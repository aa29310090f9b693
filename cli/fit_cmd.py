"""`alkit fit`, `alkit predict`."""

from __future__ import annotations

from typing import Optional

import typer

from alkit.workflows.fit_settings import FitSettings
from alkit_cli import checks
from alkit_cli.render import echo_table, emit_json, emit_json_lines

DEFAULTS = FitSettings()  # the defaults of the flags below come from the settings dataclass


def fit(
    ctx: typer.Context,
    posterior: Optional[str] = typer.Option(None, "--posterior", help="bayesvlm | laplace_head | probvlm | ensemble | mimo | hetsngp (see `alkit strategies`) [default: by embedding kind]."),
    factors: Optional[str] = typer.Option(None, "--factors", help="Directory with A_img.npy, B_img.npy[, A_txt, B_txt, n, lam]."),
    pairs: Optional[str] = typer.Option(None, "--pairs", help="CSV image_path,caption: curvature from your own pairs."),
    pseudo_data: Optional[float] = typer.Option(None, "--pseudo-data", help="bayesvlm: pseudo-data multiplier n of the zero-shot curvature [default: chosen from 0.3-30 by the labels' Laplace evidence; 10 with no labels]."),
    candidate_batch_size: Optional[int] = typer.Option(None, "--candidate-batch-size", help="Texts per GGN candidate batch [default: all candidates in one batch]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed [default: setting `seed`]."),
    epochs: int = typer.Option(DEFAULTS.epochs, "--epochs", help="probvlm: training epochs (early stopping may end sooner)."),
    learning_rate: float = typer.Option(DEFAULTS.learning_rate, "--learning-rate", help="probvlm: Adam step size."),
    hyper: bool = typer.Option(False, "--hyper", help="ensemble: a hyperparameter ensemble (members also differ in weight decay)."),
    phi_variance_scale: Optional[float] = typer.Option(None, "--phi-variance-scale", help="bayesvlm on a spec embedded with --cvp-blocks: multiplier of the stored phi variance [default: chosen from 0-1 by 3-fold cross-validated NLL on the labels; 1 with fewer than 6 labels]."),
    force: bool = typer.Option(False, "--force", help="Refit even when no labels or settings changed."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Fit a new posterior version on the current labels (zero-shot with none); with no new labels
    and the same settings it says the newest version is up to date."""
    from alkit.workflows.fit import fit_posterior

    checks.seed(seed)
    checks.number(pseudo_data, "--pseudo-data", 0, above=True)
    checks.number(candidate_batch_size, "--candidate-batch-size", 1)
    checks.number(epochs, "--epochs", 1)
    checks.number(learning_rate, "--learning-rate", 0, above=True)
    checks.requires(factors is not None and pairs is not None, "--factors", "no --pairs (both give the curvature; choose one)")
    checks.requires(
        (factors is not None or pairs is not None) and posterior == "laplace_head", "--factors/--pairs", "--posterior bayesvlm"
    )
    checks.requires(hyper and posterior != "ensemble", "--hyper", "--posterior ensemble")
    checks.number(phi_variance_scale, "--phi-variance-scale", 0)
    checks.existing(factors, "--factors", "dir")
    checks.existing(pairs, "--pairs", "file")
    from alkit.progress import stage

    project = ctx.obj.project(seed=seed)
    with stage("fit: checking labels and fitting the posterior"):
        result = fit_posterior(
            project,
            FitSettings(
                posterior=posterior, factors_dir=factors, pairs_csv=pairs, pseudo_data=pseudo_data,
                candidate_batch_size=candidate_batch_size, seed=project.settings.seed, epochs=epochs,
                learning_rate=learning_rate, hyper=hyper, phi_variance_scale=phi_variance_scale,
            ),
            force=force,
        )
    if json_output:
        emit_json(result.as_json())
        return
    if result.up_to_date:
        typer.echo(
            f"posterior v{result.version} is up to date ({result.kind}, {result.labels_used} labels; no new labels, same "
            "settings); nothing fitted (--force refits)"
        )
        return
    precision = "" if result.prior_precision is None else f"; prior precision {result.prior_precision:.4g}"
    typer.echo(
        f"posterior v{result.version} ({result.kind}): {result.labels_used} labels, curvature from "
        f"{result.curvature_source}{precision}; {result.seconds:.1f} s"
    )


def predict(
    ctx: typer.Context,
    split: Optional[str] = typer.Option(None, "--split", help="pool, target or test [default: all]."),
    json_output: bool = typer.Option(False, "--json", help="JSON lines, one per image."),
    limit: int = typer.Option(50, "--limit", help="Rows in the table (JSON prints all)."),
) -> None:
    """Per-image class probabilities, predictive entropy and logit variance."""
    from alkit.workflows.predict import predict_split

    checks.split(split)
    checks.number(limit, "--limit", 0)
    from alkit.progress import stage

    with stage(f"predict: scoring the {split or 'whole'} split with the newest posterior"):
        predictions = predict_split(ctx.obj.project(), split)
    if json_output:
        emit_json_lines(p.as_json() for p in predictions)
        return
    rows = []
    for index, p in enumerate(predictions):
        if index >= limit:
            break
        rows.append((p.image_id, p.predicted_class, f"{p.probability:.3f}", f"{p.entropy:.3f}", f"{p.logit_variance:.3g}", p.path))
    echo_table(rows, ["id", "class", "prob", "entropy", "logit var", "path"])


def register(app: typer.Typer) -> None:
    app.command()(fit)
    app.command()(predict)
