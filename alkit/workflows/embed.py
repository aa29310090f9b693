"""`alkit embed`: vectors for every registered image, per embedding spec, resumable after kill -9.

Also the library API later stages use: `current_spec`, `load_vectors`, `iter_vector_chunks`
(re-exported from `alkit.storage.vectors`), `load_text_features` and `encoder_for_spec`.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

from alkit.embedding.spec import (
    IMPORTED_KIND,
    OPEN_CLIP_KIND,
    WeightsSource,
    check_architecture,
    file_hash,
    imported_key,
    resolve_weights,
    spec_key,
    spec_name,
)
from alkit.errors import InputError, IntegrityError, StateError
from alkit.progress import progress_bar
from alkit.project import Project
from alkit.storage.db import utcnow
from alkit.storage.pool import class_rows
from alkit.storage.schema import ImageStatus, embedding_specs, embeddings, images
from alkit.storage.shards import (
    collect_garbage,
    concurrent_writers,
    lock_spec_writes,
    next_shard,
    record_shard,
    spec_lock,
    write_shard,
)
from alkit.storage.spec_files import PROJECTIONS_FILE, TextFeatures, load_tensors, save_tensors
from alkit.storage.specs import current_spec, ensure_spec, set_current, spec_directory, spec_row
from alkit.storage.vectors import iter_vector_chunks, load_vectors  # noqa: F401  (re-exported library API)

SHARD_ROWS = 1024  # images per shard file and per DB transaction
FLUSH_SECONDS = 30.0  # ... or fewer, so a kill loses at most this much work
PAGE_ROWS = 1000  # pending images fetched per query


@dataclass
class EmbedResult:
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

    @property
    def images_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict:
        return {
            "spec_id": self.spec_id,
            "spec": self.spec_name,
            "key": self.spec_key,
            "random_weights": self.random_weights,
            "device": self.device,
            "precision": self.precision,
            "pending": self.pending,
            "embedded": self.embedded,
            "rejected": self.rejected,
            "shards_written": self.shards_written,
            "orphans_removed": self.orphans_removed,
            "text_features": self.text_features,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
        }


# --- pending work --------------------------------------------------------------------------


def _pending_filter(spec_id: int | None):
    condition = images.c.status != ImageStatus.REJECTED.value
    if spec_id is not None:
        done = sa.select(embeddings.c.image_id).where(
            embeddings.c.spec_id == spec_id, embeddings.c.image_id == images.c.id
        )
        condition = sa.and_(condition, ~sa.exists(done))
    return condition


def count_pending(project: Project, spec_id: int | None) -> int:
    with project.engine.connect() as connection:
        return int(connection.execute(sa.select(sa.func.count()).select_from(images).where(_pending_filter(spec_id))).scalar_one())


def iter_pending(project: Project, spec_id: int, page: int = PAGE_ROWS):
    """(image_id, path) of images without vectors for the spec, streamed by ascending id."""
    last = -1
    while True:
        with project.engine.connect() as connection:
            rows = connection.execute(
                sa.select(images.c.id, images.c.path)
                .where(_pending_filter(spec_id), images.c.id > last)
                .order_by(images.c.id)
                .limit(page)
            ).all()
        if not rows:
            return
        for image_id, path in rows:
            yield int(image_id), path
        last = int(rows[-1][0])


# --- specs and encoders --------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedSpec:
    architecture: str
    weights: WeightsSource
    config: dict
    key: str

    @property
    def name(self) -> str:
        return spec_name(self.architecture, self.weights)


def plan_spec(architecture: str, pretrained: str | None, seed: int) -> PlannedSpec:
    """Identify the vector space of (architecture, weights) without loading the model."""
    config = check_architecture(architecture)
    weights = resolve_weights(architecture, pretrained, seed)
    return PlannedSpec(architecture, weights, config, spec_key(OPEN_CLIP_KIND, architecture, weights.identity, config))


RANDOM_WEIGHTS = "none"  # `--pretrained none`: seeded random weights, only when asked for by name
NO_MODEL_HINT = (
    "pass --model ARCH --pretrained TAG|CHECKPOINT (e.g. --model ViT-B-32 --pretrained laion2b_s34b_b79k); "
    "the project then remembers it, so later a bare `alkit embed` reuses it (--pretrained none: random weights, tests only)"
)


def _recorded_model(project: Project) -> sa.Row | None:
    """The project's model: the current spec when it came from open_clip (the last one embedded)."""
    with project.engine.connect() as connection:
        row = connection.execute(sa.select(embedding_specs).where(embedding_specs.c.is_current.is_(True))).first()
    return row


