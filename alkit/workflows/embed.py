"""`alkit embed`: vectors for every registered image, per embedding spec, resumable after kill -9.

The run composes: `choose_model` (which spec), the open_clip encoder, the spec row and its
projections and text features, a work queue over the pending images
(`alkit.storage.work_queue`) and an engine that encodes them (`alkit.embedding.encode`
locally, `alkit.embedding.ray_engine` on Ray). Imported vectors: `alkit.workflows.embed_import`.
With `cvp_blocks = k > 0` the spec is the model's CVP spec (`embedding.spec.for_cvp`): its
weight posterior is fitted once (`alkit.workflows.cvp_posterior`) and every batch is encoded by
`cvp_embed` (the vectors plus `embedding_var` and `phi_var`, float16 shards beside them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alkit.embedding.spec import OPEN_CLIP_KIND, PlannedSpec, for_cvp, spec_record
from alkit.errors import InputError
from alkit.jsonable import JsonResult
from alkit.progress import progress_bar
from alkit.project import Project
from alkit.storage.images import paths_by_id
from alkit.storage.shards import SHARD_ROWS, WriteTally, collect_garbage, writer_lock
from alkit.storage.specs import ensure_spec, set_current, spec_by_key, spec_directory
from alkit.storage.work_queue import count_pending, open_work_queue
from alkit.workflows.embed_model import choose_model
from alkit.workflows.text_features import current_class_list, ensure_text_features, save_projections, text_features_file

FLUSH_SECONDS = 30.0  # a shard at least this often, so a kill loses at most this much work
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class EngineRun:
    """How the pending images are encoded and written: the engine and its knobs."""

    engine: str = "local"  # one of ENGINES
    shard_rows: int = SHARD_ROWS
    flush_seconds: float = FLUSH_SECONDS
    ray_address: str | None = None
    num_gpus_per_worker: float = 0.0
    show_progress: bool | None = None
    encode: Any = None  # `encode(encoder, pixels)` for the local engine (None: `encode_batch`)


@dataclass
class EmbedResult(JsonResult):
    """What one `alkit embed` run did, for the summary line and `--json` (spec as "spec"/"key")."""

    spec_id: int
    spec_name: str
    spec_key: str
    random_weights: bool
    device: str = "cpu"
    precision: str = "fp32"
    pending: int = 0  # images without vectors at the start
    embedded: int = 0
    rejected: list[dict] = field(default_factory=list)  # {image_id, path, reason}
    shards_written: int = 0
    orphans_removed: int = 0
    text_features: str | None = None  # file for the current class list, if any
    seconds: float = 0.0
    cvp_blocks: int = 0  # > 0: CVP over the last k blocks (variances stored); in --json only then

    json_names = {"spec_name": "spec", "spec_key": "key"}

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict:
        data = super().as_json()
        data["seconds"] = round(self.seconds, 3)
        data["images_per_second"] = round(self.images_per_second, 2)
        if not self.cvp_blocks:
            del data["cvp_blocks"]
        return data


def embed_images(
    project: Project,
    show_progress: bool | None = None,
    shard_rows: int = SHARD_ROWS,
    flush_seconds: float = FLUSH_SECONDS,
    engine: str = "local",
    ray_address: str | None = None,
    num_gpus_per_worker: float = 0.0,
    cvp_blocks: int = 0,
    recalibrate: bool = False,
) -> EmbedResult:
    """Embed every non-rejected image without vectors for the spec `choose_model` picks (the
    settings' model/pretrained, or the project's recorded model), with the settings' batch_size,
    workers, device, precision and seed, and make that spec current. Safe to kill at any point and rerun.

    On PostgreSQL several processes may run this at once on one project (each image is
    claimed by one of them); on SQLite a second one gets LockedError. `engine="ray"` runs
    the forward passes on a Ray cluster (`alkit.embedding.ray_engine`; `workers` actors,
    `num_gpus_per_worker` GPUs each) and writes the same shards and rows from this process.
    `cvp_blocks = k > 0`: the CVP spec over the last k vision blocks (local engine only; needs
    classes and labels the first time, see `alkit.workflows.cvp_posterior`); `recalibrate`:
    refit its calibration on the current labels and re-embed the spec.
    """
    from alkit.embedding.model import load_open_clip, resolve_device

    settings = project.settings
    if engine not in ENGINES:
        raise InputError(f"engine must be local or ray, got {engine!r}")
    if settings.batch_size < 1 or settings.workers < 0:
        raise InputError(f"batch size must be >= 1 and workers >= 0 (got {settings.batch_size}, {settings.workers})")
    if cvp_blocks < 0:
        raise InputError(f"--cvp-blocks must be >= 0 (0: no CVP), got {cvp_blocks}")
    if recalibrate and not cvp_blocks:
        raise InputError("--recalibrate applies only with --cvp-blocks K")
    if cvp_blocks and engine != "local":
        raise InputError("--cvp-blocks runs on --engine local only; drop --engine ray or --cvp-blocks")
    planned = for_cvp(choose_model(project), cvp_blocks)
    directory = spec_directory(project, planned.key)
    device = resolve_device(settings.device) if engine == "local" or num_gpus_per_worker <= 0 else "cuda"
    random_weights = planned.weights.kind == "random"
    with writer_lock(project.engine, directory):
        with project.engine.connect() as connection:
            existing = spec_by_key(connection, planned.key)
        pending = count_pending(project.engine, existing.id if existing else None)
        classes = current_class_list(project)
        text_path = None if classes.key is None else text_features_file(project, planned.key, classes.key)
        if existing is not None and pending == 0 and (text_path is None or text_path.is_file()) and not recalibrate:  # nothing to do: no model load
            with project.engine.begin() as connection:
                set_current(connection, existing.id)
                removed = collect_garbage(connection, existing.id, directory)
            return EmbedResult(existing.id, existing.name, planned.key, random_weights, device, settings.precision,
                               orphans_removed=removed, text_features=None if text_path is None else str(text_path),
                               cvp_blocks=cvp_blocks)

        # the Ray driver only needs the spec's shapes, projections and text features: CPU fp32 (int8
        # specs: int8, so that the text features come from the same quantised model as the images)
        encoder = (load_open_clip(planned.architecture, planned.weights, device, settings.precision) if engine == "local"
                   else load_open_clip(planned.architecture, planned.weights, "cpu", "int8" if planned.quantisation else "fp32"))
        encode = None
        if cvp_blocks:  # before the spec row: a fit that fails leaves the project as it was
            from alkit.workflows.cvp_embed import cvp_batch_encoder
            from alkit.workflows.cvp_posterior import ensure_cvp_posterior

            encode = cvp_batch_encoder(*ensure_cvp_posterior(project, directory, encoder, cvp_blocks, classes.prompts,
                                                             recalibrate, None if existing is None else existing.id))
        dims = encoder.vector_dims()
        spec = spec_record(planned, encoder, dims, device, settings.precision)
        with project.engine.begin() as connection:
            row = ensure_spec(connection, planned.key, OPEN_CLIP_KIND, planned.name, spec, dims.embedding, dims.phi)
            set_current(connection, row.id)
            removed = collect_garbage(connection, row.id, directory)
        save_projections(directory, encoder)
        result = EmbedResult(row.id, row.name, planned.key, random_weights, device, settings.precision,
                             pending=count_pending(project.engine, row.id), orphans_removed=removed, cvp_blocks=cvp_blocks)
        text_path = ensure_text_features(project, row, encoder)
        result.text_features = None if text_path is None else str(text_path)
        run = EngineRun(engine, shard_rows, flush_seconds, ray_address, num_gpus_per_worker, show_progress, encode)
        _run_engine(project, row.id, directory, encoder, planned, result, run)
    _attach_paths(project, result.rejected)
    return result


def _run_engine(project: Project, spec_id: int, directory: Path, encoder, planned: PlannedSpec, result: EmbedResult,
                run: EngineRun) -> None:
    """Encode the pending images of the spec as `run` says; counts and rejections go to `result`."""
    settings = project.settings
    tally = WriteTally()
    on_ray = run.engine == "ray"
    queue = open_work_queue(project.engine, spec_id, directory, tally, run.shard_rows, run.flush_seconds,
                            settings.batch_size, claim_rows=run.shard_rows if on_ray else None)
    started = time.perf_counter()
    try:
        with progress_bar(result.pending, "embed", run.show_progress, unit="img") as bar:
            if on_ray:
                from alkit.embedding.ray_engine import run_ray_embed

                run_ray_embed(queue, planned, settings, bar, address=run.ray_address,
                              num_gpus_per_worker=run.num_gpus_per_worker)
            else:
                from alkit.embedding.encode import encode_batch, run_local_embed

                run_local_embed(queue, encoder, settings.batch_size, settings.workers, settings.max_pixels, bar,
                                run.encode or encode_batch)
            queue.finish()
    finally:
        queue.close()
        result.embedded, result.shards_written, result.rejected = tally.embedded, tally.shards_written, tally.rejected
    result.seconds = time.perf_counter() - started


def _attach_paths(project: Project, rejected: list[dict]) -> None:
    if not rejected:
        return
    with project.engine.connect() as connection:
        paths = paths_by_id(connection, [r["image_id"] for r in rejected])
    for item in rejected:
        item["path"] = paths.get(item["image_id"])
