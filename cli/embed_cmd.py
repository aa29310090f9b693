"""`alkit embed`: open_clip vectors for the pool, or imported ones from an .npz file."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from alkit_cli.render import emit_json, note

RANDOM_WARNING = (
    "WARNING: --pretrained none: embedding with RANDOM weights (for tests only, the vectors mean "
    "nothing); pass --pretrained TAG or --pretrained CHECKPOINT_FILE for real vectors"
)


def embed(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(
        None, "--model", help="open_clip architecture, e.g. ViT-B-32 (setting: model) [default: the project's model]."
    ),
    pretrained: Optional[str] = typer.Option(
        None, "--pretrained",
        help="Hub tag (e.g. laion2b_s34b_b79k), local checkpoint file, or `none` for random weights (tests only) "
        "(setting: pretrained) [default: the project's model, recorded by the first embed].",
    ),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per forward pass [default: setting batch_size, 32]."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Decoding worker processes; 0 decodes in-process [default: setting workers, 2]."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or auto [default: setting device, auto]."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32, fp16, bf16 or int8 (CPU only: Linear layers dynamically quantised; its own embedding spec) [default: setting precision, fp32]."),
    from_file: Optional[Path] = typer.Option(
        None, "--from", help="Import embeddings from an .npz with `paths`, `embeddings` (N x D) and optional `text_embeddings` instead of computing them [default: not set]."
    ),
    name: Optional[str] = typer.Option(
        None, "--name", help="Name of the imported embedding space (with --from) [default: the file's stem]."
    ),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (Ray Data actor pool; --workers actors)."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster address (--engine ray) [default: RAY_ADDRESS or a local Ray]."),
    num_gpus_per_worker: float = typer.Option(0.0, "--num-gpus-per-worker", help="GPUs per Ray actor (--engine ray); > 0 embeds on cuda."),
    cvp_blocks: int = typer.Option(0, "--cvp-blocks", help="Store each image's embedding variance by calibrated variance propagation over the last K vision blocks (its own spec; needs classes and >= 10 labels; local engine; see `alkit strategies`); 0: off."),
    recalibrate: bool = typer.Option(False, "--recalibrate", help="With --cvp-blocks: refit the variance calibration on the current labels and re-embed that spec."),
    shard_rows: int = typer.Option(1024, "--shard-rows", hidden=True, help="Rows per shard file / transaction."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar [default: when stderr is a terminal]."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Embed every registered image without vectors for the model (resumable; kill-safe)."""
    if from_file is not None:
        model_flags = dict(model=model, pretrained=pretrained, batch_size=batch_size, workers=workers, device=device,
                           precision=precision, address=address)
        given = [f"--{key.replace('_', '-')}" for key, value in model_flags.items() if value is not None]
        given += ["--engine"] * (engine != "local") + ["--num-gpus-per-worker"] * bool(num_gpus_per_worker)
        given += ["--cvp-blocks"] * bool(cvp_blocks) + ["--recalibrate"] * recalibrate
        if given:
            raise typer.BadParameter(f"{', '.join(given)} do not apply with --from (imported vectors are not computed)")
        _import(ctx, from_file, from_file.stem if name is None else name, shard_rows, progress, json_output)
        return
    if name is not None:
        raise typer.BadParameter("--name only applies with --from FILE.npz")
    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"--engine must be local or ray, got {engine!r}")
    if engine == "local" and (address is not None or num_gpus_per_worker):
        raise typer.BadParameter("--address and --num-gpus-per-worker apply only with --engine ray")
    if num_gpus_per_worker < 0:
        raise typer.BadParameter("--num-gpus-per-worker must be >= 0")
    from alkit.workflows.embed import embed_images

    flags = dict(model=model, pretrained=pretrained, batch_size=batch_size, workers=workers, device=device, precision=precision)
    project = ctx.obj.project(**{k: v for k, v in flags.items() if v is not None})
    if (project.settings.pretrained or "").strip().lower() == "none":
        note(RANDOM_WARNING)
    result = embed_images(project, show_progress=progress, shard_rows=shard_rows, engine=engine, ray_address=address,
                          num_gpus_per_worker=num_gpus_per_worker, cvp_blocks=cvp_blocks, recalibrate=recalibrate)
    if json_output:
        emit_json(result.as_json())
    else:
        typer.echo(
            f"embedded {result.embedded} images with {result.spec_name} (spec {result.spec_id}, current) on "
            f"{result.device} {result.precision} in {result.seconds:.1f} s ({result.images_per_second:.1f} img/s); "
            f"{len(result.rejected)} rejected"
        )
        for item in result.rejected[:20]:
            note(f"  rejected {item.get('path')}: {item['reason']}")
        if result.text_features is None:
            note("no class-prompt text features yet (no classes); they are computed when classes are set and needed")
    if result.random_weights:
        note(RANDOM_WARNING)


def _import(ctx: typer.Context, from_file: Path, name: Optional[str], shard_rows: int, progress, json_output: bool) -> None:
    from alkit.errors import InputError
    from alkit.workflows.embed_import import import_embeddings

    if not name.strip():
        raise InputError("--name must not be empty; it names the imported embedding space")
    result = import_embeddings(ctx.obj.project(), from_file, name, shard_rows=shard_rows, show_progress=progress)
    if json_output:
        emit_json(result.as_json())
        return
    typer.echo(
        f"imported {result.embedded} embeddings ({result.dim}-dim) as {result.spec_name!r} (spec {result.spec_id}, current); "
        f"{result.registered} images newly registered, {result.already_embedded} already had vectors, "
        f"{len(result.skipped)} skipped; text embeddings: {'stored' if result.text_features else 'none'}"
    )
    for item in result.skipped[:20]:
        note(f"  skipped {item['path']}: {item['reason']}")


def register(app: typer.Typer) -> None:
    app.command()(embed)