def choose_model(project: Project) -> PlannedSpec:
    """The (architecture, weights) `alkit embed` uses, never a silent fallback:

    - `pretrained` given (flag, ALKIT_PRETRAINED or alkit.toml): that tag or checkpoint with
      `model` (without `model`: the project's architecture, if it has one); the word `none`
      means seeded random weights, the only way to get them;
    - otherwise the project's recorded model (its current open_clip spec), as long as a given
      `model` names the same architecture; a checkpoint must still hash the same;
    - otherwise an InputError naming --model/--pretrained.
    """
    settings = project.settings
    sources = getattr(settings, "sources", {}) or {}
    pretrained = settings.pretrained
    model_given = sources.get("model", "default") != "default"
    if model_given:
        check_architecture(settings.model)  # an unknown name is reported as such first
    recorded = _recorded_model(project)
    if pretrained:
        architecture = settings.model
        if not model_given and recorded is not None and recorded.kind == OPEN_CLIP_KIND:
            architecture = recorded.spec["architecture"]  # new weights for the project's architecture
        random = pretrained.strip().lower() == RANDOM_WEIGHTS
        return plan_spec(architecture, None if random else pretrained, settings.seed)
    if recorded is None or recorded.kind != OPEN_CLIP_KIND:
        given = f"--model {settings.model} without --pretrained" if model_given else "no model given"
        what = (
            "the project has no embedding model yet" if recorded is None
            else f"the project's current embedding space {recorded.name!r} was imported from a file (it has no model)"
        )
        raise InputError(f"{given}, and {what}; {NO_MODEL_HINT}")
    architecture = recorded.spec["architecture"]
    if model_given and settings.model != architecture:
        raise InputError(
            f"--model {settings.model} differs from the project's model {recorded.name!r} and no --pretrained was given; "
            f"{NO_MODEL_HINT}"
        )
    check_architecture(architecture)  # registers bundled configs in this process
    weights = WeightsSource.from_json(recorded.spec["weights"])
    if weights.kind == "checkpoint":
        path = Path(str(weights.value))
        if not path.is_file():
            raise IntegrityError(
                f"checkpoint {path} of the project's model {recorded.name!r} is missing; restore it or pass --pretrained"
            )
        if file_hash(path) != weights.checkpoint_hash:
            raise IntegrityError(
                f"checkpoint {path} changed since the project's model {recorded.name!r} was recorded (hash differs); "
                "restore it, or pass --pretrained PATH to embed with the new weights as a new spec"
            )
    return PlannedSpec(architecture, weights, recorded.spec.get("config") or {}, recorded.key)


def _spec_json(planned: PlannedSpec, encoder, dim: int, phi_dim: int | None, text_phi_dim: int | None, device: str, precision: str) -> dict:
    import open_clip

    return {
        "architecture": planned.architecture,
        "weights": planned.weights.as_json(),
        "image_size": encoder.image_size,
        "dim": dim,
        "phi_dim": phi_dim,
        "text_phi_dim": text_phi_dim,
        "image_projection": None if encoder.image_proj is None else encoder.image_proj.name,
        "text_projection": None if encoder.text_proj is None else encoder.text_proj.name,
        "preprocess": {k: (list(v) if isinstance(v, tuple) else v) for k, v in encoder.preprocess_cfg.items()},
        "open_clip_version": open_clip.__version__,
        "device": device,
        "precision": precision,
        "storage_dtype": "float16",
        "config": planned.config,
    }


def _as_spec_row(project: Project, spec: Any) -> sa.Row:
    if isinstance(spec, int):
        with project.engine.connect() as connection:
            return spec_row(connection, spec)
    return spec


def encoder_for_spec(project: Project, spec: Any):
    """The open_clip encoder that made a spec's vectors (spec row or id); device/precision
    from the project settings. Imported specs have none: StateError."""
    from alkit.embedding.model import load_open_clip

    row = _as_spec_row(project, spec)
    if row.kind != OPEN_CLIP_KIND:
        raise StateError(
            f"embedding spec {row.name!r} was imported from a file and has no encoder, so it cannot embed text "
            "queries or new images; run alkit embed --model ARCH to use an open_clip spec"
        )
    weights = WeightsSource.from_json(row.spec["weights"])
    if weights.kind == "checkpoint":
        path = Path(str(weights.value))
        if not path.is_file():
            raise IntegrityError(f"checkpoint {path} of embedding spec {row.name!r} is missing; restore the file")
        if file_hash(path) != weights.checkpoint_hash:
            raise IntegrityError(
                f"checkpoint {path} changed since spec {row.name!r} was embedded (hash differs); restore it or re-embed"
            )
    settings = project.settings
    return load_open_clip(row.spec["architecture"], weights, settings.device, settings.precision)


