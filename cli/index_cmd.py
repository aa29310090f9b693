"""`alkit index build`, `alkit similar`, `alkit dedup`."""

from __future__ import annotations

from typing import Optional

import typer

from alkit.retrieval.settings import DEFAULT_NEIGHBOURS, DUPLICATE_THRESHOLD, IndexKind, IndexSettings
from alkit_cli import checks
from alkit_cli.render import echo_table, emit_json, emit_json_lines

app = typer.Typer(help="The FAISS index over the current embeddings.", no_args_is_help=True)


@app.command("build")
def build(
    ctx: typer.Context,
    kind: str = typer.Option(IndexSettings.kind.value, "--kind", help=f"{' | '.join(k.value for k in IndexKind)}."),
    nlist: Optional[int] = typer.Option(None, "--nlist", help="IVF cells [default: ~4 sqrt(N)]."),
    pq: Optional[int] = typer.Option(None, "--pq", help="IVF-PQ bytes per vector (divides D); omit for IVF-flat."),
    nprobe: int = typer.Option(IndexSettings.nprobe, "--nprobe", help="IVF cells scanned per query."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """Build, extend or rebuild the index so it covers every embedded image."""
    from alkit.workflows.index import build_index

    checks.choice(kind, "--kind", [k.value for k in IndexKind])
    checks.number(nlist, "--nlist", 1)
    checks.number(pq, "--pq", 1)
    checks.number(nprobe, "--nprobe", 1)
    report = build_index(ctx.obj.project(), kind=kind, nlist=nlist, pq_m=pq, nprobe=nprobe)
    if json_output:
        emit_json(report.as_json())
        return
    reason = f" ({report.reason})" if report.reason else ""
    typer.echo(f"index {report.action}: {report.kind}, {report.rows} rows in {report.seconds:.2f} s{reason}")


def similar(
    ctx: typer.Context,
    image: Optional[str] = typer.Argument(None, help="An image file (in the pool or not)."),
    text: Optional[str] = typer.Option(None, "--text", help="A text query (open_clip embeddings only)."),
    image_id: Optional[int] = typer.Option(None, "--id", help="A pool image id."),
    k: int = typer.Option(DEFAULT_NEIGHBOURS, "-k", help="Neighbours to return."),
    json_output: bool = typer.Option(False, "--json", help="JSON lines, one per neighbour."),
) -> None:
    """Nearest neighbours of an image, a text query or a pool image."""
    from alkit.workflows.index import similar as find_similar

    checks.number(k, "-k", 1)
    if sum(value is not None for value in (image, text, image_id)) != 1:
        raise typer.BadParameter("give exactly one of IMAGE, --text or --id")
    checks.existing(image, "IMAGE", "file")
    rows = find_similar(ctx.obj.project(), image=image, text=text, image_id=image_id, k=k)
    if json_output:
        emit_json_lines(rows)
        return
    echo_table([(r["rank"], r["id"], f"{r['score']:.4f}", r["path"]) for r in rows], ["rank", "id", "score", "path"])


def dedup(
    ctx: typer.Context,
    threshold: float = typer.Option(DUPLICATE_THRESHOLD, "--threshold", help="Cosine at or above which two images are near-duplicates."),
    json_output: bool = typer.Option(False, "--json"),
) -> None:
    """List clusters of near-duplicate images."""
    from alkit.workflows.index import near_duplicates

    checks.number(threshold, "--threshold", 0, 1, above=True)
    clusters = near_duplicates(ctx.obj.project(), threshold)
    if json_output:
        emit_json({"threshold": threshold, "clusters": clusters})
        return
    typer.echo(f"{len(clusters)} clusters of near-duplicates at cosine >= {threshold}")
    for cluster in clusters:
        typer.echo(f"cluster {cluster['cluster']}: " + ", ".join(cluster["paths"]))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="index")
    root.command()(similar)
    root.command()(dedup)
