"""`alkit embed --engine ray`: the forward passes on a Ray cluster, the bookkeeping here.

The driver (this process) reads the work list from the pool database exactly as the local
engine does (on PostgreSQL as row-locked claims, on SQLite as the single writer under the
spec's flock), hands windows of `(image_id, path)` rows to a Ray Data pipeline
(`map_batches` over an actor pool: one `RayEncoder` actor per worker, each holding one
model, decoding and embedding whole batches), and writes what comes back with the same
writer as the local engine: float16 shards written and fsynced first, then the
`embeddings` rows in one transaction. Nothing is marked complete before its vectors are
durable on disk, and only the driver writes, so a killed actor (Ray restarts it and
retries its batch) can neither duplicate nor lose a row; a killed driver leaves pending
images that the next run embeds.

The actors need the image files under the same paths and, for checkpoints, the checkpoint
file under the same path as the driver (a shared filesystem on multi-node clusters). Shards
are written by the driver only.

One actor pool per window: on PostgreSQL a window is `max_claims` claims of `shard_rows`
images (claims are open transactions), on SQLite `window_rows` images; each window pays
one model load per actor.
"""

from __future__ import annotations

from typing import Any

import numpy as np

WINDOW_ROWS = 65_536  # images per Ray dataset on SQLite
MAX_CLAIMS = 8  # open claims (= connections) per window on PostgreSQL
CPUS_PER_ACTOR = 1  # CPUs Ray reserves per encoder actor; throughput scales with --workers (one actor each)


class RayEncoder:
    """Ray Data actor: one open_clip model; {"id", "path"} batches -> one row per input with
    "ok", "reason", "embedding" (zeros where decoding failed) and, if the model has it, "phi"."""

    def __init__(self, architecture: str, weights: dict, config: dict, device: str, precision: str, max_pixels: int | None):
        import open_clip

        from alkit.embedding.decode import BatchDecoder
        from alkit.embedding.model import load_open_clip
        from alkit.embedding.spec import WeightsSource
        from alkit.embedding.tiny import register_config

        if config and open_clip.get_model_config(architecture) is None:  # registered only in the driver
            register_config(architecture, config)
        self.encoder = load_open_clip(architecture, WeightsSource.from_json(weights), device, precision)
        self.decoder = BatchDecoder(self.encoder.preprocess, self.encoder.image_size, max_pixels)
        dims = self.encoder.vector_dims()
        self.dims = {"embedding": dims.embedding, "phi": dims.phi}

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from alkit.embedding.encode import encode_batch

        ids = [int(i) for i in batch["id"]]
        decoded = self.decoder[list(zip(ids, [str(p) for p in batch["path"]]))]
        arrays = encode_batch(self.encoder, decoded["pixels"]) if decoded["pixels"] is not None else {}
        position = {image_id: k for k, image_id in enumerate(decoded["ids"].tolist())}
        reasons = dict(decoded["failed"])
        out: dict[str, Any] = {
            "id": np.asarray(ids, dtype=np.int64),
            "ok": np.asarray([i in position for i in ids]),
            "reason": np.asarray([reasons.get(i, "") for i in ids], dtype=object),
        }
        for kind, dim in self.dims.items():
            if dim is None:
                continue
            full = np.zeros((len(ids), dim), dtype=np.float32)
            if kind in arrays:
                rows = [position[i] for i in ids if i in position]
                full[[k for k, i in enumerate(ids) if i in position]] = arrays[kind][rows]
            out[kind] = full
        return out


def _ensure_ray(address: str | None):
    try:
        import ray
    except ModuleNotFoundError:
        from alkit.errors import ConfigError

        raise ConfigError("--engine ray needs Ray Data: pip install 'alkit[ray]'") from None
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    return ray


def run_ray_embed(queue, planned, settings, bar, address: str | None = None, num_gpus_per_worker: float = 0.0,
                  window_rows: int = WINDOW_ROWS, max_claims: int = MAX_CLAIMS) -> None:
    """Embed everything `queue` (an `alkit.storage.work_queue.WorkQueue`) hands out on Ray, one
    window (`queue.windows`) per dataset; results go back through `queue.add`. `planned` is the
    spec's `alkit.embedding.spec.PlannedSpec`, `settings` the project's embed settings."""
    _ensure_ray(address)  # connects (or starts a local cluster); `import ray.data` binds `ray`
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    actors = max(1, int(settings.workers))
    device = "cuda" if num_gpus_per_worker > 0 else "cpu"
    constructor = (planned.architecture, planned.weights.as_json(), planned.config, device, settings.precision, settings.max_pixels)
    for window in queue.windows(window_rows, max_claims):
        dataset = ray.data.from_items([{"id": image_id, "path": path} for image_id, path in window])
        mapped = dataset.map_batches(
            RayEncoder,
            fn_constructor_args=constructor,
            batch_size=settings.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_gpus=num_gpus_per_worker or None,
            num_cpus=CPUS_PER_ACTOR,
        )
        for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
            ok = np.asarray(batch["ok"], dtype=bool)
            ids = np.asarray(batch["id"], dtype=np.int64)
            arrays = {kind: np.asarray(batch[kind])[ok] for kind in ("embedding", "phi") if kind in batch}
            failed = [(int(i), str(r)) for i, r, good in zip(ids, batch["reason"], ok) if not good]
            queue.add(ids[ok], arrays, failed)
            bar.update(len(ids))
