"""`alkit embed --from FILE.npz --name NAME`: precomputed embeddings as an imported spec.

The file is read and checked whole before anything is stored (an import is all-or-nothing
as far as bad input goes); vectors are then written like `alkit embed` writes them (shards
first, rows after), so a killed import resumes where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alkit.arrays import chunk_slices, iter_chunks, l2_normalise
from alkit.embedding.spec import IMPORTED_KIND, imported_key
from alkit.errors import InputError
from alkit.jsonable import JsonResult
from alkit.project import Project
from alkit.storage.images import ids_by_path, usable_ids_by_path
from alkit.storage.shards import SHARD_ROWS, ShardWriter, WriteTally, collect_garbage, spec_lock
from alkit.storage.specs import ensure_spec, set_current, spec_by_key, spec_directory
from alkit.storage.vectors import embedded_image_ids
from alkit.workflows.text_features import current_class_list, save_text_features, text_features_file

MIN_VECTOR_NORM = 1e-6  # rows shorter than this have no direction to normalise (zero or near-zero vectors)
IN_LIST_PATHS = 10_000  # paths per `IN (...)` lookup (below every backend's bound-parameter limit)
ERROR_TEXT_CHARS = 200  # longest reader error quoted in a message
NPZ_HINT = "save it with numpy.savez(FILE.npz, paths=..., embeddings=...)"


@dataclass
class ImportResult(JsonResult):
    """What one `alkit embed --from` import stored, registered and skipped (with reasons)."""

    spec_id: int
    spec_name: str
    dim: int
    rows_in_file: int
    registered: int = 0  # paths new to the pool, added via the ingest workflow
    embedded: int = 0  # vectors stored now
    already_embedded: int = 0
    skipped: list[dict] = field(default_factory=list)  # {path, reason}: duplicates by content, unreadable
    text_features: str | None = None


def _one_line(error: BaseException) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}"[:ERROR_TEXT_CHARS]


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of the .npz at `path`, without pickle; InputError saying what is wrong."""
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; {NPZ_HINT}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as error:  # OSError, ValueError, EOFError, zipfile.BadZipFile...
        raise InputError(f"cannot read {path} as .npz ({_one_line(error)}); {NPZ_HINT}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(f"{path} holds a single array (a .npy file), not an .npz archive; {NPZ_HINT}")
    try:
        with loaded as data:
            return {key: data[key] for key in data.files}
    except Exception as error:  # a truncated member, or an object array needing pickle
        raise InputError(f"cannot read {path} as .npz ({_one_line(error)}); the file is truncated or not plain arrays; {NPZ_HINT}") from None


def read_npz(path: Path) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """(paths (N,), unit-norm embeddings (N, D) float32, text embeddings (K, D) or None), checked whole."""
    contents = _load_arrays(path)
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
    vectors = _unit_rows(path, "embeddings", vectors)
    text = contents.get("text_embeddings")
    if text is not None:
        if text.ndim != 2 or text.shape[1] != vectors.shape[1]:
            raise InputError(
                f"{path}: `text_embeddings` must be (K, D) with D = {vectors.shape[1]} like `embeddings`, got shape {text.shape}"
            )
        text = _unit_rows(path, "text_embeddings", text)
    return [str(p) for p in paths.tolist()], vectors, text


def _unit_rows(path: Path, key: str, array: np.ndarray) -> np.ndarray:
    """Unit-norm float32 rows, refusing rows that are not finite or (near) zero, checked after
    the cast: float64 1e300 is finite but becomes inf in float32. Unit rows in float16
    storage are then always finite."""
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
    wide = cast.astype(np.float64)
    short = np.linalg.norm(wide, axis=1) < MIN_VECTOR_NORM
    if short.any():
        raise InputError(
            f"{path}: `{key}` has {int(short.sum())} zero or near-zero rows (norm < {MIN_VECTOR_NORM:g}; first: row "
            f"{int(np.flatnonzero(short)[0])}); they have no direction, nothing was imported"
        )
    return l2_normalise(wide).astype(np.float32)


def import_embeddings(project: Project, file: str | Path, name: str, shard_rows: int = SHARD_ROWS, show_progress: bool | None = None) -> ImportResult:
    """Store precomputed embeddings from an .npz (`paths`, `embeddings`, optional
    `text_embeddings` in class order) as the imported spec `name`, and make it current.

    Paths are resolved like `alkit add` (relative to the working directory); paths not yet
    registered are added through the ingest workflow. Unknown paths are refused up front.
    """
    from alkit.workflows.ingest import add_images

    if not name or not name.strip():
        raise InputError("--name is required with --from; it names the imported embedding space")
    file = Path(file)
    paths, vectors, text = read_npz(file)
    resolved = [os.path.abspath(os.path.realpath(p)) for p in paths]
    if len(set(resolved)) != len(resolved):
        raise InputError(f"{file}: {len(resolved) - len(set(resolved))} duplicate paths; each image must appear once")
    classes = current_class_list(project)
    if text is not None and len(text) != len(classes.names):
        raise InputError(
            f"{file}: `text_embeddings` has {len(text)} rows but the project has {len(classes.names)} classes; "
            "run alkit classes set first, in the same order"
        )
    with project.engine.connect() as connection:
        known = {path: image_id for part in iter_chunks(resolved, IN_LIST_PATHS) for path, image_id in ids_by_path(connection, part).items()}
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
            existing = spec_by_key(connection, key)
            if existing is not None and existing.dim != dim:
                raise InputError(f"imported spec {name!r} holds {existing.dim}-dim vectors but {file} has {dim}; use another --name")
            row = ensure_spec(connection, key, IMPORTED_KIND, name, {"source": str(file.resolve()), "dim": dim, "storage_dtype": "float16"}, dim, None)
            collect_garbage(connection, row.id, directory)
        result = ImportResult(row.id, row.name, dim, len(paths))
        if new:
            result.registered = add_images(project, new, show_progress=show_progress).added
        _store_vectors(project, row.id, directory, resolved, vectors, shard_rows, result)
        if text is not None and classes.key is not None:
            path = text_features_file(project, key, classes.key)
            save_text_features(path, text, None, classes.key)
            result.text_features = str(path)
        with project.engine.begin() as connection:  # current only once every vector is stored
            set_current(connection, row.id)
    return result


def _store_vectors(project: Project, spec_id: int, directory: Path, resolved: list[str], vectors: np.ndarray,
                   shard_rows: int, result: ImportResult) -> None:
    """Write the rows of registered images without vectors of the spec, `shard_rows` per shard;
    count the others in `result` (already embedded, or skipped with the reason)."""
    with project.engine.connect() as connection:
        ids = usable_ids_by_path(connection)
    done = set(embedded_image_ids(project, spec_id).tolist())
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
    tally = WriteTally()
    writer = ShardWriter(project.engine, spec_id, directory, tally)
    for part in chunk_slices(len(keep_rows), shard_rows):
        writer.add(np.asarray(keep_ids[part], dtype=np.int64), {"embedding": l2_normalise(vectors[keep_rows[part]])})
        writer.flush()
    result.embedded = tally.embedded