# --- text features -------------------------------------------------------------------------


def _class_list(project: Project) -> tuple[list[str], list[str], str | None]:
    from alkit.workflows.classes import classes_key

    with project.engine.connect() as connection:
        rows = class_rows(connection)
    names, prompts = [r.name for r in rows], [r.prompt for r in rows]
    return names, prompts, (classes_key(names, prompts) if names else None)


def text_features_path(project: Project, spec_key_: str, classes_key_: str) -> Path:
    return spec_directory(project, spec_key_) / f"text-{classes_key_}.safetensors"


def ensure_text_features(project: Project, spec: Any, encoder=None) -> Path | None:
    """The text-feature file of `spec` for the current class list, computed if missing.

    None when there are no classes, or the spec was imported without text embeddings for
    this class list.
    """
    row = _as_spec_row(project, spec)
    _, prompts, key = _class_list(project)
    if key is None:
        return None
    path = text_features_path(project, row.key, key)
    if path.is_file():
        return path
    if row.kind != OPEN_CLIP_KIND:
        return None
    encoder = encoder or encoder_for_spec(project, row)
    emb, psi = encoder.encode_texts(prompts)  # (K, D), (K, d_t) | None
    tensors = {"text_emb": _normalise(emb.numpy())}
    if psi is not None:
        tensors["psi"] = psi.numpy()
    save_tensors(path, tensors, metadata={"classes_key": key})
    return path


def load_text_features(project: Project, spec_id: int | None = None) -> TextFeatures:
    """(text_emb (K, D), psi (K, d_t), P (d, D), Q (d_t, D), logit_scale) for the current class
    list; recomputed (once, then cached by class-list key) when the class list changed.
    Fields the spec cannot provide are None (imported specs: only text_emb, if given)."""
    with project.engine.connect() as connection:
        row = current_spec(connection) if spec_id is None else spec_row(connection, spec_id)
    path = ensure_text_features(project, row)
    text = load_tensors(path) if path is not None else {}
    projections_path = spec_directory(project, row.key) / PROJECTIONS_FILE
    projections = load_tensors(projections_path) if projections_path.is_file() else {}
    scale = projections.get("logit_scale")
    return TextFeatures(
        text.get("text_emb"), text.get("psi"), projections.get("P"), projections.get("Q"), None if scale is None else float(scale)
    )


def load_projections(project: Project, spec_id: int) -> dict[str, np.ndarray]:
    """All projection tensors of a spec: P, Q and, where the model has them, P_bias, Q_bias, logit_bias."""
    with project.engine.connect() as connection:
        row = spec_row(connection, spec_id)
    path = spec_directory(project, row.key) / PROJECTIONS_FILE
    return load_tensors(path) if path.is_file() else {}


# --- the embed run ---------------------------------------------------------------------------


