"""Persist a `FaissIndex` to a directory and load it back only if it still fits the pool.

Layout (all written to a temp file then `os.replace`d; the manifest last):

    directory/index.faiss    faiss.write_index output (no pickle)
    directory/ids.npy        int64 ids in insertion order (np.save, allow_pickle=False)
    directory/manifest.json  IndexManifest: spec key, dim, settings, row count, checksums

`load_index` raises a typed `StaleIndexError` for anything that does not match; `ensure_index`
turns those into an action ("loaded", "extended", "rebuilt", "built") so callers never use a
stale index silently.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import numpy as np

from alkit.retrieval.errors import (
    DimMismatchError,
    IdsAddedError,
    IdsRemovedError,
    IndexCorruptError,
    IndexMissingError,
    SpecMismatchError,
    StaleIndexError,
)
from alkit.retrieval.index import FaissIndex, add_to_index, apply_search_settings, build_index
from alkit.retrieval.manifest import (
    FORMAT_VERSION,
    IDS_FILE,
    INDEX_FILE,
    MANIFEST_FILE,
    IndexManifest,
    file_checksum,
    ids_checksum,
    utc_now,
)
from alkit.retrieval.settings import IndexKind, IndexSettings, choose_kind

log = logging.getLogger(__name__)

IVF_RETRAIN_GROWTH = 4.0
"""An IVF index extended past this many times the size it was trained on is rebuilt:
its cells (and nlist) were fitted to a much smaller pool and lists grow unbalanced."""

VectorsLoader = Callable[[np.ndarray], np.ndarray]
"""`loader(ids int64 (A,)) -> vectors float32 (A, D)`, rows in the order of `ids`."""

Action = Literal["loaded", "extended", "rebuilt", "built"]


class EnsuredIndex(NamedTuple):
    """What `ensure_index` did: `action` and, unless loaded as is, a one-line `reason`."""

    index: FaissIndex
    action: Action
    reason: str


# ---------------------------------------------------------------- save


def save_index(directory: Path | str, index: FaissIndex, spec_key: str,
               requested_settings: IndexSettings | None = None, created_at: str | None = None) -> IndexManifest:
    """Write index, ids and manifest atomically (temp file + os.replace, manifest last)."""
    import faiss

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    index_path = directory / INDEX_FILE

    def write_index(tmp: Path) -> None:
        faiss.write_index(index.index, str(tmp))

    def write_ids(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(index.ids, dtype="<i8"), allow_pickle=False)

    _replace_atomically(index_path, write_index)
    _replace_atomically(directory / IDS_FILE, write_ids)
    now = utc_now()
    manifest = IndexManifest(
        format_version=FORMAT_VERSION,
        spec_key=spec_key,
        dim=index.dim,
        kind=index.kind.value,
        settings=index.settings.to_dict(),
        requested_settings=(requested_settings or index.settings).to_dict(),
        row_count=index.ntotal,
        trained_on=index.trained_on,
        ids_checksum=ids_checksum(index.ids),
        index_file_checksum=file_checksum(index_path),
        offset=None if index.offset is None else [float(value) for value in index.offset],
        faiss_version=faiss.__version__,
        created_at=created_at or now,
        updated_at=now,
    )
    _replace_atomically(directory / MANIFEST_FILE, lambda tmp: tmp.write_text(manifest.to_json()))
    return manifest


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------- load


def read_manifest(directory: Path | str) -> IndexManifest:
    """The parsed manifest; `IndexMissingError` if absent, `IndexCorruptError` if unreadable."""
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        raise IndexMissingError(f"no index in {directory} (no {MANIFEST_FILE}); run `alkit index build`")
    try:
        return IndexManifest.from_json(path.read_text())
    except (ValueError, KeyError, TypeError) as error:
        raise IndexCorruptError(f"{path} is unreadable ({type(error).__name__}: {error}); rebuild the index") from None


def load_index(directory: Path | str, expected_spec_key: str, expected_ids: np.ndarray,
               expected_dim: int | None = None, search_settings: IndexSettings | None = None) -> FaissIndex:
    """The stored index if it exactly covers `expected_ids` of `expected_spec_key`, else a typed error.

    Raises `IndexMissingError`, `SpecMismatchError`, `DimMismatchError`, `IndexCorruptError`
    (checksum, format, contents), `IdsRemovedError` (rebuild) or `IdsAddedError` (carries the
    loaded index and the missing ids, so it can be extended). `search_settings` overrides
    nprobe / ef_search / use_gpu.
    """
    import faiss

    directory = Path(directory)
    manifest = read_manifest(directory)
    if manifest.format_version != FORMAT_VERSION:
        raise IndexCorruptError(
            f"index in {directory} has format version {manifest.format_version}, this alkit writes "
            f"{FORMAT_VERSION}; rebuild the index"
        )
    if manifest.spec_key != expected_spec_key:
        raise SpecMismatchError(
            f"index in {directory} was built for embedding spec {manifest.spec_key!r}, the pool uses "
            f"{expected_spec_key!r}; rebuild the index"
        )
    if expected_dim is not None and manifest.dim != expected_dim:
        raise DimMismatchError(
            f"index in {directory} holds {manifest.dim}-d vectors, the embeddings are {expected_dim}-d; rebuild the index"
        )
    index_path = directory / INDEX_FILE
    if not index_path.exists() or file_checksum(index_path) != manifest.index_file_checksum:
        raise IndexCorruptError(f"{index_path} is missing or its checksum differs from the manifest; rebuild the index")
    try:
        cpu_index = faiss.read_index(str(index_path))
        stored_ids = np.load(directory / IDS_FILE, allow_pickle=False).astype(np.int64, copy=False)
    except (RuntimeError, OSError, ValueError) as error:
        raise IndexCorruptError(f"cannot read the index in {directory} ({error}); rebuild the index") from None
    offset = None if manifest.offset is None else np.asarray(manifest.offset, dtype=np.float32)
    if (cpu_index.d != manifest.dim or cpu_index.ntotal != manifest.row_count or len(stored_ids) != manifest.row_count
            or ids_checksum(stored_ids) != manifest.ids_checksum or (offset is not None and offset.shape != (manifest.dim,))):
        raise IndexCorruptError(
            f"index in {directory} holds {cpu_index.ntotal} rows of dim {cpu_index.d} and {len(stored_ids)} ids, "
            f"the manifest says {manifest.row_count} of dim {manifest.dim}; rebuild the index"
        )
    loaded = FaissIndex(index=cpu_index, settings=IndexSettings.from_dict(manifest.settings),
                        ids=stored_ids, trained_on=manifest.trained_on, offset=offset)
    apply_search_settings(loaded, search_settings)
    _check_ids_match(directory, loaded, expected_ids, manifest)
    return loaded


def _check_ids_match(directory: Path, loaded: FaissIndex, expected_ids: np.ndarray, manifest: IndexManifest) -> None:
    expected = np.unique(np.asarray(expected_ids, dtype=np.int64))
    if len(expected) == manifest.row_count and ids_checksum(expected) == manifest.ids_checksum:
        return
    removed = np.sort(np.setdiff1d(loaded.ids, expected, assume_unique=True))
    if len(removed):
        raise IdsRemovedError(
            f"index in {directory} holds {len(removed)} items no longer in the pool (e.g. id {removed[0]}); "
            f"rebuild the index",
            removed_ids=removed,
        )
    missing = np.sort(np.setdiff1d(expected, loaded.ids, assume_unique=True))
    raise IdsAddedError(
        f"index in {directory} lacks {len(missing)} of {len(expected)} pool items; extend it with `alkit index build`",
        index=loaded,
        missing_ids=missing,
    )


# ---------------------------------------------------------------- ensure


def ensure_index(directory: Path | str, spec_key: str, ids: np.ndarray, vectors_loader: VectorsLoader,
                 settings: IndexSettings | None = None, expected_dim: int | None = None) -> EnsuredIndex:
    """An index covering exactly `ids`, loaded, extended with the missing ids, or (re)built and saved.

    Rebuilds on: spec or dim mismatch, corruption, removed ids, changed build settings, an
    `auto` kind that no longer fits the pool size, or an IVF index grown past
    `IVF_RETRAIN_GROWTH` times its training size.
    """
    requested = settings or IndexSettings()
    ids = np.asarray(ids, dtype=np.int64)
    directory = Path(directory)
    try:
        loaded = load_index(directory, spec_key, ids, expected_dim, requested)
        unfit = _unfit_reason(directory, loaded, len(ids), requested)
        if unfit is None:
            return EnsuredIndex(loaded, "loaded", "")
        return _build_and_save(directory, spec_key, ids, vectors_loader, requested, "rebuilt", unfit)
    except IndexMissingError as error:
        return _build_and_save(directory, spec_key, ids, vectors_loader, requested, "built", str(error))
    except IdsAddedError as error:
        unfit = _unfit_reason(directory, error.index, len(ids), requested)
        if unfit is not None:
            return _build_and_save(directory, spec_key, ids, vectors_loader, requested, "rebuilt", unfit)
        new_vectors = np.asarray(vectors_loader(error.missing_ids))
        if new_vectors.ndim != 2 or new_vectors.shape[1] != error.index.dim:
            reason = f"new embeddings have shape {new_vectors.shape}, the index is {error.index.dim}-d"
            return _build_and_save(directory, spec_key, ids, vectors_loader, requested, "rebuilt", reason)
        add_to_index(error.index, error.missing_ids, new_vectors)
        save_index(directory, error.index, spec_key, requested, created_at=read_manifest(directory).created_at)
        return EnsuredIndex(error.index, "extended", str(error))
    except StaleIndexError as error:
        return _build_and_save(directory, spec_key, ids, vectors_loader, requested, "rebuilt", str(error))


def _unfit_reason(directory: Path, loaded: FaissIndex, num_items: int, requested: IndexSettings) -> str | None:
    """Why a valid stored index should still be rebuilt for `requested` at `num_items`, or None."""
    stored_request = IndexSettings.from_dict(read_manifest(directory).requested_settings)
    if stored_request.build_fields() != requested.build_fields():
        return f"build settings changed from {stored_request.build_fields()} to {requested.build_fields()}"
    wanted_kind = choose_kind(num_items, requested)
    if wanted_kind is not loaded.kind:
        return f"{num_items} items call for a {wanted_kind.value} index, the stored one is {loaded.kind.value}"
    if loaded.kind is IndexKind.IVF and num_items > IVF_RETRAIN_GROWTH * loaded.trained_on:
        return (f"IVF cells were trained for {loaded.trained_on} items, the pool now has {num_items} "
                f"(> {IVF_RETRAIN_GROWTH:g}x); retraining")
    return None


def _build_and_save(directory: Path, spec_key: str, ids: np.ndarray, vectors_loader: VectorsLoader,
                    requested: IndexSettings, action: Action, reason: str) -> EnsuredIndex:
    log.info("%s index in %s: %s", action, directory, reason)
    built = build_index(ids, vectors_loader(ids), requested)
    save_index(directory, built, spec_key, requested)
    return EnsuredIndex(built, action, reason)