def _normalise(array: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


class _ShardWriter:
    """Buffers rows; `flush` writes one shard durably, then its DB rows in one transaction.

    With a `_Claim` (PostgreSQL), the rows go into the claim's transaction, which holds the
    row locks on its images and, from the shard number on, the spec's write lock; its
    commit makes the images done and releases both at once.
    """

    def __init__(self, project: Project, spec_id: int, directory: Path, result: EmbedResult):
        self.project, self.spec_id, self.directory, self.result = project, spec_id, directory, result
        self.ids: list[np.ndarray] = []
        self.arrays: dict[str, list[np.ndarray]] = {}
        self.rejected: list[tuple[int, str]] = []
        self.rows = 0

    def add(self, ids: np.ndarray, arrays: dict[str, np.ndarray]) -> None:
        self.ids.append(ids)
        for kind, array in arrays.items():
            self.arrays.setdefault(kind, []).append(array.astype(np.float16))
        self.rows += len(ids)

    def _record(self, connection, ids: np.ndarray, shard: int | None, now) -> None:
        if len(ids):
            record_shard(connection, self.spec_id, shard, ids.tolist())
            connection.execute(
                images.update()
                .where(images.c.id.in_(ids.tolist()), images.c.status == ImageStatus.REGISTERED.value)
                .values(status=ImageStatus.EMBEDDED.value, updated_at=now)
            )
        for image_id, reason in self.rejected:
            connection.execute(
                images.update()
                .where(images.c.id == image_id)
                .values(status=ImageStatus.REJECTED.value, error_reason=reason, updated_at=now)
            )

    def flush(self, claim: "_Claim | None" = None) -> None:
        if not self.rows and not self.rejected:
            if claim is not None:
                claim.commit()
            return
        now = utcnow()
        ids = np.concatenate(self.ids) if self.ids else np.zeros(0, dtype=np.int64)
        arrays = {kind: np.concatenate(parts) for kind, parts in self.arrays.items()}
        shard = None
        if claim is not None:
            connection = claim.connection
            if len(ids):
                lock_spec_writes(connection, self.spec_id)  # held until the commit below
                shard = next_shard(connection, self.spec_id, self.directory)
                write_shard(self.directory, shard, arrays)
            self._record(connection, ids, shard, now)
            claim.commit()
        else:
            if len(ids):
                with self.project.engine.connect() as connection:
                    shard = next_shard(connection, self.spec_id, self.directory)
                write_shard(self.directory, shard, arrays)
            with self.project.engine.begin() as connection:
                self._record(connection, ids, shard, now)
        if len(ids):
            self.result.shards_written += 1
            self.result.embedded += len(ids)
        self.result.rejected.extend({"image_id": image_id, "reason": reason} for image_id, reason in self.rejected)
        self.ids, self.arrays, self.rejected, self.rows = [], {}, [], 0


# --- where the work comes from and goes to -------------------------------------------------


class _SerialQueue:
    """The single writer of a spec (SQLite, under `spec_lock`): pending images streamed by
    id, one shard per `shard_rows` images or `flush_seconds`."""

    def __init__(self, project: Project, spec_id: int, directory: Path, result: EmbedResult, shard_rows: int, flush_seconds: float):
        self.project, self.spec_id = project, spec_id
        self.writer = _ShardWriter(project, spec_id, directory, result)
        self.shard_rows, self.flush_seconds = shard_rows, flush_seconds
        self.last_flush = time.perf_counter()

    def items(self):
        return iter_pending(self.project, self.spec_id)

    def add(self, ids: np.ndarray, arrays: dict[str, np.ndarray], failed: list[tuple[int, str]]) -> None:
        self.writer.rejected.extend(failed)
        if len(ids):
            self.writer.add(ids, arrays)
        if self.writer.rows >= self.shard_rows or time.perf_counter() - self.last_flush > self.flush_seconds:
            self.writer.flush()
            self.last_flush = time.perf_counter()

    def finish(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        pass


class _Claim:
    """Images claimed by this process: an open transaction holding their row locks."""

    def __init__(self, connection, transaction, ids: list[int], writer: _ShardWriter):
        self.connection, self.transaction, self.ids, self.writer = connection, transaction, ids, writer
        self.remaining = len(ids)

    def commit(self) -> None:
        try:
            self.transaction.commit()
        finally:
            self.connection.close()

    def abandon(self) -> None:
        with contextlib.suppress(Exception):
            self.transaction.rollback()
        with contextlib.suppress(Exception):
            self.connection.close()


class _ClaimQueue:
    """Several writers of one spec at once (PostgreSQL): each claim is a transaction that
    locks a run of pending images (`FOR NO KEY UPDATE SKIP LOCKED`, so other workers skip
    them and label/status writers are only delayed, never lost) until the shard holding
    their vectors is written and their rows are committed in that same transaction. A killed
    worker's connection drops, PostgreSQL rolls its claims back, and the images are pending
    again. Claim sizes follow the throughput so that a claim takes about `flush_seconds / 2`
    (between `batch_size` and `shard_rows` images), unless `claim_rows` fixes them."""

    def __init__(self, project: Project, spec_id: int, directory: Path, result: EmbedResult, shard_rows: int,
                 flush_seconds: float, batch_size: int, claim_rows: int | None = None):
        self.project, self.spec_id, self.directory, self.result = project, spec_id, directory, result
        self.shard_rows, self.flush_seconds, self.batch_size, self.claim_rows = shard_rows, flush_seconds, batch_size, claim_rows
        self.open: deque[_Claim] = deque()
        self.owner: dict[int, _Claim] = {}
        self.started = time.perf_counter()
        self.claimed = 0

    def _next_size(self) -> int:
        if self.claim_rows is not None:
            return max(1, self.claim_rows)
        elapsed = time.perf_counter() - self.started
        if self.result.embedded == 0 or elapsed <= 0:
            return max(1, min(self.shard_rows, 4 * self.batch_size))
        wanted = int(self.result.embedded / elapsed * self.flush_seconds / 2)
        return max(1, min(self.shard_rows, max(self.batch_size, wanted)))

    def claim(self, size: int) -> tuple[_Claim, list[tuple[int, str]]] | None:
        """Lock up to `size` pending images; None when none is left unclaimed."""
        while True:
            connection = self.project.engine.connect()
            transaction = connection.begin()
            try:
                rows = connection.execute(
                    sa.select(images.c.id, images.c.path)
                    .where(_pending_filter(self.spec_id))
                    .order_by(images.c.id)
                    .limit(size)
                    .with_for_update(skip_locked=True, key_share=True, of=images)
                ).all()
                if not rows:
                    transaction.commit()
                    connection.close()
                    return None
                # The locking statement judged "no vectors yet" on its snapshot; a worker that
                # committed in between is only visible to a new statement (READ COMMITTED).
                ids = [int(r[0]) for r in rows]
                done = set(connection.execute(
                    sa.select(embeddings.c.image_id).where(embeddings.c.spec_id == self.spec_id, embeddings.c.image_id.in_(ids))
                ).scalars())
            except BaseException:
                _Claim(connection, transaction, [], None).abandon()
                raise
            items = [(int(i), p) for i, p in rows if int(i) not in done]
            if not items:
                transaction.commit()
                connection.close()
                continue
            claim = _Claim(connection, transaction, [i for i, _ in items], _ShardWriter(self.project, self.spec_id, self.directory, self.result))
            return claim, items

    def claim_window(self, max_claims: int) -> list[tuple[int, str]]:
        """Up to `max_claims` claims' items at once (for engines that take a list)."""
        items: list[tuple[int, str]] = []
        for _ in range(max_claims):
            claimed = self.claim(self._next_size())
            if claimed is None:
                break
            self._adopt(*claimed)
            items += claimed[1]
        return items

    def _adopt(self, claim: _Claim, items) -> None:
        self.open.append(claim)
        for image_id in claim.ids:
            self.owner[image_id] = claim
        self.claimed += len(items)

    def items(self):
        while True:
            claimed = self.claim(self._next_size())
            if claimed is None:
                return
            self._adopt(*claimed)
            yield from claimed[1]

    def add(self, ids: np.ndarray, arrays: dict[str, np.ndarray], failed: list[tuple[int, str]]) -> None:
        start = 0
        owners = [self.owner.pop(int(i)) for i in ids]
        for stop in range(1, len(owners) + 1):  # runs of consecutive rows of one claim
            if stop == len(owners) or owners[stop] is not owners[start]:
                claim = owners[start]
                claim.writer.add(ids[start:stop], {kind: array[start:stop] for kind, array in arrays.items()})
                claim.remaining -= stop - start
                start = stop
        for image_id, reason in failed:
            claim = self.owner.pop(int(image_id))
            claim.writer.rejected.append((int(image_id), reason))
            claim.remaining -= 1
        while self.open and self.open[0].remaining == 0:
            claim = self.open.popleft()
            claim.writer.flush(claim)

    def finish(self) -> None:
        if any(claim.remaining for claim in self.open):
            raise RuntimeError(f"{sum(c.remaining for c in self.open)} claimed images came back without a result")
        while self.open:
            claim = self.open.popleft()
            claim.writer.flush(claim)

    def close(self) -> None:
        while self.open:
            self.open.popleft().abandon()
        self.owner.clear()


def _work_queue(project: Project, spec_id: int, directory: Path, result: EmbedResult, shard_rows: int,
                flush_seconds: float, batch_size: int, claim_rows: int | None = None):
    if concurrent_writers(project.engine):
        return _ClaimQueue(project, spec_id, directory, result, shard_rows, flush_seconds, batch_size, claim_rows)
    return _SerialQueue(project, spec_id, directory, result, shard_rows, flush_seconds)


def _writer_lock(project: Project, directory: Path):
    """SQLite: one writer per spec (flock). PostgreSQL: none; claims and the advisory write
    lock let several processes share the spec."""
    return contextlib.nullcontext() if concurrent_writers(project.engine) else spec_lock(directory)


def encode_batch(encoder, pixels) -> dict[str, np.ndarray]:
    """Stored arrays of one batch: unit-norm embedding and, where the model has it, phi."""
    emb, phi = encoder.encode_pixels(pixels)  # (b, D), (b, d) | None
    arrays = {"embedding": _normalise(emb.float().numpy())}
    if phi is not None:
        arrays["phi"] = phi.float().numpy()
    return arrays


def embed_images(
    project: Project,
    show_progress: bool | None = None,
    shard_rows: int = SHARD_ROWS,
    flush_seconds: float = FLUSH_SECONDS,
    engine: str = "local",
    ray_address: str | None = None,
    num_gpus_per_worker: float = 0.0,
) -> EmbedResult:
    """Embed every non-rejected image without vectors for the spec `choose_model` picks (the
    settings' model/pretrained, or the project's recorded model), with the settings' batch_size,
    workers, device, precision and seed, and make that spec current. Safe to kill at any point and rerun.

    On PostgreSQL several processes may run this at once on one project (each image is
    claimed by one of them); on SQLite a second one gets LockedError. `engine="ray"` runs
    the forward passes on a Ray cluster (`alkit.embedding.ray_engine`; `workers` actors,
    `num_gpus_per_worker` GPUs each) and writes the same shards and rows from this process.
    """
    from alkit.embedding.decode import BatchDecoder, batch_loader
    from alkit.embedding.model import load_open_clip, resolve_device

    settings = project.settings
    if engine not in ("local", "ray"):
        raise InputError(f"engine must be local or ray, got {engine!r}")
    if settings.batch_size < 1 or settings.workers < 0:
        raise InputError(f"batch size must be >= 1 and workers >= 0 (got {settings.batch_size}, {settings.workers})")
    planned = choose_model(project)
    directory = spec_directory(project, planned.key)
    device = resolve_device(settings.device) if engine == "local" or num_gpus_per_worker <= 0 else "cuda"
    with _writer_lock(project, directory):
        with project.engine.connect() as connection:
            existing = connection.execute(sa.select(embedding_specs).where(embedding_specs.c.key == planned.key)).first()
        pending = count_pending(project, existing.id if existing else None)
        _, _, classes_key_ = _class_list(project)
        text_ready = classes_key_ is None or (
            existing is not None and text_features_path(project, planned.key, classes_key_).is_file()
        )
        if existing is not None and pending == 0 and text_ready:  # nothing to do: no model load
            with project.engine.begin() as connection:
                set_current(connection, existing.id)
                removed = collect_garbage(connection, existing.id, directory)
            path = text_features_path(project, planned.key, classes_key_) if classes_key_ else None
            return EmbedResult(existing.id, existing.name, planned.key, planned.weights.kind == "random", device,
                               settings.precision, orphans_removed=removed, text_features=None if path is None else str(path))

        # the Ray driver only needs the spec's shapes, projections and text features: CPU fp32
        encoder = (load_open_clip(planned.architecture, planned.weights, device, settings.precision) if engine == "local"
                   else load_open_clip(planned.architecture, planned.weights, "cpu", "fp32"))
        probe, psi = encoder.encode_texts(["a photo"])
        dim = int(probe.shape[1])
        phi_dim = None if encoder.image_proj is None else int(encoder.image_proj.matrix().shape[0])
        text_phi_dim = None if psi is None else int(psi.shape[1])
        spec = _spec_json(planned, encoder, dim, phi_dim, text_phi_dim, device, settings.precision)
        with project.engine.begin() as connection:
            row = ensure_spec(connection, planned.key, OPEN_CLIP_KIND, planned.name, spec, dim, phi_dim)
            set_current(connection, row.id)
            removed = collect_garbage(connection, row.id, directory)
        if not (directory / PROJECTIONS_FILE).is_file():
            tensors = {k: v.numpy() for k, v in encoder.projection_tensors().items()}
            save_tensors(directory / PROJECTIONS_FILE, tensors, metadata={"layout": "P (d, D), Q (d_t, D): g = phi @ P"})
        result = EmbedResult(row.id, row.name, planned.key, planned.weights.kind == "random", device, settings.precision,
                             pending=count_pending(project, row.id), orphans_removed=removed)
        text_path = ensure_text_features(project, row, encoder)
        result.text_features = None if text_path is None else str(text_path)

        queue = _work_queue(project, row.id, directory, result, shard_rows, flush_seconds, settings.batch_size,
                            claim_rows=shard_rows if engine == "ray" else None)
        started = time.perf_counter()
        try:
            with progress_bar(result.pending, "embed", show_progress, unit="img") as bar:
                if engine == "ray":
                    from alkit.embedding.ray_engine import run_ray_embed

                    run_ray_embed(queue, planned, settings, bar, address=ray_address, num_gpus_per_worker=num_gpus_per_worker)
                else:
                    decoder = BatchDecoder(encoder.preprocess, encoder.image_size, settings.max_pixels)
                    loader = batch_loader(decoder, queue.items, settings.batch_size, settings.workers)
                    for batch in loader:
                        arrays = encode_batch(encoder, batch["pixels"]) if batch["pixels"] is not None else {}
                        queue.add(batch["ids"].numpy(), arrays, batch["failed"])
                        bar.update(len(batch["ids"]) + len(batch["failed"]))
                queue.finish()
        finally:
            queue.close()
        result.seconds = time.perf_counter() - started
    _attach_paths(project, result.rejected)
    return result


def _attach_paths(project: Project, rejected: list[dict]) -> None:
    if not rejected:
        return
    with project.engine.connect() as connection:
        paths = dict(connection.execute(sa.select(images.c.id, images.c.path).where(images.c.id.in_([r["image_id"] for r in rejected]))).all())
    for item in rejected:
        item["path"] = paths.get(item["image_id"])


# --- imported embeddings -----------------------------------------------------------------------


@dataclass
class ImportResult:
    spec_id: int
    spec_name: str
    dim: int
    rows_in_file: int
    registered: int = 0  # paths new to the pool, added via the ingest workflow
    embedded: int = 0  # vectors stored now
    already_embedded: int = 0
    skipped: list[dict] = field(default_factory=list)  # {path, reason}: duplicates by content, unreadable
    text_features: str | None = None

    def as_json(self) -> dict:
        return {k: getattr(self, k) for k in ("spec_id", "spec_name", "dim", "rows_in_file", "registered", "embedded", "already_embedded", "skipped", "text_features")}


MIN_VECTOR_NORM = 1e-6  # rows shorter than this have no direction to normalise (zero or near-zero vectors)


def _read_npz(path: Path) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Read and validate the whole file before anything is stored (an import is all-or-nothing)."""
    hint = "save it with numpy.savez(FILE.npz, paths=..., embeddings=...)"
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; {hint}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as error:  # OSError, ValueError, EOFError, zipfile.BadZipFile...
        raise InputError(f"cannot read {path} as .npz ({_one_line(error)}); {hint}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(f"{path} holds a single array (a .npy file), not an .npz archive; {hint}")
    try:
        with loaded as data:
            contents = {key: data[key] for key in data.files}
    except Exception as error:  # a truncated member, or an object array needing pickle
        raise InputError(f"cannot read {path} as .npz ({_one_line(error)}); the file is truncated or not plain arrays; {hint}") from None
    missing = {"paths", "embeddings"} - set(contents)
    if missing:
        raise InputError(f"{path} lacks {', '.join(sorted(missing))}; it must hold `paths` (N,) and `embeddings` (N, D)")
    paths, vectors = contents["paths"], contents["embeddings"]
    if paths.ndim != 1 or paths.dtype.kind not in "US":
        raise InputError(f"{path}: `paths` must be a 1-D array of strings, got shape {paths.shape} dtype {paths.dtype}")
    if vectors.ndim != 2 or len(vectors) != len(paths) or vectors.shape[1] < 1:
        raise InputError(
            f"{path}: `embeddings` must be (N, D) numbers with N = len(paths) = {len(paths)}, got shape {vectors.shape}"
        )
    vectors = _finite_rows(path, "embeddings", vectors)
    text = contents.get("text_embeddings")
    if text is not None:
        if text.ndim != 2 or text.shape[1] != vectors.shape[1]:
            raise InputError(
                f"{path}: `text_embeddings` must be (K, D) with D = {vectors.shape[1]} like `embeddings`, got shape {text.shape}"
            )
        text = _finite_rows(path, "text_embeddings", text)
    return [str(p) for p in paths.tolist()], vectors, text


def _one_line(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:200]


def _finite_rows(path: Path, key: str, array: np.ndarray) -> np.ndarray:
    """float32 rows that are finite and not (near) zero, checked after the cast: float64 1e300
    is finite but becomes inf in float32. Unit rows in float16 storage are then always finite."""
    if array.dtype.kind not in "fiu":
        raise InputError(f"{path}: `{key}` must hold numbers, got dtype {array.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        cast = array.astype(np.float32)
    bad = ~np.isfinite(cast).all(axis=1)
    if bad.any():
        raise InputError(
            f"{path}: `{key}` has {int(bad.sum())} rows with NaN, inf or values beyond float32 (first: row "
            f"{int(np.flatnonzero(bad)[0])}); fix them, nothing was imported"
        )
    norms = np.linalg.norm(cast.astype(np.float64), axis=1)
    short = norms < MIN_VECTOR_NORM
    if short.any():
        raise InputError(
            f"{path}: `{key}` has {int(short.sum())} zero or near-zero rows (norm < {MIN_VECTOR_NORM:g}; first: row "
            f"{int(np.flatnonzero(short)[0])}); they have no direction, nothing was imported"
        )
    return (cast.astype(np.float64) / norms[:, None]).astype(np.float32)


def import_embeddings(project: Project, file: str | Path, name: str, shard_rows: int = SHARD_ROWS, show_progress: bool | None = None) -> ImportResult:
    """Store precomputed embeddings from an .npz (`paths`, `embeddings`, optional
    `text_embeddings` in class order) as the imported spec `name`, and make it current.

    Paths are resolved like `alkit add` (relative to the working directory); paths not yet
    registered are added through the ingest workflow. Unknown paths are refused up front.
    """
    import os

    from alkit.workflows.ingest import add_images

    if not name or not name.strip():
        raise InputError("--name is required with --from; it names the imported embedding space")
    file = Path(file)
    paths, vectors, text = _read_npz(file)
    resolved = [os.path.abspath(os.path.realpath(p)) for p in paths]
    if len(set(resolved)) != len(resolved):
        raise InputError(f"{file}: {len(resolved) - len(set(resolved))} duplicate paths; each image must appear once")
    names, _, classes_key_ = _class_list(project)
    if text is not None and len(text) != len(names):
        raise InputError(
            f"{file}: `text_embeddings` has {len(text)} rows but the project has {len(names)} classes; "
            "run alkit classes set first, in the same order"
        )
    with project.engine.connect() as connection:
        known = dict(connection.execute(sa.select(images.c.path, images.c.id)).all())
    new = [p for p in resolved if p not in known]
    absent = [p for p in new if not os.path.isfile(p)]
    if absent:
        raise InputError(
            f"{len(absent)} of {len(paths)} paths in {file} are neither registered nor existing files (first: {absent[0]}); "
            "fix the paths (relative paths are taken from the working directory)"
        )
    key = imported_key(name)
    directory = spec_directory(project, key)
    dim = int(vectors.shape[1])
    with spec_lock(directory):
        with project.engine.begin() as connection:
            existing = connection.execute(sa.select(embedding_specs).where(embedding_specs.c.key == key)).first()
            if existing is not None and existing.dim != dim:
                raise InputError(f"imported spec {name!r} holds {existing.dim}-dim vectors but {file} has {dim}; use another --name")
            row = ensure_spec(connection, key, IMPORTED_KIND, name, {"source": str(file.resolve()), "dim": dim, "storage_dtype": "float16"}, dim, None)
            collect_garbage(connection, row.id, directory)
        result = ImportResult(row.id, row.name, dim, len(paths))
        if new:
            added = add_images(project, new, show_progress=show_progress)
            result.registered = added.added
        with project.engine.connect() as connection:
            ids = dict(connection.execute(sa.select(images.c.path, images.c.id).where(images.c.status != ImageStatus.REJECTED.value)).all())
            done = set(connection.execute(sa.select(embeddings.c.image_id).where(embeddings.c.spec_id == row.id)).scalars())
        keep_rows, keep_ids = [], []
        for position, path in enumerate(resolved):
            image_id = ids.get(path)
            if image_id is None:
                result.skipped.append({"path": path, "reason": "not registered (duplicate content or unreadable image; see alkit add)"})
            elif image_id in done:
                result.already_embedded += 1
            else:
                keep_rows.append(position)
                keep_ids.append(image_id)
        writer = _ShardWriter(project, row.id, directory, EmbedResult(row.id, name, key, False))
        for start in range(0, len(keep_rows), shard_rows):
            part = keep_rows[start : start + shard_rows]
            writer.add(np.asarray(keep_ids[start : start + shard_rows], dtype=np.int64), {"embedding": _normalise(vectors[part])})
            writer.flush()
        result.embedded = writer.result.embedded
        if text is not None and classes_key_ is not None:
            path = text_features_path(project, key, classes_key_)
            save_tensors(path, {"text_emb": _normalise(text.astype(np.float32))}, metadata={"classes_key": classes_key_})
            result.text_features = str(path)
        with project.engine.begin() as connection:  # current only once every vector is stored
            set_current(connection, row.id)
    return result
